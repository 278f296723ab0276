"""A recording replayed into what every picture draws: lanes (actors), rows (events), spans
(a signal held from one event to another), cause arrows and marks (findings, lost EOIs).

Spans come from the events that set and clear each signal:

  line        device `line` level 1 -> level 0 (and `irq-line` for GSIs 0..23, which KVM's
              default routing maps to the IOAPIC pin of the same number)
  remote-irr  IOAPIC `deliver` with remote_irr_set -> `remote-irr-cleared`, or an `rte-write`
              whose resulting entry has Remote IRR (bit 14) clear (the edge switch)
  irr         a vCPU's `accepted` (IRR or PIR) -> its `ack` of that vector
  isr         `ack` -> `eoi` / `auto-eoi` of that vector
  request     `request` -> the event that serves it (`scan`, `eoi-exitmap-loaded`,
              `exit-ioapic-eoi`) or the vCPU's next `enter`; a request raised while an enter
              is being processed is consumed by it and is not drawn as pending

In a window that starts after the log's first event, a clear with no set in the window means
the signal was set before the window: the span starts
at the window's top. A span still open at the end is drawn to the bottom; when the recording
has the end state, a span the state does not confirm is closed there, and (in a window that
starts after the log's first event) one the state has but the events never opened is drawn
from the top.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from .recording import Recording

RIRR_BIT = 1 << 14
GROUP_VCPUS_OVER = 4  # more vCPUs than this: vCPUs that only do housekeeping share one lane
MAX_VCPU_LANES = 8  # at most this many vCPUs get a lane of their own; the rest are grouped

# A vCPU with one of these events took part in interrupt traffic (it gets a lane of its own).
BUSY_KINDS = frozenset({
    "accepted", "ack", "eoi", "auto-eoi", "eoi-not-forwarded", "eoi-not-broadcast",
    "exit-ioapic-eoi", "eoi-exit-dropped", "pir-synced", "lapic-write", "lapic-write-op", "nmi",
    "smi", "init", "refused", "ioapic-mmio",
})
# The EOI went nowhere: the picture's red flags.
LOST_KINDS = frozenset({"eoi-not-forwarded", "eoi-exit-dropped", "eoi-not-broadcast"})
VMM_ACTORS = ("vmm", "kvm", "clock")
# The event that serves a request (kvm_vcpu_ioctl_run's request loop) ends its pending span.
CONSUMES = {"scan": "SCAN_IOAPIC", "eoi-exitmap-loaded": "LOAD_EOI_EXITMAP",
            "exit-ioapic-eoi": "IOAPIC_EOI_EXIT", "eoi-exit-dropped": "IOAPIC_EOI_EXIT"}


@dataclass
class Lane:
    key: str
    title: str
    kind: str  # device, ioapic, vmm, vcpu, group, other
    actors: list[str] = field(default_factory=list)
    subtitle: str = ""


@dataclass
class Row:
    seq: int
    actor: str
    kind: str
    fields: dict[str, Any]
    cause: int | None
    lane: int
    label: str
    step: int | None = None
    lost: bool = False  # an EOI that went nowhere (or its `eoi-not-forwarded`)
    merged: list[tuple[int, str, str]] = field(default_factory=list)  # (seq, actor, kind)


@dataclass
class Span:
    kind: str  # line, remote-irr, irr, isr, request
    lane: int
    actor: str  # whose signal: device / ioapic / vcpuN
    name: str  # e.g. "pin 5", "0x40", "SCAN_IOAPIC"
    key: tuple[Any, ...]
    start: int | None  # row index; None: set before the window
    end: int | None  # row index; None: still set at the end
    stuck: bool = False  # a finding says it will never clear


@dataclass
class Arrow:
    src: int  # row index of the cause
    dst: int  # row index of the effect


@dataclass
class Mark:
    row: int | None  # None: before the first row (an empty window)
    lane: int
    kind: str
    text: str


@dataclass
class Timeline:
    rec: Recording
    lanes: list[Lane]
    rows: list[Row]
    spans: list[Span]
    arrows: list[Arrow]
    marks: list[Mark]
    _seqs: list[int] = field(default_factory=list, repr=False)

    def row_of_seq(self, seq: int) -> int | None:
        """The last row with seq <= `seq` (findings name a seq; it may be a step's end)."""
        if len(self._seqs) != len(self.rows):  # rows are only ever appended
            self._seqs = [r.seq for r in self.rows]
        i = bisect.bisect_right(self._seqs, seq)
        return i - 1 if i else None


def vec(v: Any) -> str:
    return f"{v:#04x}" if isinstance(v, int) else str(v)


def event_label(kind: str, f: dict[str, Any], lost: bool = True) -> str:
    """A short text for an event, as a kernel engineer would say it."""
    pin = f.get("pin")
    if kind == "line":
        return f"line pin {pin} {'↑ 1' if f.get('level') else '↓ 0'}"
    if kind == "irq-line":
        return f"irq gsi {f.get('gsi')} {'↑ 1' if f.get('level') else '↓ 0'}"
    if kind == "deliver":
        return f"deliver pin {pin} v{vec(f.get('vector'))} → {f.get('dest')}"
    if kind == "msi":
        return f"msi v{vec(f.get('vector'))} → dest {f.get('dest')}"
    if kind == "accepted":
        return f"IRR += {vec(f.get('vector'))}" + (" (PIR)" if f.get("via") == "pir" else "")
    if kind == "ack":
        return f"ack {vec(f.get('vector'))} → ISR"
    if kind in ("eoi", "auto-eoi"):
        name = "EOI" if kind == "eoi" else "auto-EOI"
        path = f.get("path")
        return f"{name} {vec(f.get('vector'))}" + (f" ({path})" if path else "")
    if kind in LOST_KINDS:
        what = "LOST" if lost else "not forwarded"
        return f"EOI {vec(f.get('vector'))} {what}: {f.get('reason', kind)}"
    if kind == "request":
        return f"req {f.get('request')}"
    if kind == "enter":
        reqs = f.get("requests") or ()
        return "enter" + (f" [{', '.join(str(r) for r in reqs)}]" if reqs else "")
    if kind == "scan":
        return f"scan handled={_vecs(f.get('handled'))}"
    if kind == "eoi-exitmap-loaded":
        return f"exitmap {_vecs(f.get('vectors'))}"
    if kind == "exit-ioapic-eoi":
        return f"EXIT_IOAPIC_EOI {vec(f.get('vector'))}"
    if kind == "remote-irr-cleared":
        return f"Remote IRR pin {pin} cleared"
    if kind == "rte-write":
        return f"RTE pin {pin} {f.get('half')} = {_hex(f.get('value'))}"
    if kind == "ioapic-mmio":
        return f"mmio {f.get('op')} {_hex(f.get('offset'))} = {_hex(f.get('value'))}"
    if kind in ("blocked", "coalesced", "dropped"):
        return f"pin {pin} {kind}: {f.get('reason')}"
    if kind == "irr-cleared":
        return f"IOAPIC IRR pin {pin} cleared"
    parts = [f"{k}={_hex(v) if k in ('value', 'entry') else v}" for k, v in f.items()]
    return " ".join([kind, *parts])


def _hex(v: Any) -> str:
    return f"{v:#x}" if isinstance(v, int) and not isinstance(v, bool) else str(v)


def _vecs(v: Any) -> str:
    if isinstance(v, list):
        return "{" + ",".join(vec(x) for x in v) + "}"
    return str(v)


def _ranges(nums: list[int]) -> str:
    out: list[str] = []
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}–{nums[j]}")
        i = j + 1
    return ",".join(out)


