"""A plain breadth-first search over `model_api.Model`: the test oracle and stand-in for the
generic checker (app/explore/checker.py) on this branch.

No reductions, one process: every enabled action of every reached state is taken, states are
deduplicated by fingerprint, and the first violating state found (breadth-first, so along a
shortest path) ends the search. Used by the tests as the reference the reduced checker must
agree with, and by `run.check_model` until the real checker is wired in.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .model_api import Action, Model


@dataclass
class BfsResult:
    verdict: str  # "violation" | "verified" | "bounded"
    property: str | None
    trace: list[Action]  # the actions from the initial state to the violating one
    trace_states: list[Any]  # the states along it, initial first
    stats: dict[str, Any] = field(default_factory=dict)
    terminal_fingerprints: set[int] = field(default_factory=set)


def bfs(model: Model[Any], *args: Any, **kw: Any) -> BfsResult:
    """Breadth-first search; the cyclic garbage collector is paused meanwhile (states hold
    no cycles, and its scans of a growing frontier cost ~40 % of the search)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _bfs(model, *args, **kw)
    finally:
        if enabled:
            gc.enable()


def _bfs(model: Model[Any], max_states: int = 1_000_000, max_seconds: float = 600.0,
        max_depth: int = 10_000,
        progress: Callable[[dict[str, Any]], None] | None = None,
        progress_every: float = 0.25) -> BfsResult:
    t0 = time.monotonic()
    init = model.initial()
    # With symmetry, states are deduplicated by their representative's fingerprint but the
    # frontier keeps the concrete states, so a trace's actions replay from the initial state.
    fp0 = model.fingerprint(model.canonical(init))
    # Only fingerprints and parent links are kept: a trace is rebuilt by replaying its
    # actions from the initial state (the model is deterministic).
    parent: dict[int, tuple[int, Action | None]] = {fp0: (fp0, None)}
    frontier: deque[tuple[Any, int, int]] = deque([(init, fp0, 0)])
    transitions = 0
    depth_seen = 0
    terminals: set[int] = set()
    bounded = False
    next_report = t0 + progress_every

    def stats() -> dict[str, Any]:
        secs = time.monotonic() - t0
        return {"states": len(parent), "transitions": transitions, "max_depth": depth_seen,
                "frontier": len(frontier), "seconds": round(secs, 3),
                "states_per_s": round(len(parent) / secs) if secs > 0 else 0}

    def trace_to(fp: int) -> tuple[list[Action], list[Any]]:
        actions: list[Action] = []
        fps = [fp]
        while True:
            prev, act = parent[fps[-1]]
            if act is None:
                break
            actions.append(act)
            fps.append(prev)
        actions.reverse()
        states = [init]
        for a in actions:
            states.append(model.step(states[-1], a))
        return actions, states

    while frontier:
        state, fp, depth = frontier.popleft()
        acts = model.actions(state)
        bad = model.violation(state, not acts)
        if bad is not None:
            trace, states = trace_to(fp)
            return BfsResult("violation", bad, trace, states, stats(), terminals)
        if not acts:
            terminals.add(fp)
            continue
        if depth >= max_depth:
            bounded = True
            continue
        for a in acts:
            nxt = model.step(state, a)
            transitions += 1
            nfp = model.fingerprint(model.canonical(nxt))
            if nfp in parent:
                continue
            if len(parent) >= max_states or time.monotonic() - t0 > max_seconds:
                bounded = True
                frontier.clear()
                break
            parent[nfp] = (fp, a)
            depth_seen = max(depth_seen, depth + 1)
            frontier.append((nxt, nfp, depth + 1))
        if progress is not None and time.monotonic() >= next_report:
            progress(stats())
            next_report = time.monotonic() + progress_every
    return BfsResult("bounded" if bounded else "verified", None, [], [], stats(), terminals)
