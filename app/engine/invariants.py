"""Invariant checks run after every scenario step. Each finding names a state the KVM fixes in
this area were written to prevent, so a scenario can show *that* a race bit and *where*.

  remote-irr-stuck        a pin has Remote IRR set, but no vCPU holds its vector in IRR, ISR
                          or PIR and no EOI exit for it is pending: no EOI can ever come, the
                          pin is dead (races 1, 2, 2b unfixed).
  eoi-will-be-lost        a vCPU holds a level vector whose pin has Remote IRR set, but the
                          vector's handled bit is clear and no rescan is pending: its EOI will
                          not reach the IOAPIC (the race, caught before the EOI happens).
  eoi-not-forwarded       a vCPU retired a level vector while a pin with that vector had Remote
                          IRR set, and no IOAPIC heard of it (the race, as it happens).
  handled-vector-stale    a handled-vector bit that no current route and no pending vector
                          explains: the permanent extra EOI exits 87e4951e250b removed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import rte as R
from .bitmap import vectors
from .events import event_fields
from .state import REQ_IOAPIC_EOI_EXIT, REQ_SCAN_IOAPIC, rtc_dest_vector

if TYPE_CHECKING:
    from .vm import Vm

Finding = dict[str, Any]


def _rirr_pins_by_vector(vm: Vm) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for pin, e in enumerate(vm.ioapic.redir):
        if e & R.REMOTE_IRR_BIT and e & R.TRIGGER_BIT:
            out.setdefault(e & 0xFF, []).append(pin)
    return out


def state_findings(vm: Vm) -> list[Finding]:
    """Findings that follow from the current state alone."""
    found: list[Finding] = []
    rirr = _rirr_pins_by_vector(vm)
    for vec, pins in sorted(rirr.items()):
        bit = 1 << vec
        holders = [
            v.idx for v in vm.vcpus
            if (v.irr | v.isr | v.pir) & bit
            or (v.requests & REQ_IOAPIC_EOI_EXIT and v.pending_ioapic_eoi == vec)
        ]
        if not holders:
            for pin in pins:
                found.append({"kind": "remote-irr-stuck", "pin": pin, "vector": vec,
                              "detail": f"pin {pin} has Remote IRR set but no vCPU holds vector "
                                        f"{vec:#x} and no EOI exit is pending: the pin is dead"})
            continue
        if not vm.flags.eoi_exit_bitmap:
            continue
        for i in holders:
            v = vm.vcpus[i]
            if not (v.tmr >> vec) & 1 or (v.handled >> vec) & 1:
                continue
            if v.requests & (REQ_SCAN_IOAPIC | REQ_IOAPIC_EOI_EXIT):
                continue  # a rescan may yet restore the bit
            found.append({"kind": "eoi-will-be-lost", "vcpu": i, "vector": vec, "pins": pins,
                          "detail": f"vcpu{i} holds level vector {vec:#x} for pin(s) {pins} with "
                                    "Remote IRR set, but its handled-vector bit is clear: its "
                                    "EOI will not reach the IOAPIC"})
    if vm.flags.eoi_exit_bitmap:
        table = vm.scan_table()
        for v in vm.vcpus:
            if not v.handled or v.requests & REQ_SCAN_IOAPIC or not v.apic_base_enabled:
                continue
            explained = table.all_match | table.match.get(v.idx, 0) | (
                (v.irr | v.isr | v.pir) & table.allowed
            )
            rtc_vec = rtc_dest_vector(vm.ioapic, v.idx) if vm.ioapic.rtc_pending_eoi else -1
            if rtc_vec >= 0:
                explained |= 1 << rtc_vec
            stale = v.handled & ~explained
            if stale:
                found.append({"kind": "handled-vector-stale", "vcpu": v.idx,
                              "vectors": vectors(stale),
                              "detail": f"vcpu{v.idx} intercepts EOIs of {vectors(stale)} "
                                        "though no route targets it and none is pending"})
    return found


def event_findings(vm: Vm, after_seq: int) -> list[Finding]:
    """Findings read off the events logged after `after_seq` (needs the event log on)."""
    found: list[Finding] = []
    events = vm.log.events[max(0, after_seq + 1 - vm.log.base):]
    if not events:
        return found
    not_forwarded = {e[3] for e in events if e[2] in ("eoi-not-forwarded", "eoi-not-broadcast")}
    rirr = _rirr_pins_by_vector(vm)
    for e in events:
        kind = e[2]
        if kind == "eoi" or kind == "auto-eoi":  # auto-eoi: lapic_auto_eoi's EOI at the ack
            f = event_fields(e)
            vec = f.get("vector")
            if vec is None or not f.get("level"):
                continue
            lost = f.get("path") == "virtualized" or e[0] in not_forwarded
        elif kind == "eoi-exit-dropped":
            f = event_fields(e)
            vec = f["vector"]
            lost = True
        else:
            continue
        if lost and vec in rirr:
            found.append({"kind": "eoi-not-forwarded", "vcpu": int(e[1][4:]), "vector": vec,
                          "pins": rirr[vec], "event": e[0],
                          "detail": f"{e[1]} retired level vector {vec:#x} but no IOAPIC heard "
                                    f"of it; Remote IRR stays set on pin(s) {rirr[vec]}"})
    return found


def finding_key(f: Finding) -> tuple[Any, ...]:
    return (f["kind"], f.get("pin"), f.get("vcpu"), f.get("vector"), tuple(f.get("vectors", ())))
