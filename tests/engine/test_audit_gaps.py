"""Fidelity gaps found by a source audit (issue 13 item 4): each KVM history corner as a
before/after pair, the kernel-bug ones asserting both the buggy and the fixed outcome."""

from __future__ import annotations

from typing import Any

import pytest

from app.engine import rte as R
from app.engine.errors import EngineError
from app.engine.flags import PRESETS
from app.engine.state import APIC_LVR_DIRECTED_EOI, SPIV_DIRECTED_EOI
from app.engine.vm import Vm
from tests.engine.conftest import P, V, accepts_during, exit_vectors, has, make_vm, reqs, rirr

BEFORE, AFTER = "before", "after"
E, VE = 4, 0x50  # an edge pin and its vector


# ---- 7455a8327674: split-mode scan of edge MSI routes (3159d36ad799 .. v5.6) ----


@pytest.mark.parametrize(
    ("profile", "overrides", "when"),
    [
        ("linux-4.14", {}, BEFORE),
        ("linux-4.15", {}, BEFORE),
        ("linux-latest", {"split_scan_level_routes_only": False}, BEFORE),
        ("linux-6.1", {}, AFTER),
        ("linux-latest", {}, AFTER),
    ],
)
def test_split_scan_of_edge_routes(profile: str, overrides: dict[str, bool], when: str) -> None:
    vm = make_vm(profile, "split", vcpus=2, overrides=overrides)
    vm.write_rte(0, E, R.encode(vector=VE, trigger="edge", dest=0))
    vm.enter(0)
    vm.enter(1)
    # kvm_scan_ioapic_routes: the edge route's vector is handled only while the test read
    # irq.level (always 1 for an MSI); the non-matching vCPU1 never gets it.
    assert has(vm.vcpus[0].handled, VE) == (1 if when == BEFORE else 0)
    assert has(vm.vcpus[1].handled, VE) == 0
    vm.set_line(E, 1)
    vm.set_line(E, 0)
    assert vm.ack(0)["vector"] == VE
    result = vm.eoi(0, run_exits=True)
    if when == BEFORE:
        # The EOI of an edge vector exits to userspace; QEMU's IOAPIC ignores it (edge pin).
        assert result["forwarded"] is True
        assert exit_vectors(result) == [VE]
    else:
        assert result["forwarded"] is False
        assert exit_vectors(result) == []
    assert R.remote_irr(vm.ioapic.redir[E]) == 0


def test_split_scan_of_edge_routes_does_not_touch_in_kernel_mode() -> None:
    """The bug sat in kvm_scan_ioapic_routes only; kvm_ioapic_scan_entry (in-kernel) always
    skipped edge pins that are not EOI-tracked."""
    vm = make_vm("linux-4.14", "kernel", vcpus=1)
    vm.write_rte(0, E, R.encode(vector=VE, trigger="edge", dest=0))
    vm.enter(0)
    assert has(vm.vcpus[0].handled, VE) == 0


def test_split_scan_level_routes_only_presets() -> None:
    fixed = {n for n, p in PRESETS.items() if p.flags.split_scan_level_routes_only}
    assert {n for n in PRESETS if n not in fixed} == {"linux-4.14", "linux-4.15"}


# ---- 6517dfbcc918: KVM_X2APIC_DISABLE_SUPPRESS_EOI_BROADCAST (the DISABLED mode) ----


def _restored_with_directed_eoi(vm: Vm, n: int) -> Vm:
    """KVM_SET_LAPIC with SPIV bit 12 set: a snapshot restored with the bit in the vCPU's SVR
    (the only way past an LVR that does not advertise directed EOI)."""
    snap = vm.snapshot()
    snap["vcpus"][n]["svr"] |= SPIV_DIRECTED_EOI
    return Vm.restore(snap)


