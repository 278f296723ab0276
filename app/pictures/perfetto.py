"""Chrome trace-event JSON (opened by Perfetto's UI and chrome://tracing).

One process per timeline (a VM, or each variant of a scenario run); in it a thread track per
actor (device, ioapic, vmm, kvm, clock, vcpuN) and one per signal (e.g. "ioapic · Remote IRR
pin 5", "vcpu0 · ISR 0x40"), so that span slices never overlap on a track.

Time is the event seq: event n is at ts = n µs. Each event is a complete slice (`X`) of
duration 1 on its actor's track: flow arrows bind to slices, and a slice per event gives every
cause (`s` at the cause, `f` with "bp":"e" at the effect, one id per cause link) something to
attach to. Remote IRR / IRR / ISR / pending-request spans are `X` slices on their own tracks;
findings and lost EOIs are instants (`i`, thread scope); counters (`C`) give each vCPU's IRR
and ISR population and the number of pins with Remote IRR set.
"""

from __future__ import annotations

import json
from typing import Any

from .timeline import Span, Timeline, vec

ACTOR_TIDS = {"device": 1, "ioapic": 2, "vmm": 3, "kvm": 4, "clock": 5}
VCPU_TID_BASE = 100
SPAN_TID_BASE = 100_000
FLOW_IDS_PER_PROCESS = 1 << 32


def _actor_tid(actor: str, others: dict[str, int]) -> int:
    if actor in ACTOR_TIDS:
        return ACTOR_TIDS[actor]
    if actor.startswith("vcpu") and actor[4:].isdigit():
        return VCPU_TID_BASE + int(actor[4:])
    if actor not in others:
        others[actor] = 10 + len(others)
    return others[actor]


def _span_title(sp: Span) -> str:
    kind = {"line": "line", "remote-irr": "Remote IRR", "irr": "IRR", "isr": "ISR",
            "request": "request"}[sp.kind]
    return f"{sp.actor} · {kind} {sp.name}"


def trace_events(timelines: list[Timeline]) -> dict[str, Any]:
    """The trace as a JSON-compatible dict ({"traceEvents": [...], ...})."""
    out: list[dict[str, Any]] = []
    for p_i, tl in enumerate(timelines):
        _process(out, tl, p_i + 1)
    return {"traceEvents": out,
            "otherData": {"generator": "irqlab", "time": "1 µs = 1 event seq"}}


def _meta(out: list[dict[str, Any]], pid: int, tid: int | None, name: str, value: Any) -> None:
    ev: dict[str, Any] = {"ph": "M", "pid": pid, "name": name, "args": {}}
    if tid is not None:
        ev["tid"] = tid
    ev["args"]["sort_index" if name.endswith("sort_index") else "name"] = value
    out.append(ev)


