"""Exploration on a Ray cluster (the optional `ray` extra; only `--ray` imports this).

Distributed breadth-first search (`bfs_on_ray`): the visited set is hash-partitioned over
`parts` Ray actors by fingerprint (`fp % parts`); each actor owns its partition's visited set,
parent links and frontier, and expands only the states it owns. The search is level-
synchronous, so the first violation found is at the smallest depth, as in process:

1. every actor expands its frontier (the states its partition accepted at the last level),
   checks terminal states' `finally` properties, and sends each successor to its owner in
   batches of `batch` states (Ray's guidance: thousands per call, not one); an actor waits
   for its own sends before it returns, which is the back-pressure;
2. the driver waits for all actors, then asks each to promote what it accepted (new
   fingerprints only; `always` properties checked on arrival) to its next frontier.

The counterexample is rebuilt from the parent links, owner by owner, then replayed from the
initial state by action name. Models are rebuilt in each actor from a `ModelFactory`; states
travel as `Model.encode` bytes.

Swarm search (`swarm_on_ray`): for state spaces past exhaustive reach, many randomized depth-
first searches (each its own seed, action order and depth bound, Spin's swarm idea) run as
tasks; the driver reports their union coverage and, for a violation, re-minimises it with the
in-process checker bounded by the violation's length. Its verdict is `violation` or `bounded`,
never `verified`.

Faults: an actor that dies mid-run (its process killed, its node lost) ends the run with
verdict `error` and the reason — never a verdict computed from a partial visited set.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from app.ray_cluster import connect

from .model_api import Action, Model, ModelFactory

__all__ = ["Budget", "DistributedResult", "bfs_on_ray", "connect", "swarm_on_ray"]

_ray: Any = ray  # Ray's API is only partly annotated


@dataclass(slots=True)
class DistributedResult:
    verdict: str  # violation | verified | bounded | error
    property: str | None = None
    counterexample: list[Action] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Budget:
    max_states: int | None = None
    max_depth: int | None = None
    max_seconds: float | None = None


# Message layout, kept to plain tuples so Ray serialises them cheaply:
# (fingerprint, parent fingerprint or -1, action name, encoded state)
Item = tuple[int, int, str, bytes]


class _Partition:
    """One partition of the visited set (run as a Ray actor)."""

    def __init__(self, factory: ModelFactory[Any], index: int, parts: int, batch: int) -> None:
        self.model: Model[Any] = factory()
        self.index, self.parts, self.batch = index, parts, batch
        self.parents: dict[int, tuple[int, str]] = {}
        self.frontier: list[bytes] = []
        self.inbox: list[Item] = []
        self.peers: list[Any] = []
        self.transitions = 0

    def set_peers(self, peers: list[Any]) -> None:
        self.peers = peers

    def accept(self, items: list[Item]) -> int:
        self.inbox.extend(items)
        return len(items)

    def promote(self) -> tuple[int, tuple[int, str] | None]:
        """Move this level's new states into the frontier; (new states, first violation
        among them as (fingerprint, property)) in a deterministic order."""
        fresh: list[bytes] = []
        violation: tuple[int, str] | None = None
        # Sorted by (state, parent, action): which parent a state keeps, and so the
        # counterexample, does not depend on the order the sends arrived in.
        for fp, parent, name, enc in sorted(self.inbox, key=lambda it: it[:3]):
            if fp in self.parents:
                continue
            self.parents[fp] = (parent, name)
            fresh.append(enc)
            if violation is None:
                prop = self.model.violation(self.model.decode(enc), False)
                if prop is not None:
                    violation = (fp, prop)
        self.inbox = []
        self.frontier = fresh
        return len(fresh), violation

    def expand(self) -> tuple[int, tuple[int, str] | None]:
        """Expand the frontier, send successors to their owners; (transitions, the terminal
        violation with the lowest fingerprint as (fingerprint, property))."""
        m = self.model
        out: list[list[Item]] = [[] for _ in range(self.parts)]
        sent: list[Any] = []
        violation: tuple[int, str] | None = None
        transitions = 0
        for enc in self.frontier:
            s = m.decode(enc)
            fp = m.fingerprint(s)
            acts = m.actions(s)
            if not acts and (violation is None or fp < violation[0]):
                # The lowest fingerprint, whatever the partitioning: deterministic.
                prop = m.violation(s, True)
                if prop is not None:
                    violation = (fp, prop)
            for a in acts:
                t = m.canonical(m.step(s, a))
                tfp = m.fingerprint(t)
                owner = tfp % self.parts
                out[owner].append((tfp, fp, a.name, m.encode(t)))
                transitions += 1
                if len(out[owner]) >= self.batch:
                    sent.append(self.peers[owner].accept.remote(out[owner]))
                    out[owner] = []
        for owner, items in enumerate(out):
            if items:
                sent.append(self.peers[owner].accept.remote(items))
        _ray.get(sent)  # back-pressure: this level's sends are delivered before we return
        self.frontier = []
        self.transitions += transitions
        return transitions, violation

    def parent(self, fp: int) -> tuple[int, str] | None:
        return self.parents.get(fp)

    def size(self) -> int:
        return len(self.parents)


def _replay(model: Model[Any], names: list[str]) -> list[Action]:
    s = model.initial()
    out = []
    for name in names:
        match = next((a for a in model.actions(s) if a.name == name), None)
        if match is None:
            raise RuntimeError(f"counterexample step {name!r} is not enabled on replay")
        out.append(match)
        s = model.canonical(model.step(s, match))
    return out


def bfs_on_ray(factory: ModelFactory[Any], parts: int = 2, batch: int = 2000,
               budget: Budget = Budget(),
               progress: Any = None) -> DistributedResult:
    """Level-synchronous distributed BFS over `parts` partition actors (see the module)."""
    started = time.monotonic()
    model = factory()
    remote_cls = _ray.remote(_Partition)
    # Threaded actors: a partition blocked on its own sends must still accept its peers'.
    actors = [remote_cls.options(max_concurrency=4).remote(factory, i, parts, batch)
              for i in range(parts)]
    try:
        _ray.get([a.set_peers.remote(actors) for a in actors])
        startup = time.monotonic() - started  # actor processes spawned and models built
        started = time.monotonic()
        init = model.canonical(model.initial())
        ifp = model.fingerprint(init)
        _ray.get(actors[ifp % parts].accept.remote([(ifp, -1, "", model.encode(init))]))
        states = transitions = depth = 0
        violation: tuple[int, str] | None = None
        verdict = "verified"
        per_worker = [0] * parts
        while True:
            promoted = _ray.get([a.promote.remote() for a in actors])
            new = 0
            for i, (n, v) in enumerate(promoted):
                new += n
                per_worker[i] += n
                if v is not None and (violation is None or v[0] < violation[0]):
                    violation = v
            states += new
            if progress is not None:
                progress({"states": states, "frontier": new, "depth": depth,
                          "per_worker": list(per_worker),
                          "seconds": time.monotonic() - started})
            if violation is not None or new == 0:
                break
            if (budget.max_states is not None and states >= budget.max_states) \
                    or (budget.max_depth is not None and depth >= budget.max_depth) \
                    or (budget.max_seconds is not None \
                    and time.monotonic() - started >= budget.max_seconds):
                verdict = "bounded"
                break
            expanded = _ray.get([a.expand.remote() for a in actors])
            for n, v in expanded:
                transitions += n
                if v is not None and (violation is None or v[0] < violation[0]):
                    violation = v
            if violation is not None:  # a terminal state at this depth violates `finally`
                break
            depth += 1
        seconds = time.monotonic() - started
        stats: dict[str, Any] = {
            "states": states, "transitions": transitions, "max_depth": depth,
            "seconds": round(seconds, 3), "states_per_second": round(states / max(seconds, 1e-9)),
            "workers": parts, "states_per_worker": per_worker,
            "startup_seconds": round(startup, 3)}
        if violation is None:
            return DistributedResult(verdict, stats=stats)
        names: list[str] = []
        fp = violation[0]
        while True:
            link = _ray.get(actors[fp % parts].parent.remote(fp))
            assert link is not None
            parent, name = link
            if parent == -1:
                break
            names.append(name)
            fp = parent
        names.reverse()
        return DistributedResult("violation", violation[1], _replay(model, names), stats)
    except (RayActorError, RayTaskError) as exc:
        return DistributedResult(
            "error", error=f"a partition actor failed mid-run, so no verdict: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
            stats={"seconds": round(time.monotonic() - started, 3), "workers": parts})
    finally:
        for a in actors:
            _ray.kill(a)


def _random_dfs(factory: ModelFactory[Any], seed: int, max_states: int,
                max_depth: int) -> tuple[list[int], list[str] | None, str | None]:
    """One swarm member: a depth-first search with its own random action order and depth
    bound. Returns (fingerprints seen, counterexample action names, property)."""
    rng = random.Random(seed)
    model = factory()
    bound = rng.randint(max(1, max_depth // 2), max_depth)
    init = model.canonical(model.initial())
    seen = {model.fingerprint(init)}
    stack: deque[tuple[Any, list[str]]] = deque([(init, [])])
    prop = model.violation(init, False)
    if prop is not None:
        return list(seen), [], prop
    while stack and len(seen) < max_states:
        s, path = stack.pop()
        acts = model.actions(s)
        if not acts:
            prop = model.violation(s, True)
            if prop is not None:
                return list(seen), path, prop
            continue
        if len(path) >= bound:
            continue
        rng.shuffle(acts)
        for a in acts:
            t = model.canonical(model.step(s, a))
            fp = model.fingerprint(t)
            if fp in seen:
                continue
            seen.add(fp)
            prop = model.violation(t, False)
            if prop is not None:
                return list(seen), [*path, a.name], prop
            stack.append((t, [*path, a.name]))
    return list(seen), None, None


def swarm_on_ray(factory: ModelFactory[Any], members: int = 8, seed: int = 0,
                 max_states_each: int = 50_000, max_depth: int = 200) -> DistributedResult:
    """Swarm verification (see the module): never `verified`."""
    started = time.monotonic()
    task = _ray.remote(_random_dfs)
    refs = [task.remote(factory, seed * 1_000_003 + i, max_states_each, max_depth)
            for i in range(members)]
    union: set[int] = set()
    found: list[tuple[list[str], str]] = []
    per_member = []
    for fps, path, prop in _ray.get(refs):
        union.update(fps)
        per_member.append(len(fps))
        if path is not None and prop is not None:
            found.append((path, prop))
    stats: dict[str, Any] = {"members": members, "states_union": len(union),
                             "states_per_member": per_member}
    if not found:
        stats["seconds"] = round(time.monotonic() - started, 3)
        return DistributedResult("bounded", stats=stats)
    # Re-minimise: the in-process checker, bounded by the longest violation found, gives the
    # shortest one (breadth-first), which may be another than the swarm's.
    from .checker import CheckOptions, check

    model = factory()
    longest = max(len(p) for p, _ in found)
    r = check(model, CheckOptions(max_depth=longest))
    if r.verdict == "violation" and r.property is not None:
        trace, prop = list(r.counterexample), r.property
    else:  # cannot happen for a real violation; keep the swarm's shortest then
        names, prop = min(found, key=lambda f: len(f[0]))
        trace = _replay(model, names)
    stats.update(found_lengths=sorted(len(p) for p, _ in found), minimised_length=len(trace),
                 seconds=round(time.monotonic() - started, 3))
    return DistributedResult("violation", prop, trace, stats)