@pytest.mark.parametrize(("disabled", "when"), [(False, BEFORE), (True, AFTER)])
def test_disabled_mode_in_kernel_ignores_restored_directed_eoi(disabled: bool, when: str) -> None:
    vm = make_vm(
        "linux-latest", "kernel", vcpus=1, overrides={"suppress_eoi_broadcast_disabled": disabled}
    )
    vm.write_rte(0, P, R.encode(vector=V, trigger="level", dest=0))
    vm = _restored_with_directed_eoi(vm, 0)
    assert vm.vcpus[0].svr & SPIV_DIRECTED_EOI
    vm.enter(0)
    vm.set_line(P, 1)
    assert vm.ack(0)["vector"] == V
    vm.set_line(P, 0)
    result = vm.eoi(0)
    assert result["forwarded"] is True
    # kvm_ioapic_update_eoi_one: QUIRKED honours SPIV bit 12 (Remote IRR stays set, the guest
    # would have to EOI an IOAPIC the in-kernel one cannot be); DISABLED ignores it.
    assert rirr(vm, P) == (0 if when == AFTER else 1)
    assert result["ioapic"][0]["remote_irr_cleared"] is (when == AFTER)


@pytest.mark.parametrize(("disabled", "when"), [(False, BEFORE), (True, AFTER)])
def test_disabled_mode_split_never_advertises_directed_eoi(disabled: bool, when: str) -> None:
    vm = make_vm(
        "linux-latest", "split", vcpus=1, overrides={"suppress_eoi_broadcast_disabled": disabled}
    )
    advertised = bool(vm.vcpu_view(0)["lvr"] & APIC_LVR_DIRECTED_EOI)
    assert advertised is (when == BEFORE)  # QUIRKED: advertised with the IOAPIC in userspace
    svr = vm.lapic_write(0, "svr", 0x1FF | SPIV_DIRECTED_EOI)["value"]
    assert bool(svr & SPIV_DIRECTED_EOI) is (when == BEFORE)  # masked by kvm_lapic_reg_write
    vm.write_rte(0, P, R.encode(vector=V, trigger="level", dest=0))
    vm.enter(0)
    vm.set_line(P, 1)
    assert vm.ack(0)["vector"] == V
    vm.set_line(P, 0)
    # Either way the EOI exits to userspace (QUIRKED ignores the bit in split mode too).
    assert exit_vectors(vm.eoi(0, run_exits=True)) == [V]
    assert rirr(vm, P) == 0


def test_disabled_and_enabled_together_are_rejected() -> None:
    with pytest.raises(EngineError):
        make_vm(
            "linux-latest",
            "split",
            overrides={
                "split_suppress_eoi_broadcast": True,
                "suppress_eoi_broadcast_disabled": True,
            },
        )


def test_disabled_mode_is_opt_in() -> None:
    assert not any(p.flags.suppress_eoi_broadcast_disabled for p in PRESETS.values())


# ---- kvm_bitmap_or_dest_vcpus: scan requests go through the optimized map ----


@pytest.mark.parametrize(
    ("svr1", "ldr1", "requested"),
    [
        (0x1FF, 0x02 << 24, True),  # software-enabled, LDR set: in the logical map
        (0x0FF, 0x02 << 24, False),  # software-disabled: the logical map skips it
        (0x1FF, 0, False),  # LDR 0: the logical map skips it
    ],
)
def test_rte_write_scan_request_follows_the_logical_map(
    svr1: int, ldr1: int, requested: bool
) -> None:
    vm = make_vm("linux-latest", "kernel", vcpus=3)
    vm.lapic_write(0, "ldr", 0x01 << 24)
    vm.lapic_write(1, "ldr", ldr1)
    vm.lapic_write(1, "svr", svr1)
    vm.lapic_write(2, "ldr", 0x04 << 24)
    for n in range(3):
        vm.enter(n)
    # Logical flat destination 0x03 matches vCPU0 and, by exact matching, vCPU1 (unless its LDR
    # is 0); KVM asks only the vCPUs the optimized map resolves to rescan, never vCPU2.
    vm.write_rte(0, P, R.encode(vector=V, trigger="level", dest=0x03, dest_mode="logical"))
    assert reqs(vm, 0) == "SCAN_IOAPIC"
    assert reqs(vm, 1) == ("SCAN_IOAPIC" if requested else "")
    assert reqs(vm, 2) == ""
    for n in range(3):
        vm.enter(n)
    assert has(vm.vcpus[0].handled, V) == 1
    # The scan itself matches exactly (kvm_apic_match_dest ignores the enable bit), so a
    # software-disabled vCPU1 would get the bit once anything makes it rescan.
    assert has(vm.vcpus[1].handled, V) == (1 if requested else 0)
    if svr1 == 0x0FF:
        vm.lapic_write(1, "svr", 0x1FF)  # the map is recalculated: every vCPU rescans
        vm.enter(1)
        assert has(vm.vcpus[1].handled, V) == 1


