"""Local APIC transitions: accept (T4), acknowledge (T7), EOI (T8) and guest register writes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from . import ioapic_kvm
from . import requests as rq
from .apic_map import x2apic_ldr
from .bitmap import highest
from .errors import invalid
from .events import VCPU_NAMES
from .msi import LapicIrq
from .state import (
    APIC_LVR_BASE,
    APIC_LVR_DIRECTED_EOI,
    PV_EOI_ARMED,
    PV_EOI_OFF,
    PV_EOI_TAKEN,
    REQ_EVENT,
    REQ_IOAPIC_EOI_EXIT,
    REQ_SCAN_IOAPIC,
    SPIV_APIC_ENABLED,
    SPIV_DIRECTED_EOI,
    Vcpu,
)

if TYPE_CHECKING:
    from .vm import Vm


def ppr(v: Vcpu) -> int:
    """__apic_update_ppr: TPR when its class is at least the highest in-service class."""
    isrv = highest(v.isr)
    if isrv < 0:
        isrv = 0
    if (v.tpr & 0xF0) >= (isrv & 0xF0):
        return v.tpr & 0xFF
    return isrv & 0xF0


def apic_enabled(v: Vcpu) -> bool:
    """apic_enabled: hardware-enabled (APIC_BASE) and software-enabled (SPIV bit 8)."""
    return v.apic_base_enabled and bool(v.svr & SPIV_APIC_ENABLED)


def lvr(vm: Vm) -> int:
    """kvm_apic_set_version: directed EOI needs x2APIC in the guest CPUID, and then (since
    0bcc3fb95b97) an IOAPIC outside the kernel, or (6517dfbcc918) a VM that enabled
    suppress-EOI-broadcast; 6517dfbcc918's DISABLED mode never advertises it."""
    value = APIC_LVR_BASE
    f = vm.flags
    if f.suppress_eoi_broadcast_disabled:
        return value
    if vm.config.x2apic_cpuid and (
        f.split_suppress_eoi_broadcast
        or not (f.hide_directed_eoi_with_kernel_ioapic and vm.config.irqchip == "kernel")
    ):
        value |= APIC_LVR_DIRECTED_EOI
    return value


def sync_pir_to_irr(vm: Vm, v: Vcpu, cause: int | None) -> None:
    """vmx_sync_pir_to_irr: move posted vectors into IRR."""
    if v.pir:
        moved = v.pir
        v.irr |= moved
        v.pir = 0
        vm.log.emit(VCPU_NAMES[v.idx], "pir-synced", cause, "vectors", moved)


def accept_irq(vm: Vm, v: Vcpu, irq: LapicIrq, cause: int | None) -> int:
    """__apic_accept_irq for an IOAPIC/MSI message: 1 if accepted, else 0.

    Fixed/lowest-priority set or clear TMR by the trigger mode and land in IRR (or the PIR
    with APICv). KVM does not check the vector: vectors 0-15 are accepted into IRR and can
    never be acknowledged (their class is never above PPR).
    """
    dm = irq.delivery_mode
    actor = VCPU_NAMES[v.idx]
    if dm <= 1:
        if dm == 1:  # only APIC_DM_LOWEST counts, not the MSI redirection hint
            v.arb_prio += 1
        if not (v.apic_base_enabled and v.svr & SPIV_APIC_ENABLED):
            vm.log.emit(actor, "refused", cause, "vector", irq.vector, "reason", "apic-disabled")
            return 0
        bit = 1 << irq.vector
        if irq.level_trig:
            v.tmr |= bit
        else:
            v.tmr &= ~bit
        vm.accepted.append(v.idx)
        if vm.apicv_intel:
            # With APICv the vector is posted; a vCPU in guest mode processes the
            # notification at once, otherwise it waits in the PIR until the next entry.
            if v.in_guest:
                v.irr |= bit
                via = "posted-in-guest"
            else:
                v.pir |= bit
                via = "pir"
        elif vm.avic:
            # svm_deliver_avic_intr: AVIC has no PIR; KVM sets the bit in the vAPIC backing
            # page's IRR (kvm_lapic_set_irr) and rings the doorbell, or wakes a vCPU that is
            # not running. So the vector is in IRR at once, where kvm_apic_pending_eoi and
            # the scan see it: race 2b (f3ced000a2df) cannot happen under AVIC.
            v.irr |= bit
            via = "avic-doorbell" if v.in_guest else "avic-irr"
        else:
            v.irr |= bit
            via = "irr"
        vm.log.emit(actor, "accepted", cause, "vector", irq.vector, "level", irq.level_trig,
                    "via", via)  # fmt: skip
        if vm.apic_virt:
            return 1
        # kvm_make_request(KVM_REQ_EVENT) + kick, inlined: this is the hot path.
        v.requests |= REQ_EVENT
        if v.pv_eoi:
            pv_eoi_sync_from_guest(vm, v, cause)
        v.in_guest = False
        return 1
    if dm == 4:
        v.nmi_count += 1
        vm.accepted.append(v.idx)
        vm.log.emit(actor, "nmi", cause)
        return 1
    if dm == 2:
        v.smi_count += 1
        vm.accepted.append(v.idx)
        vm.log.emit(actor, "smi", cause)
        return 1
    if dm == 5:
        v.init_count += 1
        vm.accepted.append(v.idx)
        vm.log.emit(actor, "init", cause)
        return 1
    # ExtINT is only taken through LVT0; reserved modes are unsupported.
    vm.log.emit(actor, "refused", cause, "vector", irq.vector, "reason", f"delivery-mode-{dm}")
    return 0