def _process(out: list[dict[str, Any]], tl: Timeline, pid: int) -> None:
    rec = tl.rec
    _meta(out, pid, None, "process_name", rec.title)
    _meta(out, pid, None, "process_sort_index", pid)
    others: dict[str, int] = {}
    named: set[int] = set()

    def thread(tid: int, name: str, sort: int) -> None:
        if tid not in named:
            named.add(tid)
            _meta(out, pid, tid, "thread_name", name)
            _meta(out, pid, tid, "thread_sort_index", sort)

    seq_tid = {int(e["seq"]): _actor_tid(str(e["actor"]), others) for e in rec.events}
    # Events: one slice each, on the actor's track.
    for e in rec.events:
        seq, actor = int(e["seq"]), str(e["actor"])
        tid = seq_tid[seq]
        thread(tid, actor, tid)
        args = {"seq": seq, **{k: _jsonable(v) for k, v in e["fields"].items()}}
        if e.get("cause") is not None:
            args["cause"] = e["cause"]
        out.append({"ph": "X", "name": str(e["kind"]), "cat": _category(actor), "pid": pid,
                    "tid": tid, "ts": seq, "dur": 1, "args": args})
    # Causes: a flow from the cause's slice to the effect's.
    base = pid * FLOW_IDS_PER_PROCESS
    for e in rec.events:
        cause = e.get("cause")
        if cause is None or cause not in seq_tid:
            continue
        seq = int(e["seq"])
        fid = base + seq  # each event has at most one cause: unique per link
        out.append({"ph": "s", "name": "cause", "cat": "cause", "id": fid, "pid": pid,
                    "tid": seq_tid[cause], "ts": cause})
        out.append({"ph": "f", "bp": "e", "name": "cause", "cat": "cause", "id": fid,
                    "pid": pid, "tid": seq_tid[seq], "ts": seq})
    # Spans: slices on one track per signal.
    first = rec.first_seq - 1 if rec.events else 0
    last = rec.last_seq + 1
    span_tids: dict[tuple[Any, ...], int] = {}
    for sp in tl.spans:
        tid = span_tids.setdefault(sp.key, SPAN_TID_BASE + len(span_tids))
        owner = _actor_tid(sp.actor, others)
        thread(tid, _span_title(sp), owner * 1000 + tid - SPAN_TID_BASE + 1)
        start = tl.rows[sp.start].seq if sp.start is not None else first
        end = tl.rows[sp.end].seq if sp.end is not None else last
        name = _span_title(sp).split(" · ", 1)[1]
        if sp.stuck:
            name += " (never cleared)"
        out.append({"ph": "X", "name": name, "cat": sp.kind, "pid": pid, "tid": tid,
                    "ts": start, "dur": max(0, end - start),
                    "args": {"set_before_window": sp.start is None,
                             "still_set_at_end": sp.end is None, "stuck": sp.stuck}})
    # Findings and lost EOIs: instants.
    for m in tl.marks:
        seq = tl.rows[m.row].seq if m.row is not None else first
        lane = tl.lanes[m.lane]
        tid = _actor_tid(lane.actors[0], others) if lane.actors else 2
        thread(tid, lane.actors[0] if lane.actors else "ioapic", tid)
        out.append({"ph": "i", "s": "t", "name": f"finding: {m.kind}", "cat": "finding",
                    "pid": pid, "tid": tid, "ts": seq, "args": {"detail": m.text}})
    for row in tl.rows:
        if row.lost and row.kind in ("eoi-not-forwarded", "eoi-exit-dropped",
                                     "eoi-not-broadcast"):
            out.append({"ph": "i", "s": "t", "name": f"EOI {vec(row.fields.get('vector'))} lost",
                        "cat": "finding", "pid": pid, "tid": seq_tid[row.seq], "ts": row.seq,
                        "args": {"reason": row.fields.get("reason")}})
    _counters(out, tl, pid, first)


def _counters(out: list[dict[str, Any]], tl: Timeline, pid: int, first: int) -> None:
    """IRR/ISR population per vCPU and the pins with Remote IRR set, at each change."""
    changes: list[tuple[int, int, Span]] = []  # (ts, +1/-1, span)
    for sp in tl.spans:
        if sp.kind not in ("irr", "isr", "remote-irr"):
            continue
        changes.append((tl.rows[sp.start].seq if sp.start is not None else first, 1, sp))
        if sp.end is not None:
            changes.append((tl.rows[sp.end].seq, -1, sp))
    changes.sort(key=lambda c: (c[0], c[1]))
    counts: dict[str, dict[str, int]] = {}
    for ts, delta, sp in changes:
        name = "Remote IRR pins" if sp.kind == "remote-irr" else f"{sp.actor} IRR/ISR"
        series = counts.setdefault(name, {"IRR": 0, "ISR": 0} if sp.kind != "remote-irr"
                                   else {"pins": 0})
        series["pins" if sp.kind == "remote-irr" else sp.kind.upper()] += delta
        out.append({"ph": "C", "name": name, "pid": pid, "ts": ts, "args": dict(series)})


def _category(actor: str) -> str:
    return "vcpu" if actor.startswith("vcpu") else actor


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    return v


def dumps(timelines: list[Timeline]) -> str:
    return json.dumps(trace_events(timelines), separators=(",", ":"), ensure_ascii=False)