def _level_eoi(rows: list[Row], i: int | None) -> bool:
    """The EOI at row i retired a level-triggered vector (an edge EOI need not go anywhere)."""
    return i is not None and bool(rows[i].fields.get("level"))


def _empty_ack(kind: str, f: dict[str, Any]) -> bool:
    """An ack that found nothing to take (kvm_cpu_get_interrupt returned -1)."""
    return kind == "ack" and f.get("vector") is None


def _merged_label(row: Row) -> str:
    vcpus = sorted({n for _, a, _ in row.merged if (n := _vcpu_index(a)) is not None})
    kinds: dict[str, int] = {}
    for _, _, k in row.merged:
        kinds[k] = kinds.get(k, 0) + 1
    who = f"vcpu{_ranges(vcpus)}" if vcpus else "…"
    return f"{who}: " + " ".join(f"{k}×{c}" if c > 1 else k for k, c in kinds.items())


def _vcpu_index(actor: str) -> int | None:
    if actor.startswith("vcpu") and actor[4:].isdigit():
        return int(actor[4:])
    return None


def build_lanes(rec: Recording) -> tuple[list[Lane], dict[str, int]]:
    """device, IOAPIC, VMM/KVM, then the vCPUs: each one its own lane up to GROUP_VCPUS_OVER;
    beyond, the busy ones (interrupt traffic, a finding, a span) up to MAX_VCPU_LANES and one
    lane for the rest, titled with their numbers."""
    actors = {e["actor"] for e in rec.events}
    busy: set[int] = set()
    for e in rec.events:
        n = _vcpu_index(e["actor"])
        if n is not None and e["kind"] in BUSY_KINDS and not _empty_ack(e["kind"], e["fields"]):
            busy.add(n)
    for f in rec.findings:
        if isinstance(f.get("vcpu"), int):
            busy.add(f["vcpu"])
    if rec.end is not None:
        busy.update(n for n, v in rec.end.isr.items() if v)
        busy.update(n for n, v in rec.end.irr.items() if v)
    lanes = [Lane("device", "device / pins", "device", ["device"]),
             Lane("ioapic", "IOAPIC", "ioapic", ["ioapic"]),
             Lane("vmm", "VMM / KVM", "vmm", list(VMM_ACTORS))]
    index = {"device": 0, "ioapic": 1, "vmm": 2, "kvm": 2, "clock": 2}
    all_vcpus = sorted(set(range(rec.vcpus)) | {
        n for a in actors if (n := _vcpu_index(a)) is not None})
    if len(all_vcpus) <= GROUP_VCPUS_OVER:
        own = all_vcpus
    else:
        own = sorted(busy)[:MAX_VCPU_LANES] or all_vcpus[:1]
    for n in own:
        index[f"vcpu{n}"] = len(lanes)
        lanes.append(Lane(f"vcpu{n}", f"vCPU {n}", "vcpu", [f"vcpu{n}"]))
    rest = [n for n in all_vcpus if n not in own]
    if rest:
        group = Lane("vcpus-other", f"vCPUs {_ranges(rest)}", "group",
                     [f"vcpu{n}" for n in rest],
                     subtitle=f"{len(rest)} quiet vCPUs (scans, requests)")
        for n in rest:
            index[f"vcpu{n}"] = len(lanes)
        lanes.append(group)
    for a in sorted(actors):
        if a not in index:
            index[a] = len(lanes)
            lanes.append(Lane(a, a, "other", [a]))
    return lanes, index