def acknowledge(vm: Vm, v: Vcpu, cause: int | None, emit: bool = True) -> int | None:
    """kvm_cpu_get_interrupt + kvm_apic_ack_interrupt: the highest IRR vector whose class is
    above PPR moves to ISR. None when nothing is deliverable. With lapic_auto_eoi (the kvm_pvm
    host) it skips ISR and is EOIed at once (auto_eoi)."""
    if vm.apicv_intel:
        sync_pir_to_irr(vm, v, cause)
    irr = v.irr
    if not irr or not v.apic_base_enabled or not v.svr & SPIV_APIC_ENABLED:
        return None
    vec = irr.bit_length() - 1
    # ppr(v), inlined on this hot path.
    isrv = v.isr.bit_length() - 1
    tpr = v.tpr
    cur_ppr = tpr & 0xFF if (tpr & 0xF0) >= (isrv & 0xF0) or isrv < 0 else isrv & 0xF0
    if (vec & 0xF0) <= cur_ppr:
        return None
    bit = 1 << vec
    v.irr &= ~bit
    if vm.flags.lapic_auto_eoi:
        auto_eoi(vm, v, vec, vm.log.emit(VCPU_NAMES[v.idx], "ack", cause, "vector", vec)
                 if emit else cause)
        return vec
    v.isr |= bit
    if not vm.apic_virt:
        v.isr_cache = vec  # apic_set_isr keeps highest_isr_cache only without APICv
    if emit:
        vm.log.emit(VCPU_NAMES[v.idx], "ack", cause, "vector", vec)
    return vec


def auto_eoi(vm: Vm, v: Vcpu, vec: int, cause: int | None) -> None:
    """The lapic_auto_eoi host (kvm_pvm, not upstream KVM): the vector taken never enters ISR
    and its EOI runs at once, as apic_set_eoi would for a guest EOI write (T8 without the ISR
    step): kvm_ioapic_send_eoi, so in-kernel Remote IRR clears and a still-high level line is
    re-delivered into IRR before the guest's handler runs; in split mode the EOI exit is
    requested. Measured in tests/kvm/test_random_diff.py and test_kvm_vm.py::test_kvm_pvm_*."""
    level = bool((v.tmr >> vec) & 1)
    seq = vm.log.emit(VCPU_NAMES[v.idx], "auto-eoi", cause, "vector", vec, "level", level,
                      "path", "trap")
    send_eoi(vm, v, vec, seq)
    v.requests |= REQ_EVENT
    v.in_guest = False


