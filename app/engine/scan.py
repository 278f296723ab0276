"""EOI-exit bitmap computation (T9): vcpu_scan_ioapic, kvm_ioapic_scan_entry,
kvm_scan_ioapic_routes and kvm_scan_ioapic_irq.

KVM rescans each vCPU by walking every pin or route and matching the vCPU against it, i.e.
O(vCPUs x routes) for a full rescan. The result for one vCPU depends on the routes, the APIC
map and that vCPU's own IRR/ISR, so we build, once per routing/map generation, the inverted
index "vCPU -> vectors of targets that match it" (O(routes + matches)); each vCPU's scan is
then a few big-int operations plus one step per pending vector. Same bits, same
highest_stale, different complexity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import lapic
from . import rte as R
from .events import VCPU_NAMES
from .msi import msi_to_irq
from .state import REQ_LOAD_EOI_EXITMAP, Vcpu, rtc_dest_vector

if TYPE_CHECKING:
    from .vm import Vm

RTC_GSI = 8


class ScanTable:
    """Per-generation scan targets: which vectors each vCPU matches, and which vectors may be
    kept because they are pending (by target kind and version flags)."""

    __slots__ = ("all_match", "allowed", "allowed_count", "match", "match_allowed_count")

    def __init__(self) -> None:
        self.all_match = 0  # vectors of targets every present vCPU matches
        self.match: dict[int, int] = {}  # vcpu idx -> vectors of targets it matches
        self.allowed = 0  # vectors of targets for which pending_eoi keeps the bit
        self.allowed_count: dict[int, int] = {}  # vector -> number of such targets
        self.match_allowed_count: dict[int, dict[int, int]] = {}  # vcpu -> vector -> matched


def scan_targets(vm: Vm) -> list[tuple[int, bool, int, bool]]:
    """(dest, logical, vector, pending_allowed) for every target the scan looks at."""
    f = vm.flags
    out: list[tuple[int, bool, int, bool]] = []
    if vm.config.irqchip == "kernel":
        io = vm.ioapic
        tracked = vm.ack_notifier_pins()
        for pin, e in enumerate(io.redir):
            level = bool(e & R.TRIGGER_BIT)
            if not (level or pin in tracked or pin == RTC_GSI):
                continue
            allowed = f.scan_keeps_pending_level if level else f.scan_keeps_pending_edge
            out.append((R.dest(e), bool(e & R.DEST_MODE_BIT), e & 0xFF, allowed))
    else:
        limit = min(vm.nr_rt_entries(), vm.config.nr_reserved_ioapic_pins)
        fmt = vm.config.x2apic_format
        for gsi in range(limit):
            for entry in vm.routes.get(gsi, ()):
                if entry[0] != "msi":
                    continue
                irq = msi_to_irq(entry[1], entry[2], entry[3], fmt)
                # Before 7455a8327674 the test read irq.level, always 1 for an MSI
                # (kvm_set_msi_irq), so edge routes were scanned as well.
                if irq.level_trig or not f.split_scan_level_routes_only:
                    out.append(
                        (irq.dest, irq.logical, irq.vector, f.split_scan_keeps_pending_level)
                    )
    return out


def build_scan_table(vm: Vm) -> ScanTable:
    t = ScanTable()
    amap = vm.apic_map()
    n_present = len(amap.all_present)
    for dest, logical, vec, allowed in scan_targets(vm):
        bit = 1 << vec
        targets = amap.matching(dest, logical)
        if allowed:
            t.allowed |= bit
            t.allowed_count[vec] = t.allowed_count.get(vec, 0) + 1
        if len(targets) == n_present and n_present:
            t.all_match |= bit
            if allowed:
                for i in targets:
                    c = t.match_allowed_count.setdefault(i, {})
                    c[vec] = c.get(vec, 0) + 1
            continue
        for i in targets:
            t.match[i] = t.match.get(i, 0) | bit
            if allowed:
                c = t.match_allowed_count.setdefault(i, {})
                c[vec] = c.get(vec, 0) + 1
    return t


def vcpu_scan_ioapic(vm: Vm, v: Vcpu, cause: int | None) -> None:
    """vcpu_scan_ioapic on consuming KVM_REQ_SCAN_IOAPIC."""
    actor = VCPU_NAMES[v.idx]
    if not v.apic_base_enabled:
        return  # !kvm_apic_present: the bitmap is left as it was
    f = vm.flags
    if vm.apicv_intel and (vm.config.irqchip == "kernel" or f.split_scan_syncs_pir):
        lapic.sync_pir_to_irr(vm, v, cause)
    if not f.eoi_exit_bitmap:
        v.handled = 0
        v.highest_stale = -1
        return
    t = vm.scan_table()
    matched = t.all_match | t.match.get(v.idx, 0)
    pending = (v.irr | v.isr) & t.allowed
    handled = matched | pending
    stale = -1
    if f.rescan_after_stale_eoi and pending:
        # A pending vector is stale when some pending-allowed target with that vector does
        # not match this vCPU (kvm_scan_ioapic_irq takes the else-branch for it).
        counts = t.match_allowed_count.get(v.idx, {})
        bits = pending
        while bits:
            vec = bits.bit_length() - 1
            bits &= ~(1 << vec)
            if t.allowed_count[vec] > counts.get(vec, 0):
                stale = vec
                break
    if vm.config.irqchip == "kernel" and vm.ioapic.rtc_pending_eoi:
        # kvm_ioapic_scan_entry first: "make sure we see any missing RTC EOI" - a vCPU in the
        # RTC dest_map keeps the vector it was given, whatever the RTE says now.
        rtc_vec = rtc_dest_vector(vm.ioapic, v.idx)
        if rtc_vec >= 0:
            handled |= 1 << rtc_vec
    old = v.handled
    v.handled = handled
    v.highest_stale = stale
    seq = vm.log.emit(actor, "scan", cause, "handled", handled, "was", old, "highest_stale", stale)
    # Not kicked: the vCPU is already outside guest mode while consuming its requests.
    v.requests |= REQ_LOAD_EOI_EXITMAP
    vm.log.emit(actor, "request", seq, "request", "LOAD_EOI_EXITMAP")