def test_broadcast_scan_request_uses_exact_matching() -> None:
    """A broadcast destination is not resolved by the map: every present vCPU that
    kvm_apic_match_dest matches is asked, software-disabled or not."""
    vm = make_vm("linux-latest", "kernel", vcpus=2)
    vm.lapic_write(1, "svr", 0x0FF)
    vm.enter(0)
    vm.enter(1)
    vm.write_rte(0, P, R.encode(vector=V, trigger="level", dest=0xFF))
    assert reqs(vm, 0) == reqs(vm, 1) == "SCAN_IOAPIC"


# ---- kvm_irq_map_chip_pin: IOAPIC pin -> GSI for ack notifiers and the unmask resampler ----

QEMU_PIN2 = 2  # QEMU routes GSI 0 (the PIT) to IOAPIC pin 2 and gives GSI 2 no IOAPIC route


def _qemu_like_routes(vm: Vm) -> None:
    entries: list[Any] = [(0, "irqchip", "ioapic", QEMU_PIN2)]
    entries += [(g, "irqchip", "ioapic", g) for g in range(1, 24) if g != 2]
    vm.set_routes(entries)


def test_unmask_resamples_the_gsi_of_the_pin_not_the_pin_number() -> None:
    """fef8f2b90edb calls kvm_notify_irqfd_resampler(kvm, KVM_IRQCHIP_IOAPIC, pin), which maps
    the pin to its GSI: GSI 0's resampler answers for pin 2."""
    vm = make_vm("linux-latest", "kernel", vcpus=1)
    _qemu_like_routes(vm)
    vm.write_rte(0, QEMU_PIN2, R.encode(vector=V, trigger="level", dest=0))
    vm.register_resampler(0)
    vm.enter(0)
    assert vm.irqfd_assert(0)["delivered_to"] == [0]
    assert vm.ack(0)["vector"] == V
    vm.patch_rte(0, QEMU_PIN2, {"masked": True})
    vm.eoi(0)  # ack notifier of GSI 0 (pin 2 -> GSI 0)
    assert vm.resamplers[0] == 1
    assert vm.irqfd_assert(0)["delivered_to"] == []  # masked: latched
    assert vm.ioapic.irr >> QEMU_PIN2 & 1 == 1
    assert vm.patch_rte(0, QEMU_PIN2, {"masked": False}) is not None
    # Resampled through GSI 0 (a model taking GSI = pin would have looked for GSI 2's
    # resampler, found none and re-delivered).
    assert vm.resamplers[0] == 2
    assert vm.ioapic.irr >> QEMU_PIN2 & 1 == 0
    assert has(vm.vcpus[0].irr, V) == 0


def test_two_gsis_on_one_pin_only_the_last_one_has_ack_notifiers() -> None:
    """setup_routing_entry overwrites chip[IOAPIC][pin]: with GSIs 5 and 9 both on pin 5, only
    GSI 9 is the pin's GSI; GSI 5's resampler never hears of the pin's EOIs."""
    vm = make_vm("linux-latest", "kernel", vcpus=1)
    vm.set_routes([(5, "irqchip", "ioapic", P), (9, "irqchip", "ioapic", P)])
    vm.write_rte(0, P, R.encode(vector=V, trigger="level", dest=0))
    vm.register_resampler(5)
    vm.register_resampler(9)
    vm.enter(0)
    assert vm.irqfd_assert(5)["delivered_to"] == [0]
    assert vm.ack(0)["vector"] == V
    vm.eoi(0)
    assert vm.resamplers == {5: 0, 9: 1}
    # GSI 9's resampler deasserted the pin all the same: every resampler drives the line with
    # the one KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID, so no re-delivery; only GSI 5's device never
    # learns of the EOI.
    assert has(vm.vcpus[0].irr, V) == 0