def write_eoi(vm: Vm, v: Vcpu, cause: int | None, emit: bool = True) -> dict[str, Any]:
    """apic_set_eoi, or with APIC virtualization the virtualized EOI: the highest ISR vector
    is retired.

    Intel APICv: an EOI exits to KVM only if the vector's bit is set in the EOI-exit bitmap
    the vCPU last loaded (vmx_load_eoi_exitmap); otherwise the CPU retires it and KVM never
    knows. AMD AVIC has no EOI-exit bitmap (svm_load_eoi_exitmap is empty): the CPU retires an
    edge vector itself and traps on a level one (TMR set), which KVM handles as an ordinary
    EOI write (avic_unaccelerated_access_interception -> avic_unaccel_trap_write ->
    kvm_lapic_reg_write(APIC_EOI) -> apic_set_eoi), so the software handled-vector filter in
    kvm_ioapic_send_eoi decides what the IOAPIC hears, as without APIC virtualization.

    A trapping write is a VM exit: kvm_lapic_sync_from_vapic runs before the exit is
    handled, so an outstanding PV EOI is settled first (pv_eoi_sync_from_guest).
    """
    if v.pv_eoi:
        pv_eoi_sync_from_guest(vm, v, cause)
    vec = v.isr.bit_length() - 1
    if vec < 0:
        # KVM: an EOI with an empty ISR does nothing, not even KVM_REQ_EVENT.
        if emit:
            vm.log.emit(VCPU_NAMES[v.idx], "eoi", cause, "vector", None)
        return {"vector": None, "forwarded": False, "path": None}
    v.isr &= ~(1 << vec)
    v.isr_cache = -1  # apic_clear_isr
    level = bool((v.tmr >> vec) & 1)
    if not (vm.apic_virt and vm.flags.eoi_exit_bitmap):
        path = "trap"
    elif vm.avic:
        path = "avic-trap" if level else "virtualized"
    else:
        path = "eoi-induced-exit" if (v.eoi_exitmap >> vec) & 1 else "virtualized"
    # Without emit, the caller's root event (seq `cause`) records vector, level and path.
    if emit:
        seq = vm.log.emit(
            VCPU_NAMES[v.idx], "eoi", cause, "vector", vec, "level", level, "path", path
        )
    else:
        assert cause is not None
        seq = cause
    if path == "virtualized":
        return {"vector": vec, "level": level, "forwarded": False, "path": path}
    result = send_eoi(vm, v, vec, seq)
    result["vector"] = vec
    result["level"] = level
    result["path"] = path
    v.requests |= REQ_EVENT
    v.in_guest = False
    return result


# ---- PV EOI (MSR_KVM_PV_EOI_EN) ----


def pv_eoi_sync_to_guest(vm: Vm, v: Vcpu, cause: int | None) -> None:
    """apic_sync_pv_eoi_to_guest, run by kvm_lapic_sync_to_vapic on an entry that handles
    KVM_REQ_EVENT: KVM sets the guest's PV EOI flag (pv_eoi_set_pending) when the guest
    enabled PV EOI, no vector waits in IRR (irr_pending: a nested interrupt could follow),
    highest_isr_cache holds a vector (only a software acknowledgement sets it, so never with
    APICv or AVIC), and that vector's ioapic_handled_vectors bit is clear (kvm_ioapic_handles_
    vector: an EOI some IOAPIC must hear always exits). The guest may then EOI that vector
    by clearing the flag, without an exit."""
    if not v.pv_eoi_en or v.pv_eoi or v.irr or v.isr_cache < 0:
        return
    if (v.handled >> v.isr_cache) & 1:
        return
    v.pv_eoi = PV_EOI_ARMED
    vm.log.emit(VCPU_NAMES[v.idx], "pv-eoi-armed", cause, "vector", v.isr_cache)


def pv_eoi_sync_from_guest(vm: Vm, v: Vcpu, cause: int | None) -> None:
    """apic_sync_pv_eoi_from_guest, run by kvm_lapic_sync_from_vapic right after a VM exit
    while KVM_APIC_PV_EOI_PENDING is set: if the guest's flag is still set it did not EOI,
    and KVM clears the flag (PV EOI is only re-armed at an entry that finds it safe);
    otherwise the guest EOIed without an exit and KVM retires the vector now (apic_set_eoi
    on the highest ISR vector, with the handled-vector filter of this moment)."""
    actor = VCPU_NAMES[v.idx]
    taken = v.pv_eoi == PV_EOI_TAKEN
    v.pv_eoi = PV_EOI_OFF
    if not taken:
        vm.log.emit(actor, "pv-eoi-disarmed", cause, "vector", v.isr_cache)
        return
    vec = v.isr.bit_length() - 1
    if vec < 0:
        vm.log.emit(actor, "eoi", cause, "vector", None, "path", "pv-eoi-sync")
        return
    v.isr &= ~(1 << vec)
    v.isr_cache = -1
    level = bool((v.tmr >> vec) & 1)
    seq = vm.log.emit(actor, "eoi", cause, "vector", vec, "level", level, "path", "pv-eoi-sync")
    send_eoi(vm, v, vec, seq)
    v.requests |= REQ_EVENT


