"""Delivery of an IOAPIC/MSI message to local APICs (T6): kvm_irq_delivery_to_apic with its
fast path over the optimized map and the slow path over all vCPUs.

The return value matters: the in-kernel IOAPIC sets Remote IRR when it is non-zero. The fast
path returns the number of accepting LAPICs (0 when the destination resolves to nobody); the
slow path returns -1 when no vCPU matched at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import lapic
from .apic_map import (
    LOGICAL_CLUSTER,
    LOGICAL_DISABLED,
    LOGICAL_FLAT,
    LOGICAL_SW_DISABLED,
    LOGICAL_X2APIC,
    ApicMap,
    match_dest,
    sw_enabled,
)
from .msi import LapicIrq

if TYPE_CHECKING:
    from .vm import Vm


def nth_set_bit(bits: int, n: int) -> int:
    """kvm_vector_to_cpu's helper: index of the n-th (0-based) set bit."""
    for _ in range(n):
        bits &= bits - 1
    return (bits & -bits).bit_length() - 1


def deliver_to_apic(vm: Vm, irq: LapicIrq, cause: int | None) -> int:
    """kvm_irq_delivery_to_apic: fast path if the map resolves the destination, else slow."""
    amap = vm._map or vm.apic_map()
    if not irq.logical and irq.delivery_mode == 0 and irq.dest != 0xFF and not (
        amap.phys_disabled or amap.quirk_disabled
    ):
        # The common case, resolved as the fast path does: one physical Fixed destination.
        idx = amap.phys_map.get(irq.dest)
        if idx is not None:
            return lapic.accept_irq(vm, vm.vcpus[idx], irq, cause)
    resolved = _fast_targets(vm, amap, irq)
    if resolved is not None:
        ret = 0
        for idx in resolved:
            ret += lapic.accept_irq(vm, vm.vcpus[idx], irq, cause)
        if not resolved:
            vm.log.emit(
                "kvm", "no-target", cause, "vector", irq.vector, "dest", irq.dest, "path", "fast"
            )
        return ret
    return _slow_path(vm, amap, irq, cause)


def bitmap_or_dest_vcpus(vm: Vm, dest: int, logical: bool) -> list[int]:
    """kvm_bitmap_or_dest_vcpus (added with 7ee30bc132c6), for the scan requests of an RTE
    write: the vCPUs a Fixed message to (dest, mode) reaches through the optimized map, whose
    logical part holds only software-enabled APICs with a non-zero LDR; only when the map
    cannot resolve the destination (broadcast, map disabled) every present vCPU that
    kvm_apic_match_dest matches. So a software-disabled or LDR=0 vCPU that a logical
    destination matches exactly gets no KVM_REQ_SCAN_IOAPIC, though its scan would match."""
    amap = vm._map or vm.apic_map()
    resolved = _fast_targets(vm, amap, LapicIrq(0, 0, logical, False, dest))
    return amap.matching(dest, logical) if resolved is None else resolved


def _fast_targets(vm: Vm, amap: ApicMap, irq: LapicIrq) -> list[int] | None:
    """kvm_irq_delivery_to_apic_fast's target resolution; None means "use the slow path"."""
    dest = irq.dest
    if (dest == 0xFF and not amap.quirk_disabled) or (
        amap.quirk_disabled and amap.is_broadcast(dest)
    ):
        return None
    if not irq.logical:
        if amap.phys_disabled:
            return None
        idx = amap.phys_map.get(dest)
        if not irq.lowest_prio:
            # KVM sizes the physical map to at least 0xff, so an 8-bit id always resolves.
            return [] if idx is None else [idx]
        slots: list[int | None] = [idx]
        bitmap = 1
    else:
        mode = amap.logical_mode
        if mode == LOGICAL_DISABLED:
            return None
        if mode == LOGICAL_SW_DISABLED:
            return []
        if mode == LOGICAL_X2APIC:
            base = (irq.dest >> 16) << 4
            bitmap = irq.dest & 0xFFFF
            slots = [amap.phys_map.get(base + i) for i in range(16)]
        elif mode == LOGICAL_FLAT:
            bitmap = irq.dest & 0xFF
            slots = amap.logical_clusters.get(0, [None] * 16)
        else:
            assert mode == LOGICAL_CLUSTER
            if irq.dest > 0xFF:
                return []
            bitmap = irq.dest & 0xF
            slots = amap.logical_clusters.get(irq.dest >> 4, [None] * 16)
        if not irq.lowest_prio:
            return [s for i, s in enumerate(slots) if bitmap >> i & 1 and s is not None]
    if irq.lowest_prio:
        if vm.config.vector_hashing:
            if not bitmap:
                return []
            chosen = nth_set_bit(bitmap, irq.vector % bitmap.bit_count())
            target = slots[chosen] if chosen < len(slots) else None
            # The hashed slot may hold no LAPIC: KVM drops the interrupt.
            return [] if target is None else [target]
        best: int | None = None
        for i, s in enumerate(slots):
            if (
                bitmap >> i & 1
                and s is not None
                and (best is None or vm.vcpus[s].arb_prio < vm.vcpus[best].arb_prio)
            ):
                best = s
        return [] if best is None else [best]
    return [s for s in slots if s is not None]


def _slow_path(vm: Vm, amap: ApicMap, irq: LapicIrq, cause: int | None) -> int:
    """The loop over all present vCPUs in kvm_irq_delivery_to_apic.

    A physical broadcast with lowest priority is turned into Fixed delivery ("phys broadcast
    and lowest prio"), but only its delivery mode changes: an MSI's redirection hint stays, so
    kvm_lowest_prio_delivery still holds and the loop still picks one vCPU. Only an
    APIC_DM_LOWEST message without the hint becomes a real broadcast."""
    if not irq.logical and irq.dest == 0xFF and irq.lowest_prio:
        irq = LapicIrq(irq.vector, 0, irq.logical, irq.level_trig, irq.dest, irq.redir_hint)
    quirk_off = vm.config.broadcast_quirk_disabled
    matches = [
        i
        for i in amap.matching(irq.dest, irq.logical)
        if match_dest(vm.vcpus[i], irq.dest, irq.logical, quirk_off)
    ]
    ret = -1
    if not irq.lowest_prio:
        for i in matches:
            if ret < 0:
                ret = 0
            ret += lapic.accept_irq(vm, vm.vcpus[i], irq, cause)
    else:
        candidates = [i for i in matches if sw_enabled(vm.vcpus[i])]
        chosen: int | None = None
        if candidates:
            if vm.config.vector_hashing:
                chosen = candidates[irq.vector % len(candidates)]
            else:
                chosen = min(candidates, key=lambda i: (vm.vcpus[i].arb_prio, i))
        if chosen is not None:
            ret = lapic.accept_irq(vm, vm.vcpus[chosen], irq, cause)
    if ret < 0:
        vm.log.emit(
            "kvm", "no-target", cause, "vector", irq.vector, "dest", irq.dest, "path", "slow"
        )
    return ret