def test_pin_whose_gsi_has_no_resampler_is_not_eoi_tracked() -> None:
    """kvm_irq_has_notifier goes through the same map: an edge pin is scanned as EOI-tracked
    only when the pin's own GSI has the ack notifier."""
    vm = make_vm("linux-latest", "kernel", vcpus=1)
    vm.set_routes([(5, "irqchip", "ioapic", E), (9, "irqchip", "ioapic", E)])
    vm.write_rte(0, E, R.encode(vector=VE, trigger="edge", dest=0))
    vm.register_resampler(5)
    vm.enter(0)
    assert has(vm.vcpus[0].handled, VE) == 0
    vm.register_resampler(9)
    vm.enter(0)
    assert has(vm.vcpus[0].handled, VE) == 1


# ---- "phys broadcast and lowest prio": the redirection hint survives the conversion ----

MSI_PHYS_BROADCAST = 0xFEE00000 | (0xFF << 12)
REDIR_HINT = 1 << 3


@pytest.mark.parametrize(
    ("address_lo", "data", "targets"),
    [
        # Redirection hint, Fixed: delivery mode becomes Fixed (it was), the hint stays, so
        # the slow path still picks one vCPU (vector hashing: candidate vector % 3).
        (MSI_PHYS_BROADCAST | REDIR_HINT, 0x61, [0x61 % 3]),
        # APIC_DM_LOWEST without the hint: converted to Fixed, a real broadcast.
        (MSI_PHYS_BROADCAST, 0x61 | 1 << 8, [0, 1, 2]),
        # The hint and APIC_DM_LOWEST together: still one vCPU.
        (MSI_PHYS_BROADCAST | REDIR_HINT, 0x61 | 1 << 8, [0x61 % 3]),
    ],
)
def test_physical_broadcast_lowest_priority_keeps_the_redirection_hint(
    address_lo: int, data: int, targets: list[int]
) -> None:
    vm = make_vm("linux-latest", "kernel", vcpus=3)
    assert vm.signal_msi(address_lo, 0, data)["delivered_to"] == targets


def test_physical_broadcast_hint_without_vector_hashing_picks_lowest_arb_prio() -> None:
    vm = make_vm("linux-latest", "kernel", vcpus=3, vector_hashing=False)
    # vCPU0 wins the tie. The converted message is Fixed: it reaches one vCPU but no longer
    # counts as APIC_DM_LOWEST in __apic_accept_irq, so apic_arb_prio does not move and vCPU0
    # wins again (had the mode stayed LOWEST, vCPU1 would).
    assert vm.signal_msi(MSI_PHYS_BROADCAST | REDIR_HINT, 0, 0x61 | 1 << 8)["delivered_to"] == [0]
    assert vm.vcpus[0].arb_prio == 0
    assert vm.signal_msi(MSI_PHYS_BROADCAST | REDIR_HINT, 0, 0x62 | 1 << 8)["delivered_to"] == [0]


# ---- QEMU's extended destination id swizzle (KVM_FEATURE_MSI_EXT_DEST_ID) ----