def guest_exit(vm: Vm, v: Vcpu, cause: int | None) -> None:
    """The vCPU leaves guest mode (a kick, a halt, an exit to the VMM): an armed PV EOI is
    settled on the way out (kvm_lapic_sync_from_vapic)."""
    if v.pv_eoi:
        pv_eoi_sync_from_guest(vm, v, cause)
    v.in_guest = False


def kernel_exit(vm: Vm, v: Vcpu, cause: int | None) -> None:
    """A VM exit KVM handles itself and re-enters from (an in-kernel IOAPIC or LAPIC access,
    a WRMSR): the vCPU stays in the model's guest mode, but kvm_lapic_sync_from_vapic runs
    after every exit, so an armed PV EOI is settled here too."""
    if v.pv_eoi:
        pv_eoi_sync_from_guest(vm, v, cause)


def guest_eoi(vm: Vm, v: Vcpu, cause: int) -> dict[str, Any]:
    """The guest's EOI routine. A Linux guest with PV EOI (kvm_guest_apic_eoi_write) first
    tests and clears its PV EOI flag: if KVM had set it, that is the whole EOI (no exit; KVM
    retires the vector at the next exit). Otherwise it writes the EOI register (write_eoi)."""
    if v.pv_eoi == PV_EOI_ARMED:
        v.pv_eoi = PV_EOI_TAKEN
        # No vector: nothing is retired yet (KVM still shows it in service); the guest's EOI
        # applies to the highest ISR vector, which the sync at the next exit retires.
        return {"vector": None, "level": None, "forwarded": False, "path": "pv-eoi",
                "deferred": True, "in_service": v.isr.bit_length() - 1}
    return write_eoi(vm, v, cause, emit=False)


def set_pv_eoi_msr(vm: Vm, v: Vcpu, value: int, cause: int | None) -> dict[str, Any]:
    """WRMSR MSR_KVM_PV_EOI_EN (kvm_lapic_set_pv_eoi): bit 0 enables PV EOI at the 4-byte
    aligned guest address in the other bits; a misaligned address is #GP. The WRMSR is an
    exit, so an armed PV EOI is settled before the new value takes effect."""
    if value & 2:
        raise invalid("MSR_KVM_PV_EOI_EN: the address must be 4-byte aligned (#GP)", "value")
    if not vm.flags.eoi_exit_bitmap:
        raise invalid("PV EOI is a KVM feature; the hardware profile has none", "op")
    kernel_exit(vm, v, cause)
    v.pv_eoi_en = bool(value & 1)
    vm.log.emit(VCPU_NAMES[v.idx], "wrmsr", cause, "msr", "MSR_KVM_PV_EOI_EN", "value", value)
    return {"vcpu": v.idx, "pv_eoi_enabled": v.pv_eoi_en, "value": value}


def send_eoi(vm: Vm, v: Vcpu, vec: int, cause: int) -> dict[str, Any]:
    """kvm_ioapic_send_eoi: decide whether an IOAPIC hears of the EOI of `vec`."""
    f = vm.flags
    actor = VCPU_NAMES[v.idx]
    level = bool((v.tmr >> vec) & 1)
    if not f.eoi_exit_bitmap:
        # 82093AA/SDM: the LAPIC broadcasts the EOI of a level (TMR) vector unless the guest
        # suppressed broadcasts with directed EOI.
        if not level or v.svr & SPIV_DIRECTED_EOI:
            vm.log.emit(actor, "eoi-not-broadcast", cause, "vector", vec, "level", level)
            return {"forwarded": False}
    elif not (v.handled >> vec) & 1:
        vm.log.emit(actor, "eoi-not-forwarded", cause, "vector", vec, "reason", "not-handled")
        return {"forwarded": False}
    if f.rescan_after_stale_eoi and vec == v.highest_stale:
        rq.make_request(vm, v, REQ_SCAN_IOAPIC, cause)
    if vm.config.irqchip == "split":
        if f.split_suppress_eoi_broadcast and v.svr & SPIV_DIRECTED_EOI:
            vm.log.emit(actor, "eoi-not-forwarded", cause, "vector", vec, "reason", "directed-eoi")
            return {"forwarded": False}
        v.pending_ioapic_eoi = vec  # shown by the request event's cause: this EOI
        rq.make_request(vm, v, REQ_IOAPIC_EOI_EXIT, cause)
        return {"forwarded": True, "eoi_exit": "pending"}
    if not f.notifiers_with_directed_eoi and v.svr & SPIV_DIRECTED_EOI:
        vm.log.emit(actor, "eoi-not-forwarded", cause, "vector", vec, "reason", "directed-eoi")
        return {"forwarded": False}
    pins = ioapic_kvm.ioapic_update_eoi(vm, v, vec, level, cause)
    return {"forwarded": True, "ioapic": pins}


