"""Behaviour that changed across kernel (and QEMU) history: every such change is one named flag.

This is the only module that knows which release did what. Transitions read the resolved
`Behaviour` of their VM (`vm.flags.<name>`) and never compare version numbers.

A flag is True when the VM behaves as the code *with* the named commit does. Presets bundle the
flags of one release; a VM is created from a preset plus optional per-flag overrides.
Release numbers are the first mainline release whose tag contains the commit; a trailing "?"
marks a release inferred from mail dates rather than read off a tag (evidence per flag in
docs/research-notes.md).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import invalid


@dataclass(frozen=True, slots=True)
class FlagInfo:
    name: str
    component: str  # "kvm", "qemu", or a host vendor module that is not upstream ("kvm_pvm")
    commit: str | None
    title: str
    release: str | None  # first release with the behaviour named by the flag
    description: str


@dataclass(frozen=True, slots=True)
class Behaviour:
    """Resolved behaviour flags of one VM (True = the behaviour introduced by the commit)."""

    # --- KVM ---
    eoi_exit_bitmap: bool = True
    scan_keeps_pending_edge: bool = True
    scan_keeps_pending_level: bool = True
    split_scan_keeps_pending_level: bool = True
    split_scan_level_routes_only: bool = True
    split_scan_syncs_pir: bool = True
    rescan_after_stale_eoi: bool = True
    rte_edge_clears_remote_irr: bool = True
    rte_preserves_readonly_bits: bool = True
    service_refuses_remote_irr: bool = True
    unmask_resamples: bool = True
    hide_directed_eoi_with_kernel_ioapic: bool = True
    notifiers_with_directed_eoi: bool = True
    targeted_scan_requests: bool = True
    scan_old_dest_with_new_mode: bool = True
    split_suppress_eoi_broadcast: bool = False
    suppress_eoi_broadcast_disabled: bool = False
    avic_kernel_irqchip: bool = True
    ioapic_lazy_eoi: bool = True
    lazy_eoi_edge_only: bool = True
    lazy_eoi_rtc_only: bool = True
    # --- QEMU (the split-mode VMM) ---
    qemu_routes_before_service: bool = True
    qemu_msi_ext_dest_id: bool = True
    # --- a host's KVM that is not upstream's ---
    lapic_auto_eoi: bool = False


FLAG_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Behaviour))

FLAGS: dict[str, FlagInfo] = {
    f.name: f
    for f in [
        FlagInfo(
            "eoi_exit_bitmap",
            "kvm",
            None,
            "EOIs are filtered through ioapic_handled_vectors (the EOI-exit bitmap)",
            None,
            "KVM forwards a LAPIC EOI to an IOAPIC only when the vector's bit is set in the "
            "vCPU's ioapic_handled_vectors, computed by scanning routes (vcpu_scan_ioapic). "
            "False models the 82093AA/SDM: the LAPIC broadcasts the EOI of every vector whose "
            "TMR bit is set, and no handled-vector bitmap exists.",
        ),
        FlagInfo(
            "scan_keeps_pending_edge",
            "kvm",
            "db2bdcbbbd32",
            "KVM: x86: fix edge EOI and IOAPIC reconfig race",
            "v4.4?",
            "In-kernel scan also sets the bit of an EOI-tracked edge pin (RTC, ack notifier) "
            "whose vector is pending in this vCPU's IRR or ISR, though it no longer targets it.",
        ),
        FlagInfo(
            "scan_keeps_pending_level",
            "kvm",
            "0fc5a36dd6b3",
            "KVM: x86: ioapic: Fix level-triggered EOI and IOAPIC reconfigure race",
            "v4.15?",
            "In-kernel scan (kvm_ioapic_scan_entry) sets the bit of any scanned pin whose vector "
            "is pending in IRR/ISR, level pins included (race 1).",
        ),
        FlagInfo(
            "split_scan_keeps_pending_level",
            "kvm",
            "fceb3a36c29a",
            "KVM: x86: ioapic: Fix level-triggered EOI and userspace I/OAPIC reconfigure race",
            "v6.2",
            "Split-mode scan (kvm_scan_ioapic_routes) sets the bit of a level MSI route whose "
            "vector is pending in IRR/ISR although the vCPU no longer matches (race 2, the seed).",
        ),
        FlagInfo(
            "split_scan_level_routes_only",
            "kvm",
            "7455a8327674",
            "KVM: x86: don't notify userspace IOAPIC on edge-triggered interrupt EOI",
            "v5.6",
            "Split-mode scan (kvm_scan_ioapic_routes) skips MSI routes whose trigger mode is "
            "edge. From 3159d36ad799 (v4.7?) until this fix the test read irq.level, which "
            "kvm_set_msi_irq always sets, so the vectors of matching edge routes were handled "
            "too and their EOIs exited to userspace (KVM_EXIT_IOAPIC_EOI, ignored by QEMU's "
            "IOAPIC for edge pins). Backported to stable (4.14.172 and others).",
        ),
        FlagInfo(
            "split_scan_syncs_pir",
            "kvm",
            "f3ced000a2df",
            "KVM: x86: Always sync PIR to IRR prior to scanning I/O APIC routes",
            "v6.10",
            "vcpu_scan_ioapic syncs the posted-interrupt bitmap into IRR in split mode too, so a "
            "vector still in the PIR counts as pending (race 2b).",
        ),
        FlagInfo(
            "rescan_after_stale_eoi",
            "kvm",
            "87e4951e250b",
            "KVM: x86: Rescan I/O APIC routes after EOI interception for old routing",
            "v6.16",
            "A bit kept only because the vector was pending records "
            "highest_stale_pending_ioapic_eoi; an intercepted EOI of that vector requests "
            "SCAN_IOAPIC on the vCPU so the stale bit goes away.",
        ),
        FlagInfo(
            "rte_edge_clears_remote_irr",
            "kvm",
            "a8bfec293052",
            "KVM: x86: ioapic: Clear Remote IRR when entry is switched to edge-triggered",
            "v4.15?",
            "Any RTE write that leaves the trigger mode edge clears Remote IRR (the Linux/Xen "
            "'flip to edge' EOI emulation).",
        ),
        FlagInfo(
            "rte_preserves_readonly_bits",
            "kvm",
            "b200dded0a69",
            "KVM: x86: ioapic: Preserve read-only values in the redirection table",
            "v4.15?",
            "Guest RTE writes keep Remote IRR and delivery status. Before it, delivery status "
            "was stored as written and every low-dword write cleared Remote IRR (so a guest "
            "could drop an in-service Remote IRR, and the Linux flip-to-edge trick worked "
            "without a8bfec293052).",
        ),
        FlagInfo(
            "service_refuses_remote_irr",
            "kvm",
            "da3fe7bdfada",
            "KVM: x86: ioapic: Don't fire level irq when Remote IRR set (with 7d2253684dd1)",
            "v4.15?",
            "ioapic_service refuses a level pin whose Remote IRR is set, so an RTE write no "
            "longer re-delivers an in-service level interrupt. Before it the check sat in "
            "ioapic_set_irq only, which reported such an assert as coalesced (0).",
        ),
        FlagInfo(
            "unmask_resamples",
            "kvm",
            "fef8f2b90edb",
            "KVM: x86/ioapic: Resample the pending state of an IRQ when unmasking",
            "v6.3",
            "An RTE write on a level pin with irr set, unmasked and Remote IRR clear notifies the "
            "irqfd resampler (and clears irr) instead of delivering, when one is registered.",
        ),
        FlagInfo(
            "hide_directed_eoi_with_kernel_ioapic",
            "kvm",
            "0bcc3fb95b97",
            "KVM: lapic: stop advertising DIRECTED_EOI when in-kernel IOAPIC is in use",
            "v4.8?",
            "LVR bit 24 is advertised only when the guest has x2APIC and the IOAPIC is not in "
            "the kernel, so a guest with the in-kernel IOAPIC cannot set SPIV bit 12.",
        ),
        FlagInfo(
            "notifiers_with_directed_eoi",
            "kvm",
            "c806a6ad35bf",
            "KVM: x86: call irq notifiers with directed EOI",
            "v4.1?",
            "The SPIV bit 12 check moved into the IOAPIC EOI loop after the ack notifiers, so "
            "resamplers run under directed EOI; before it such an EOI never reached the IOAPIC.",
        ),
        FlagInfo(
            "targeted_scan_requests",
            "kvm",
            "7ee30bc132c6",
            "KVM: x86: deliver KVM IOAPIC scan request to target vCPUs",
            "v5.5",
            "A Fixed-mode RTE write requests SCAN_IOAPIC only on the old and new destination "
            "vCPUs; before it every RTE write requested a scan on all vCPUs.",
        ),
        FlagInfo(
            "scan_old_dest_with_new_mode",
            "kvm",
            "c96001c5702e",
            "KVM: X86: Use APIC_DEST_* macros properly in kvm_lapic_irq.dest_mode (latent bug, "
            "spec §4 item 13; commit id unverified)",
            "v5.6?",
            "The old-destination part of the scan mask in ioapic_write_indirect is matched with "
            "the new dest_mode; False matches it with the old dest_mode as 7ee30bc132c6 did. "
            "Still present in current code.",
        ),
        FlagInfo(
            "split_suppress_eoi_broadcast",
            "kvm",
            "6517dfbcc918",
            "KVM: x86: Suppress EOI broadcasts with split IRQCHIP if Directed EOI is enabled "
            "(kvm-x86 id; release unverified)",
            "v7.0?",
            "The VM enabled KVM_X2APIC_ENABLE_SUPPRESS_EOI_BROADCAST (split only): LVR "
            "advertises directed EOI and a LAPIC EOI with SPIV bit 12 set causes no "
            "KVM_EXIT_IOAPIC_EOI (the guest must write the IOAPIC's 0x40 EOI register). "
            "Opt-in per VM, so False in every preset.",
        ),
        FlagInfo(
            "suppress_eoi_broadcast_disabled",
            "kvm",
            "6517dfbcc918",
            "KVM: x86: Suppress EOI broadcasts with split IRQCHIP if Directed EOI is enabled: "
            "the DISABLED mode (kvm-x86 id; release unverified)",
            "v7.0?",
            "The VM enabled KVM_X2APIC_DISABLE_SUPPRESS_EOI_BROADCAST (either irqchip mode): "
            "LVR never advertises directed EOI, so the guest cannot set SPIV bit 12, and "
            "kvm_lapic_suppress_eoi_broadcast is false, so the in-kernel IOAPIC clears Remote "
            "IRR on an EOI even when SPIV bit 12 is set (restored by KVM_SET_LAPIC). Mutually "
            "exclusive with split_suppress_eoi_broadcast (-EINVAL). Opt-in per VM, so False "
            "in every preset; both False is the QUIRKED default.",
        ),
        FlagInfo(
            "avic_kernel_irqchip",
            "kvm",
            None,
            "svm: Allow AVIC with in-kernel irqchip mode (last patch of the AVIC series with "
            "f458d039db7e; commit id not seen)",
            "v5.6",
            "AMD AVIC (apicv: avic) may be active with the in-kernel IOAPIC. Before it "
            "svm_get_enable_apicv returned avic && irqchip_split(kvm): with an in-kernel "
            "irqchip the VM ran with a software LAPIC (as apicv: false). No effect on Intel "
            "APICv or on split irqchips.",
        ),
        FlagInfo(
            "ioapic_lazy_eoi",
            "kvm",
            "f458d039db7e",
            "kvm: ioapic: Lazy update IOAPIC EOI",
            "v5.6",
            "In-kernel IOAPIC with APIC virtualization activated (kvm_apicv_activated: Intel "
            "APICv or AVIC): an assert (ioapic_set_irq, level 1) first runs "
            "ioapic_lazy_update_eoi: the first vCPU that matches the RTE's destination and has "
            "no pending EOI of its vector (kvm_apic_pending_eoi: IRR or ISR, not the PIR) gets "
            "the EOI the IOAPIC may have missed because AVIC retires edge EOIs without a "
            "trap. What that EOI does is narrowed by lazy_eoi_edge_only and lazy_eoi_rtc_only.",
        ),
        FlagInfo(
            "lazy_eoi_edge_only",
            "kvm",
            "8be8f932e3db",
            "kvm: ioapic: Restrict lazy EOI update to edge-triggered interrupts",
            "v5.7",
            "The lazy EOI runs for edge pins only (AVIC traps level EOIs: their TMR bit is "
            "set). Before it, a level assert could lazily clear Remote IRR and re-service the "
            "pin, and an irqfd resampler on a level pin recursed until the host stack "
            "overflowed. Backported to 5.6.13.",
        ),
        FlagInfo(
            "lazy_eoi_rtc_only",
            "kvm",
            "77377064c3a9",
            "KVM: ioapic: break infinite recursion on lazy EOI",
            "v5.10",
            "The lazy EOI only settles RTC EOI tracking (rtc_irq_eoi); before it it also ran "
            "kvm_ioapic_update_eoi_one for the pin, i.e. the pin's ack notifiers (an irqfd "
            "resampler on an edge pin recursed: CVE-2020-27152) and, without "
            "lazy_eoi_edge_only, the level Remote IRR clear. Backported to 5.9.2 and 5.8.17.",
        ),
        FlagInfo(
            "qemu_routes_before_service",
            "qemu",
            "54ad31fb0a",
            "ioapic: Update KVM routes before redelivering IRQ, on RTE update (QEMU)",
            "qemu-8.0",
            "On an RTE write QEMU's userspace IOAPIC rewrites and commits the MSI routes of "
            "unmasked pins before running ioapic_service, and only on RTE writes. False "
            "(QEMU <= 7.2) re-services first and rewrites + commits the routes at the end of "
            "every IOAPIC MMIO write, so a re-delivery can use the stale route and every "
            "register write (even IOREGSEL) makes KVM rescan all vCPUs.",
        ),
        FlagInfo(
            "qemu_msi_ext_dest_id",
            "qemu",
            None,
            "target/i386: Support up to 32768 CPUs without IRQ remapping (QEMU, D. Woodhouse; "
            "pulled 2020-12-10; commit id not seen)",
            "qemu-6.0?",
            "With a split irqchip and the x2APIC API (32-bit ids) QEMU advertises "
            "KVM_FEATURE_MSI_EXT_DEST_ID and kvm_arch_fixup_msi_route swizzles (kvm_swizzle_"
            "msi_ext_dest_id) a compatibility-format MSI whose address bits 11:5 are set and "
            "address_hi is 0: those bits move to address_hi 14:8, which KVM reads as "
            "destination bits 14:8. So the IOAPIC's extended destination (RTE bits 55:49) "
            "reaches APIC ids up to 32767. False, or without x2apic_format, the bits stay in "
            "address_lo, which KVM ignores: the destination is the 8-bit one.",
        ),
        FlagInfo(
            "lapic_auto_eoi",
            "kvm_pvm",
            None,
            "Taking a LAPIC interrupt EOIs it at once (measured on kvm_pvm, not upstream KVM)",
            None,
            "The vCPU's acknowledgement (T7) moves the vector out of IRR but never into ISR, "
            "and the EOI path runs then, as if the guest had written EOI at that moment: "
            "kvm_ioapic_send_eoi with its handled-vector filter, so in-kernel Remote IRR clears "
            "and a still-high level line is re-delivered into IRR before the handler runs, and "
            "in split mode KVM_EXIT_IOAPIC_EOI comes during the acknowledgement. PPR stays at "
            "TPR, so a lower-class vector is taken without waiting for an EOI; the guest's own "
            "EOI finds ISR empty and does nothing. Measured on Linux 6.18 with kvm_pvm (PVM "
            "inside Firecracker) through irqlab's guest (docs/kvm-backend-notes.md); its cause "
            "inside kvm_pvm is not known. False in every upstream preset; the kvm-pvm preset "
            "sets it.",
        ),
    ]
}


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    description: str
    flags: Behaviour


def _preset(name: str, description: str, **changes: bool) -> Preset:
    return Preset(name, description, replace(Behaviour(), **changes))


# AMD AVIC with the in-kernel irqchip and the IOAPIC's lazy EOI came in v5.6.
_PRE_56_AVIC = dict(
    avic_kernel_irqchip=False,
    ioapic_lazy_eoi=False,
    lazy_eoi_edge_only=False,
    lazy_eoi_rtc_only=False,
)
_PRE_415 = dict(
    **_PRE_56_AVIC,
    split_scan_level_routes_only=False,
    scan_keeps_pending_level=False,
    rte_edge_clears_remote_irr=False,
    rte_preserves_readonly_bits=False,
    service_refuses_remote_irr=False,
    targeted_scan_requests=False,
    scan_old_dest_with_new_mode=False,
)
_PRE_55 = dict(
    **_PRE_56_AVIC,
    split_scan_level_routes_only=False,
    targeted_scan_requests=False,
    scan_old_dest_with_new_mode=False,
)
_PRE_56 = dict(scan_old_dest_with_new_mode=False)
_PRE_62 = dict(split_scan_keeps_pending_level=False, unmask_resamples=False)
_PRE_610 = dict(split_scan_syncs_pir=False)
_PRE_616 = dict(rescan_after_stale_eoi=False)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        _preset(
            "linux-4.14",
            "Last release before 0fc5a36dd6b3: race 1 (in-kernel) and race 2 (split) present.",
            **_PRE_415,
            **_PRE_62,
            **_PRE_610,
            **_PRE_616,
        ),
        _preset(
            "linux-4.15",
            "First release with 0fc5a36dd6b3 and the rest of the Dec 2017 IOAPIC series.",
            **_PRE_55,
            **_PRE_62,
            **_PRE_610,
            **_PRE_616,
        ),
        _preset(
            "linux-6.1",
            "Last release before fceb3a36c29a: split-mode race 2 present.",
            **_PRE_62,
            **_PRE_610,
            **_PRE_616,
        ),
        _preset(
            "linux-6.2",
            "First release with fceb3a36c29a (the seed's fix).",
            **{**_PRE_610, **_PRE_616, "unmask_resamples": False},
        ),
        _preset(
            "linux-6.9",
            "Last release before f3ced000a2df: posted-interrupt race 2b present.",
            **_PRE_610,
            **_PRE_616,
        ),
        _preset(
            "linux-6.10",
            "First release with f3ced000a2df (PIR synced before split-mode scans).",
            **_PRE_616,
        ),
        _preset(
            "linux-6.16",
            "First release with 87e4951e250b (rescan after a stale pending EOI).",
        ),
        _preset("linux-latest", "The newest upstream behaviour."),
        _preset(
            "kvm-pvm",
            "This project's CI host: Linux 6.18 with the kvm_pvm vendor module (PVM inside "
            "Firecracker), i.e. linux-latest plus lapic_auto_eoi. Not an upstream release.",
            lapic_auto_eoi=True,
        ),
        _preset(
            "hardware",
            "82093AA IOAPIC and SDM LAPIC: no EOI-exit bitmap; the LAPIC broadcasts an EOI "
            "for every vector whose TMR bit is set.",
            eoi_exit_bitmap=False,
        ),
    ]
}

DEFAULT_PRESET = "linux-latest"


def resolve(preset: str, overrides: dict[str, Any] | None = None) -> Behaviour:
    """The flags of `preset` with `overrides` applied; unknown names are rejected."""
    if preset not in PRESETS:
        raise invalid(f"unknown profile {preset!r}; known: {', '.join(PRESETS)}", "profile")
    flags = PRESETS[preset].flags
    if overrides:
        for name, value in overrides.items():
            if name not in FLAGS:
                raise invalid(f"unknown behaviour flag {name!r}", f"overrides.{name}")
            if not isinstance(value, bool):
                raise invalid(f"flag {name!r} takes true or false", f"overrides.{name}")
        flags = replace(flags, **overrides)
    return flags


def as_dict(flags: Behaviour) -> dict[str, bool]:
    return {name: getattr(flags, name) for name in FLAG_NAMES}