@pytest.mark.parametrize(
    ("x2apic_format", "overrides", "target"),
    [
        (True, {}, 0x103),  # swizzled: address_hi 14:8 = 1 -> APIC id 0x103
        (True, {"qemu_msi_ext_dest_id": False}, 0x03),  # before: the 8-bit destination only
        (False, {}, 0x03),  # no 32-bit ids: QEMU leaves the feature off
    ],
)
def test_split_ioapic_extended_destination_reaches_apic_ids_above_255(
    x2apic_format: bool, overrides: dict[str, bool], target: int
) -> None:
    vm = make_vm(
        "linux-latest",
        "split",
        vcpus=0x104,
        x2apic=True,
        x2apic_format=x2apic_format,
        overrides=overrides,
    )
    # RTE bits 55:49 hold extended destination bits 14:8 (bit 48 is the remappable format).
    vm.write_rte(0, E, R.encode(vector=VE, dest=0x03, extended_dest=0x01 << 1))
    route = vm.routes[E][0]
    if target > 0xFF:
        assert route[2] == 0x100 and route[1] & 0xFF0 == 0  # kvm_swizzle_msi_ext_dest_id
    else:
        assert route[2] == 0 and route[1] & 0xFF0 == 0x02 << 4
    vm.set_line(E, 1)
    assert has(vm.vcpus[target].irr, VE) == 1
    assert sum(has(v.irr, VE) for v in vm.vcpus) == 1


def test_swizzle_leaves_remappable_format_alone() -> None:
    vm = make_vm("linux-latest", "split", vcpus=4, x2apic=True, x2apic_format=True)
    vm.write_rte(0, E, R.encode(vector=VE, dest=0x03, extended_dest=0x03))  # bit 48 set
    assert vm.routes[E][0][2] == 0


# ---- RTC EOI tracking (T15): rtc_status.dest_map, coalescing, rtc_irq_eoi, the scan ----

RTC, VR = 8, 0x68


def _rtc_vm(vcpus: int = 2, dest: int = 0, logical: bool = False, **overrides: bool) -> Vm:
    vm = make_vm("linux-latest", "kernel", vcpus=vcpus, overrides=overrides)
    if logical:
        for n in range(vcpus):
            vm.lapic_write(n, "ldr", (1 << n) << 24)
    vm.write_rte(0, RTC, R.encode(vector=VR, dest=dest,
                                  dest_mode="logical" if logical else "physical"))
    for n in range(vcpus):
        vm.enter(n)
    return vm


def _tick(vm: Vm, source: int = 0) -> int:
    """One RTC tick as QEMU's RTC raises it: KVM_IRQ_LINE_STATUS 1 then 0 (source 0)."""
    status = vm.set_line(RTC, action="pulse", source=source)["steps"][0]["status"]
    assert isinstance(status, int)
    return status


def test_rtc_tick_is_coalesced_until_its_eoi() -> None:
    vm = _rtc_vm()
    assert _tick(vm) == 1
    assert (vm.ioapic.rtc_pending_eoi, vm.ioapic.rtc_dest) == (1, [0 << 8 | VR])
    assert has(vm.vcpus[0].handled, VR) == 1  # the RTC pin is always scanned
    assert vm.ack(0)["vector"] == VR
    # rtc_irq_check_coalesced: refused before the edge is latched, not delivered.
    result = vm.set_line(RTC, action="pulse")["steps"][0]
    assert (result["status"], result["outcome"], result["reason"]) == (
        0, "coalesced", "rtc-eoi-pending")
    assert has(vm.vcpus[0].irr, VR) == 0
    assert vm.eoi(0)["forwarded"] is True  # rtc_irq_eoi
    assert (vm.ioapic.rtc_pending_eoi, vm.ioapic.rtc_dest) == (0, [])
    assert _tick(vm) == 1


@pytest.mark.parametrize("source", [1, 2])
def test_rtc_tracking_needs_line_status(source: int) -> None:
    """Only KVM_IRQ_LINE_STATUS (userspace's source 0) tracks: an irqfd or an in-kernel
    source delivers every edge and leaves rtc_status alone."""
    vm = _rtc_vm()
    if source == 1:
        vm.register_resampler(RTC)
        assert vm.irqfd_assert(RTC)["status"] == 1
        vm.set_line(RTC, 0, source=1)
        assert vm.irqfd_assert(RTC)["status"] == 1
    else:
        assert _tick(vm, source) == 1
        assert _tick(vm, source) == 1
    assert vm.ioapic.rtc_pending_eoi == 0