# ---- guest register writes ----

LAPIC_REGS = ("id", "ldr", "dfr", "tpr", "svr", "eoi", "apic_base")


def write_register(vm: Vm, v: Vcpu, reg: str, value: int, cause: int | None) -> dict[str, Any]:
    """kvm_lapic_reg_write for the registers that matter to IOAPIC delivery, plus the
    APIC_BASE MSR (enable and x2APIC mode). A change that dirties KVM's APIC map triggers
    kvm_recalculate_apic_map, which requests SCAN_IOAPIC on every vCPU (T13.5)."""
    actor = VCPU_NAMES[v.idx]
    map_dirty = False
    if reg == "eoi":
        return write_eoi(vm, v, cause)
    kernel_exit(vm, v, cause)  # an APIC access (or x2APIC MSR) exit
    if reg == "tpr":
        v.tpr = value & 0xFF
    elif reg == "svr":
        mask = 0x3FF | (SPIV_DIRECTED_EOI if lvr(vm) & APIC_LVR_DIRECTED_EOI else 0)
        old = v.svr
        v.svr = value & mask
        map_dirty = bool((old ^ v.svr) & SPIV_APIC_ENABLED)
    elif reg in ("id", "ldr", "dfr"):
        if v.x2apic:
            raise invalid(f"{reg.upper()} is read-only in x2APIC mode (#GP)", reg)
        if reg == "id":
            v.id_reg = value & 0xFF000000
        elif reg == "ldr":
            v.ldr = value & 0xFF000000
        else:
            v.dfr = value | 0x0FFFFFFF
        map_dirty = True
    elif reg == "apic_base":
        map_dirty = _write_apic_base(v, value)
    else:
        raise invalid(f"unknown LAPIC register {reg!r}; known: {', '.join(LAPIC_REGS)}", "reg")
    seq = vm.log.emit(actor, "lapic-write", cause, "reg", reg, "value", value)
    if map_dirty:
        vm.apic_map_changed(seq)
    return {"reg": reg, "value": read_register(vm, v, reg)}


APIC_BASE_ENABLE: Final = 1 << 11
APIC_BASE_EXTD: Final = 1 << 10


def _write_apic_base(v: Vcpu, value: int) -> bool:
    """kvm_apic_set_base: the legal mode transitions (disabled <-> xAPIC <-> x2APIC, x2APIC
    -> disabled); anything else is #GP. Entering x2APIC derives the read-only LDR."""
    enable = bool(value & APIC_BASE_ENABLE)
    extd = bool(value & APIC_BASE_EXTD)
    if extd and not enable:
        raise invalid("APIC_BASE: x2APIC without enable is invalid (#GP)", "apic_base")
    if v.x2apic and enable and not extd:
        raise invalid("APIC_BASE: x2APIC -> xAPIC directly is invalid (#GP)", "apic_base")
    if not v.apic_base_enabled and extd:
        raise invalid("APIC_BASE: disabled -> x2APIC directly is invalid (#GP)", "apic_base")
    changed = (enable, extd) != (v.apic_base_enabled, v.x2apic)
    v.apic_base_enabled = enable
    if extd and not v.x2apic:
        v.ldr = x2apic_ldr(v.idx)
    if not extd and v.x2apic:
        # Leaving x2APIC (only via disable): the xAPIC ID returns to vcpu_id, LDR clears.
        v.id_reg = (v.idx & 0xFF) << 24
        v.ldr = 0
    v.x2apic = extd
    return changed


def read_register(vm: Vm, v: Vcpu, reg: str) -> int:
    if reg == "id":
        return v.idx if v.x2apic else v.id_reg
    if reg == "ldr":
        return x2apic_ldr(v.idx) if v.x2apic else v.ldr
    if reg == "dfr":
        return v.dfr
    if reg == "tpr":
        return v.tpr
    if reg == "svr":
        return v.svr
    if reg == "apic_base":
        return (
            0xFEE00000
            | (APIC_BASE_ENABLE if v.apic_base_enabled else 0)
            | (APIC_BASE_EXTD if v.x2apic else 0)
            | (0x100 if v.idx == 0 else 0)
        )
    if reg == "lvr":
        return lvr(vm)
    if reg == "ppr":
        return ppr(v)
    return 0
