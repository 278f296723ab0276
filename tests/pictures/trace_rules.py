"""Test helper: the Chrome trace-event format's rules, checked on a trace (the JSON object
form). Returns the problems found (empty: the trace keeps the rules)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

REQUIRED = {
    "X": ("name", "ts", "dur", "pid", "tid"),
    "B": ("name", "ts", "pid", "tid"),
    "E": ("ts", "pid", "tid"),
    "i": ("name", "ts", "pid", "s"),
    "C": ("name", "ts", "pid", "args"),
    "s": ("name", "id", "ts", "pid", "tid"),
    "t": ("name", "id", "ts", "pid", "tid"),
    "f": ("name", "id", "ts", "pid", "tid"),
    "M": ("name", "pid", "args"),
}
METADATA = {"process_name": "name", "thread_name": "name", "process_sort_index": "sort_index",
            "thread_sort_index": "sort_index", "process_labels": "labels"}


def check_trace(trace: Any) -> list[str]:
    problems: list[str] = []
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        return ["not an object with a traceEvents list"]
    events: list[dict[str, Any]] = trace["traceEvents"]
    process_names: set[int] = set()
    thread_names: set[tuple[int, int]] = set()
    used_threads: set[tuple[int, int]] = set()
    used_pids: set[int] = set()
    slices: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    stacks: dict[tuple[int, int], list[float]] = defaultdict(list)
    flows: dict[Any, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for n, ev in enumerate(events):
        ph = ev.get("ph")
        if ph not in REQUIRED:
            problems.append(f"event {n}: unknown phase {ph!r}")
            continue
        for key in REQUIRED[ph]:
            if key not in ev:
                problems.append(f"event {n} ({ph}): missing {key!r}")
        if "ts" in ev and not isinstance(ev["ts"], int | float):
            problems.append(f"event {n}: ts is not a number")
        pid, tid = ev.get("pid"), ev.get("tid")
        if ph == "M":
            name = ev.get("name")
            if name not in METADATA:
                problems.append(f"event {n}: unknown metadata {name!r}")
            elif METADATA[name] not in ev.get("args", {}):
                problems.append(f"event {n}: {name} without args.{METADATA[name]}")
            if name == "process_name":
                process_names.add(pid)
            elif name == "thread_name":
                if tid is None:
                    problems.append(f"event {n}: thread_name without tid")
                thread_names.add((pid, tid))
            continue
        used_pids.add(pid)
        if tid is not None and ph != "C":
            used_threads.add((pid, tid))
        if ph == "X":
            dur = ev.get("dur")
            if not isinstance(dur, int | float) or dur < 0:
                problems.append(f"event {n}: X with dur {dur!r}")
            else:
                slices[(pid, tid)].append((ev["ts"], ev["ts"] + dur))
        elif ph == "B":
            stacks[(pid, tid)].append(ev["ts"])
        elif ph == "E":
            if not stacks[(pid, tid)]:
                problems.append(f"event {n}: E without B on {(pid, tid)}")
            elif stacks[(pid, tid)].pop() > ev["ts"]:
                problems.append(f"event {n}: E before its B")
        elif ph == "i":
            if ev.get("s") not in ("g", "p", "t"):
                problems.append(f"event {n}: instant scope {ev.get('s')!r}")
        elif ph == "C":
            if not ev["args"] or not all(isinstance(v, int | float)
                                         for v in ev["args"].values()):
                problems.append(f"event {n}: counter args must be numbers")
        elif ph in ("s", "t", "f"):
            if ph == "s" and "bp" in ev:
                problems.append(f"event {n}: bp on a flow start")
            if ph == "f" and ev.get("bp") not in (None, "e"):
                problems.append(f"event {n}: flow finish bp {ev.get('bp')!r}")
            flows[(ev.get("cat"), ev["id"])][ph].append(ev)
    for track, open_b in stacks.items():
        if open_b:
            problems.append(f"{track}: {len(open_b)} B without E")
    for pid in used_pids - process_names:
        problems.append(f"pid {pid}: no process_name")
    for track in used_threads - thread_names:
        problems.append(f"{track}: no thread_name")
    # Slices on one track nest or are disjoint (else a viewer moves them to overflow tracks).
    for track, spans in slices.items():
        spans.sort(key=lambda s: (s[0], -s[1]))
        stack: list[float] = []
        for start, end in spans:
            while stack and stack[-1] <= start:
                stack.pop()
            if stack and end > stack[-1]:
                problems.append(f"{track}: slice [{start}, {end}) overlaps one ending at "
                                f"{stack[-1]}")
                break
            stack.append(end)
    # Flows: one start and one finish per id, in order, each inside a slice of its thread.
    for fid, phases in flows.items():
        if len(phases["s"]) != 1 or len(phases["f"]) != 1:
            problems.append(f"flow {fid}: {len(phases['s'])} starts, {len(phases['f'])} "
                            "finishes")
            continue
        s, f = phases["s"][0], phases["f"][0]
        if f["ts"] < s["ts"]:
            problems.append(f"flow {fid}: finishes before it starts")
        for ev in (s, f):
            if not any(a <= ev["ts"] < b or a == b == ev["ts"]
                       for a, b in slices[(ev["pid"], ev["tid"])]):
                problems.append(f"flow {fid}: {ev['ph']} at {ev['ts']} binds to no slice")
    return problems