class _Replay:
    def __init__(self, tl: Timeline, lane_of: dict[str, int]) -> None:
        self.tl = tl
        self.lane_of = lane_of
        self.open: dict[tuple[Any, ...], Span] = {}
        self.touched: set[tuple[Any, ...]] = set()

    def set(self, key: tuple[Any, ...], kind: str, actor: str, name: str, row: int) -> None:
        self.touched.add(key)
        if key not in self.open:
            span = Span(kind, self.lane_of.get(actor, 0), actor, name, key, row, None)
            self.open[key] = span
            self.tl.spans.append(span)

    def clear(self, key: tuple[Any, ...], kind: str, actor: str, name: str, row: int) -> None:
        span = self.open.pop(key, None)
        if span is None and key not in self.touched and not self.tl.rec.complete:
            # Cleared without a set in the window: it was set before the window.
            span = Span(kind, self.lane_of.get(actor, 0), actor, name, key, None, row)
            self.tl.spans.append(span)
        elif span is not None:
            span.end = row
        self.touched.add(key)


def build(rec: Recording) -> Timeline:
    lanes, lane_of = build_lanes(rec)
    tl = Timeline(rec, lanes, [], [], [], [])
    step_of: dict[int, int] = {}
    for s in rec.steps:
        for q in range(s.first_seq, s.last_seq + 1):
            step_of[q] = s.index
    row_of: dict[int, int] = {}
    rp = _Replay(tl, lane_of)
    group = next((i for i, la in enumerate(lanes) if la.kind == "group"), None)
    enters: dict[int, str] = {}  # seq of an enter -> its vCPU
    root: dict[int, int | None] = {}  # seq -> seq of its chain's root
    for e in rec.events:
        seq, actor, kind, f = int(e["seq"]), str(e["actor"]), str(e["kind"]), e["fields"]
        cause = e.get("cause")
        lane = lane_of.get(actor, 0)
        root[seq] = root.get(cause, cause) if cause is not None else seq
        quiet = lanes[lane].kind == "group" or _empty_ack(kind, f)
        prev = tl.rows[-1] if tl.rows else None
        if quiet and prev is not None and prev.merged and prev.step == step_of.get(seq):
            # Housekeeping of quiet vCPUs (and acks that found nothing) in a row: one row.
            prev.merged.append((seq, actor, kind))  # labelled after the loop
            i = len(tl.rows) - 1
        else:
            lost = kind in LOST_KINDS and (
                kind == "eoi-exit-dropped"
                or (cause is not None and _level_eoi(tl.rows, row_of.get(cause))))
            row = Row(seq, actor, kind, f, cause, lane, event_label(kind, f, lost),
                      step_of.get(seq), lost=lost)
            if quiet:
                row.lane = group if group is not None else lane
                row.merged.append((seq, actor, kind))
            tl.rows.append(row)
            i = len(tl.rows) - 1
        row_of[seq] = i
        if cause is not None and cause in row_of and row_of[cause] != i:
            arrow = Arrow(row_of[cause], i)
            if arrow not in tl.arrows[-8:]:
                tl.arrows.append(arrow)
            if tl.rows[i].lost:
                tl.rows[row_of[cause]].lost = True
        n = _vcpu_index(actor)
        v = f.get("vector")
        line_pin = f.get("pin") if kind == "line" else f.get("gsi") if kind == "irq-line" \
            else None
        if isinstance(line_pin, int) and line_pin < 24:
            change = rp.set if f.get("level") else rp.clear
            change(("line", line_pin), "line", "device", f"pin {line_pin}", i)
        elif kind == "deliver" and f.get("remote_irr_set"):
            pin = f["pin"]
            rp.set(("remote-irr", pin), "remote-irr", "ioapic", f"pin {pin}", i)
        elif kind == "remote-irr-cleared":
            pin = f["pin"]
            rp.clear(("remote-irr", pin), "remote-irr", "ioapic", f"pin {pin}", i)
        elif kind == "rte-write" and isinstance(f.get("entry"), int):
            pin = f["pin"]
            if not f["entry"] & RIRR_BIT and ("remote-irr", pin) in rp.open:
                rp.clear(("remote-irr", pin), "remote-irr", "ioapic", f"pin {pin}", i)
        elif n is not None and kind == "accepted" and isinstance(v, int):
            rp.set(("irr", n, v), "irr", actor, vec(v), i)
        elif n is not None and kind == "ack" and isinstance(v, int):
            rp.clear(("irr", n, v), "irr", actor, vec(v), i)
            rp.set(("isr", n, v), "isr", actor, vec(v), i)
        elif n is not None and kind in ("eoi", "auto-eoi") and isinstance(v, int):
            rp.clear(("isr", n, v), "isr", actor, vec(v), i)
        elif n is not None and kind == "enter":
            enters[seq] = actor
            for key in [k for k in rp.open if k[0] == "request" and k[1] == n]:
                rp.clear(key, "request", actor, str(key[2]), i)
        elif n is not None and kind in CONSUMES:
            name = CONSUMES[kind]
            rp.clear(("request", n, name), "request", actor, name, i)
        elif n is not None and kind == "request" and lanes[lane].kind != "group":
            name = str(f.get("request"))
            r = root[seq]
            if r is None or enters.get(r) != actor:  # not consumed by the enter that raised it
                rp.set(("request", n, name), "request", actor, name, i)
    for row in tl.rows:
        if row.merged:
            row.label = _merged_label(row)
    _reconcile(tl, rp)
    _mark(tl, rp)
    return tl


