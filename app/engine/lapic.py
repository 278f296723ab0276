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
        if vm.config.apicv:
            # With APICv the vector is posted; a vCPU in guest mode processes the
            # notification at once, otherwise it waits in the PIR until the next entry.
            if v.in_guest:
                v.irr |= bit
                via = "posted-in-guest"
            else:
                v.pir |= bit
                via = "pir"
        else:
            v.irr |= bit
            via = "irr"
        vm.log.emit(actor, "accepted", cause, "vector", irq.vector, "level", irq.level_trig,
                    "via", via)  # fmt: skip
        if vm.config.apicv:
            return 1
        # kvm_make_request(KVM_REQ_EVENT) + kick, inlined: this is the hot path.
        v.requests |= REQ_EVENT
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
    if vm.config.apicv:
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
    """apic_set_eoi, or with APICv the virtualized EOI: the highest ISR vector is retired.

    With APICv an EOI exits to KVM only if the vector's bit is set in the EOI-exit bitmap the
    vCPU last loaded (vmx_load_eoi_exitmap); otherwise the CPU retires it and KVM never knows.
    """
    vec = v.isr.bit_length() - 1
    if vec < 0:
        # KVM: an EOI with an empty ISR does nothing, not even KVM_REQ_EVENT.
        if emit:
            vm.log.emit(VCPU_NAMES[v.idx], "eoi", cause, "vector", None)
        return {"vector": None, "forwarded": False, "path": None}
    v.isr &= ~(1 << vec)
    apicv = vm.config.apicv and vm.flags.eoi_exit_bitmap
    path = (
        "trap"
        if not apicv
        else ("eoi-induced-exit" if (v.eoi_exitmap >> vec) & 1 else "virtualized")
    )
    level = bool((v.tmr >> vec) & 1)
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