def test_rtc_dest_map_keeps_the_eoi_after_a_retarget() -> None:
    """The scan's dest_map branch: vCPU0 keeps intercepting the RTC vector after the guest
    retargets pin 8 to vCPU1, even without db2bdcbbbd32's pending-vector check, so its EOI
    still reaches rtc_irq_eoi and ticks resume."""
    vm = _rtc_vm(scan_keeps_pending_edge=False)
    assert _tick(vm) == 1
    assert vm.ack(0)["vector"] == VR
    vm.patch_rte(0, RTC, {"dest": 1})
    vm.enter(0)
    vm.enter(1)
    assert has(vm.vcpus[0].handled, VR) == 1  # only because vCPU0 is in the dest_map
    assert has(vm.vcpus[1].handled, VR) == 1  # the RTE now targets it
    assert _tick(vm) == 0  # still pending
    assert vm.eoi(0)["forwarded"] is True
    assert vm.ioapic.rtc_pending_eoi == 0
    vm.enter(0)
    # rtc_irq_eoi requests no rescan: the bit stays until something rescans vCPU0 (here an
    # LDR write, which recalculates the APIC map and rescans every vCPU).
    assert has(vm.vcpus[0].handled, VR) == 1
    vm.lapic_write(0, "ldr", 0x01 << 24)
    vm.enter(0)
    assert has(vm.vcpus[0].handled, VR) == 0
    assert accepts_during(vm, lambda: _tick(vm)) == [1]


def test_rtc_broadcast_waits_for_every_destination() -> None:
    vm = _rtc_vm(vcpus=2, dest=0x03, logical=True)
    assert _tick(vm) == 2
    assert vm.ioapic.rtc_pending_eoi == 2
    assert vm.ack(0)["vector"] == VR
    vm.eoi(0)
    assert (vm.ioapic.rtc_pending_eoi, vm.ioapic.rtc_dest) == (1, [1 << 8 | VR])
    assert _tick(vm) == 0
    assert vm.ack(1)["vector"] == VR
    vm.eoi(1)
    assert vm.ioapic.rtc_pending_eoi == 0
    assert _tick(vm) == 2


def test_rtc_eoi_of_another_vector_does_not_count() -> None:
    """rtc_irq_eoi matches the vCPU *and* the vector the dest_map recorded: a level EOI that
    reaches the IOAPIC from the same vCPU leaves pending_eoi alone."""
    vm = _rtc_vm()
    VL = 0x70  # above the RTC vector, so it is taken and retired first
    vm.write_rte(0, P, R.encode(vector=VL, trigger="level", dest=0))
    vm.enter(0)
    assert _tick(vm) == 1
    vm.set_line(P, 1)
    assert vm.ack(0)["vector"] == VL
    vm.set_line(P, 0)
    assert vm.eoi(0)["forwarded"] is True  # kvm_ioapic_update_eoi ran, for VL
    assert vm.ioapic.rtc_pending_eoi == 1
    assert vm.ack(0)["vector"] == VR
    vm.eoi(0)
    assert vm.ioapic.rtc_pending_eoi == 0


def test_rtc_status_is_part_of_key_clone_and_snapshot() -> None:
    vm = _rtc_vm()
    before = vm.key()
    _tick(vm)
    assert vm.key() != before
    c = vm.clone()
    assert c.key() == vm.key() and c.ioapic.rtc_dest is not vm.ioapic.rtc_dest
    r = Vm.restore(vm.snapshot())
    assert (r.ioapic.rtc_pending_eoi, r.ioapic.rtc_dest) == (1, [VR])
    assert r.key() == vm.key()
    snap = vm.snapshot()
    del snap["ioapic"]["rtc_dest"], snap["ioapic"]["rtc_pending_eoi"]
    assert Vm.restore(snap).ioapic.rtc_pending_eoi == 0  # older snapshots: nothing pending