def _reconcile(tl: Timeline, rp: _Replay) -> None:
    """Hold the open spans to the end state, when the recording has it."""
    end = tl.rec.end
    if end is None:
        return
    last = len(tl.rows) - 1 if tl.rows else None
    want: dict[tuple[Any, ...], tuple[str, str, str]] = {}
    for pin in end.remote_irr:
        want[("remote-irr", pin)] = ("remote-irr", "ioapic", f"pin {pin}")
    for n, vs in end.irr.items():
        for v in vs:
            want[("irr", n, v)] = ("irr", f"vcpu{n}", vec(v))
    for n, vs in end.isr.items():
        for v in vs:
            want[("isr", n, v)] = ("isr", f"vcpu{n}", vec(v))
    for n, names in end.requests.items():
        for name in names:
            want[("request", n, name)] = ("request", f"vcpu{n}", name)
    for key, span in list(rp.open.items()):
        if key not in want and key[0] != "line" and last is not None:
            span.end = last  # the state says it is clear: closed by an event not modelled here
            del rp.open[key]
    for key, (kind, actor, name) in want.items():
        # A whole log saw everything that was set (a request raised without an event, e.g.
        # KVM_REQ_EVENT, is not drawn); a window may have missed the set.
        if key not in rp.open and key not in rp.touched and not tl.rec.complete:
            span = Span(kind, rp.lane_of.get(actor, 0), actor, name, key, None, None)
            tl.spans.append(span)
            rp.open[key] = span


def _mark(tl: Timeline, rp: _Replay) -> None:
    ioapic = 1
    for f in tl.rec.findings:
        row = tl.row_of_seq(int(f.get("seq", tl.rec.last_seq)))
        lane = ioapic
        if isinstance(f.get("vcpu"), int):
            lane = rp.lane_of.get(f"vcpu{f['vcpu']}", ioapic)
        tl.marks.append(Mark(row, lane, str(f["kind"]), str(f.get("detail", f["kind"]))))
        if f["kind"] == "remote-irr-stuck":
            span = rp.open.get(("remote-irr", f.get("pin")))
            if span is not None:
                span.stuck = True
        elif f["kind"] in ("eoi-not-forwarded", "eoi-will-be-lost"):
            for pin in f.get("pins") or ():
                span = rp.open.get(("remote-irr", pin))
                if span is not None:
                    span.stuck = True
