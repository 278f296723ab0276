"""The search engine shared by one process and by workers: a partition of the state space
expanded level by level, and the loop that drives the levels and assembles the result.

`Partition` owns the states whose fingerprint falls in its share (all of them when it is alone):
its slice of the visited set, of the frontier and of the per-level parent arrays. `coordinate`
asks a `Levels` backend to expand each level (in this process, `InProcess`; in worker processes,
`app.explore.parallel`), applies the budgets, and rebuilds the counterexample. Why the search and
its reductions are sound: `app.explore.checker`'s docstring and docs/explorer-checker.md.
"""

from __future__ import annotations

import contextlib
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from app.explore.checker import (
    CheckOptions,
    CheckResult,
    CheckStats,
    Progress,
    Verdict,
    peak_rss_mib,
    plan,
    reductions_named,
    replay_indices,
    rss_mib,
)
from app.explore.model_api import Action, ActorFootprint, Model
from app.explore.reduction import EMPTY, child_sleep, persistent_indices
from app.explore.visited import M64, FingerprintSet

_CHECK_PERIOD = 0.02
_PRIME = 0xFFFFFFFB  # largest prime below 2**32: the partition does not reuse the table's bits


def owner(fp: int, workers: int) -> int:
    return fp % _PRIME % workers


@dataclass(slots=True)
class LevelReport:
    states_before: int  # states of levels <= this one owned by the worker
    states: int
    frontier_next: int
    found: tuple[str, int] | None
    bound: str | None
    depth_cut: bool
    transitions: int
    terminals: int
    sleep_skipped: int
    pruned: int
    reduced: int
    proviso: int
    sym_merged: int
    visited_bytes: int
    rss_mib: float
    peak_rss_mib: float
    cpu_seconds: float


class Outbox:
    """The successors owned by one peer, found in this level: columns in arrival order
    (fingerprints as `index`'s keys), the sleep sets intersected over a state's arrivals, and
    `askers`: per fingerprint, the reduced states here that wait to learn whether that state
    is old (the cycle proviso)."""

    __slots__ = ("acts", "askers", "index", "parents", "sleeps", "states")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        # New containers, not emptied ones: a shipped batch holds the old arrays until the
        # queue's feeder thread has pickled them.
        self.index: dict[int, int] = {}
        self.states: list[Any] = []
        self.sleeps: list[frozenset[str]] = []
        self.parents: array[int] = array("I")
        self.acts: array[int] = array("H")
        self.askers: dict[int, list[int]] = {}


class Partition:
    """One share of the search: all of it in one process, or one worker's partition."""

    def __init__(
        self,
        wid: int,
        n: int,
        model: Model[Any],
        opts: CheckOptions,
        inboxes: list[Any],
        cancel: Any,
        counters: Any,
        deadline: float | None,
        tick: Callable[[int, int, int, int], None] | None = None,
    ) -> None:
        self.wid, self.n, self.model, self.opts = wid, n, model, opts
        self.tick = tick  # (states, transitions, frontier left, depth) at every budget check
        self.track_owner = n > 1  # parents may live in another partition
        self.inboxes, self.cancel = inboxes, cancel
        self.counters, self.deadline = counters, deadline
        self.sleep, self.persistent, self.proviso, self.observed = plan(model, opts)
        self.footprints_of: Callable[[Any], dict[str, ActorFootprint] | None] | None = (
            getattr(model, "actor_footprints", None) if self.persistent else None
        )
        self.cpu0 = time.process_time()
        self.visited = FingerprintSet()
        self.frontier: list[Any] = []
        self.sleeps: list[frozenset[str]] = []
        self.par_w: list[array[int]] = [array("H", [0])]
        self.par_i: list[array[int]] = [array("I", [0])]
        self.acts: list[array[int]] = [array("H", [0])]
        self.terminal_fps: set[int] = set()
        self.transitions = self.terminals = 0
        self.sleep_skipped = self.pruned = self.reduced = self.sym_merged = 0
        self.proviso_full = 0
        self.stash: dict[str, list[tuple[int, Any]]] = {}
        self._new_level()
        init = model.initial()
        if opts.symmetry:
            init = model.canonical(init)
        f = model.fingerprint(init) & M64
        if owner(f, n) == wid:
            self.visited.add(f)
            self.frontier.append(init)
            self.sleeps.append(EMPTY)

    def _new_level(self) -> None:
        self.next_frontier: list[Any] = []
        self.next_sleeps: list[frozenset[str]] = []
        self.next_index: dict[int, int] = {}
        self.par_w_next: array[int] = array("H")
        self.par_i_next: array[int] = array("I")
        self.act_next: array[int] = array("H")
        # Successors owned by peers, deduplicated here (a state is usually reached along several
        # paths of one level), one Outbox per peer.
        self.outbox: list[Outbox] = [Outbox() for _ in range(self.n)]
        self.full: set[int] = set()  # states here that the proviso expands fully

    def _successor_fn(self) -> Callable[[int, Any, list[Action], Any, frozenset[str], bool], bool]:
        """successors(i, state, enabled, chosen, sleep set, ask): generate the successors of
        state i of this level by the actions `chosen`; False when max_states is reached. Built
        once per level so the hot loop reads closure variables, not attributes."""
        model, n, wid, sleep, symmetry = (
            self.model,
            self.n,
            self.wid,
            self.sleep,
            self.opts.symmetry,
        )
        step, fingerprint, canonical = model.step, model.fingerprint, model.canonical
        add, visited, outbox = self.visited.add, self.visited, self.outbox
        next_index, full = self.next_index, self.full
        next_frontier, next_sleeps = self.next_frontier, self.next_sleeps
        par_w, par_i, act = self.par_w_next.append, self.par_i_next.append, self.act_next.append
        track_owner = self.track_owner
        track_index = sleep or self.proviso  # same-level arrivals matter only for these
        share = -(-self.opts.max_states // n) if self.opts.max_states is not None else 0

        def successors(
            i: int, s: Any, enabled: list[Action], chosen: Any, z: frozenset[str], ask: bool
        ) -> bool:
            transitions = 0
            sleeping = [a for a in enabled if a.name in z] if z else []
            done: list[Action] = []
            for k in chosen:
                a = enabled[k]
                if z and a.name in z:
                    self.sleep_skipped += 1
                    continue
                succ = step(s, a)
                transitions += 1
                c = canonical(succ) if symmetry else succ
                f = fingerprint(c) & M64
                if sleep:
                    zs = child_sleep(sleeping, done, a) if sleeping or done else EMPTY
                    done.append(a)
                else:
                    zs = EMPTY
                if n > 1 and (o := f % _PRIME % n) != wid:  # owned by a peer: owner(f, n)
                    box = outbox[o]
                    j = box.index.get(f)
                    if j is None:
                        box.index[f] = len(box.states)
                        box.states.append(c)
                        box.sleeps.append(zs)
                        box.parents.append(i)
                        box.acts.append(k)
                        if ask:
                            box.askers[f] = [i]
                    else:
                        if box.sleeps[j]:
                            box.sleeps[j] = box.sleeps[j] & zs
                        if ask:
                            box.askers.setdefault(f, []).append(i)
                elif add(f):
                    if track_index:
                        next_index[f] = len(next_frontier)
                    next_frontier.append(c)
                    next_sleeps.append(zs)
                    if track_owner:
                        par_w(wid)
                    par_i(i)
                    act(k)
                    if share and len(visited) >= share:
                        self.transitions += transitions
                        return False
                else:
                    if track_index:
                        j = next_index.get(f)
                        if j is None:
                            if ask:
                                full.add(i)  # proviso: an edge back to a level <= this one
                        elif next_sleeps[j]:
                            next_sleeps[j] = next_sleeps[j] & zs
                    if symmetry and fingerprint(succ) & M64 != f:
                        self.sym_merged += 1
            self.transitions += transitions
            return True

        return successors

    def parent(self, level: int, i: int) -> tuple[int, int, int]:
        """(partition, index, action index) of the parent of state i of `level`."""
        w = self.par_w[level][i] if self.track_owner else self.wid
        return w, self.par_i[level][i], self.acts[level][i]

    def _ship(self, phase: str) -> None:
        """Send each peer what it owns, as one message (which also ends the phase for it):
        columns, which pickle much faster than a tuple per state, with each distinct sleep set
        once."""
        encode = self.model.encode
        for o in range(self.n):
            if o == self.wid:
                continue
            box = self.outbox[o]
            batch: tuple[Any, ...] | None = None
            if box.states:
                sets: dict[frozenset[str], int] = {EMPTY: 0}
                sleep_ids = array("H", [sets.setdefault(z, len(sets)) for z in box.sleeps])
                asked = box.askers
                batch = (
                    array("Q", box.index.keys()),
                    [encode(x) for x in box.states],
                    [tuple(sorted(z)) for z in sets],
                    sleep_ids,
                    box.parents,
                    box.acts,
                    bytes(f in asked for f in box.index) if asked else None,
                )
            self.inboxes[o].put((self.wid, phase, batch))

    def _gather(self, phase: str) -> dict[int, Any]:
        """The message of `phase` from every peer, by peer (None: it sent nothing)."""
        got: dict[int, Any] = {}
        for sender, payload in self.stash.pop(phase, []):
            got[sender] = payload
        inbox = self.inboxes[self.wid]
        while len(got) < self.n - 1:
            sender, ph, payload = inbox.get()
            if ph != phase:  # a faster peer is already in a later phase of this level
                self.stash.setdefault(ph, []).append((sender, payload))
            else:
                got[sender] = payload
        return got

    def _take_in(self, phase: str) -> dict[int, list[int]]:
        """Insert what the peers sent, in peer order; for the proviso, the fingerprints each
        peer asked about that were already visited at an earlier level."""
        decode = self.model.decode
        add, next_index, next_frontier, next_sleeps = (
            self.visited.add,
            self.next_index,
            self.next_frontier,
            self.next_sleeps,
        )
        par_w, par_i, act = self.par_w_next.append, self.par_i_next.append, self.act_next.append
        track_index = self.sleep or self.proviso
        old: dict[int, list[int]] = {}
        for sender, batch in sorted(self._gather(phase).items()):
            olds: list[int] = []
            old[sender] = olds
            if batch is None:
                continue
            fps, datas, sets, sleep_ids, parents, acts, asks = batch
            zsets = [frozenset(names) if names else EMPTY for names in sets]
            for j, f in enumerate(fps):
                if add(f):
                    if track_index:
                        next_index[f] = len(next_frontier)
                    next_frontier.append(decode(datas[j]))
                    next_sleeps.append(zsets[sleep_ids[j]])
                    par_w(sender)
                    par_i(parents[j])
                    act(acts[j])
                elif track_index:
                    k = next_index.get(f)
                    if k is None:
                        if asks is not None and asks[j]:
                            olds.append(f)
                    elif next_sleeps[k]:
                        next_sleeps[k] = next_sleeps[k] & zsets[sleep_ids[j]]
        return old

    def expand_level(self, depth: int) -> LevelReport:
        model, opts, wid = self.model, self.opts, self.wid
        actions_of, violation, fingerprint = model.actions, model.violation, model.fingerprint
        mem_share = opts.max_memory_mib / self.n if opts.max_memory_mib is not None else None
        expand = depth != (opts.max_depth if opts.max_depth is not None else -1)
        states_before = len(self.visited)
        self._new_level()
        successors = self._successor_fn()
        rests: dict[int, list[int]] = {}
        found: tuple[str, int] | None = None
        bound: str | None = None
        depth_cut = False
        next_check = 0.0
        for i, s in enumerate(self.frontier):
            now = time.monotonic()
            if now >= next_check:
                next_check = now + _CHECK_PERIOD
                if self.cancel.is_set():
                    bound = "cancelled"
                elif self.deadline is not None and time.time() >= self.deadline:
                    bound = "max_seconds"
                elif mem_share is not None and rss_mib() > mem_share:
                    bound = "max_memory"
                self.counters[2 * wid] = len(self.visited)
                self.counters[2 * wid + 1] = self.transitions
                if bound is not None:
                    break
                if self.tick is not None:
                    self.tick(len(self.visited), self.transitions, len(self.frontier) - i, depth)
            enabled = actions_of(s)
            bad = violation(s, not enabled)
            if bad is not None:
                found = (bad, i)
                break
            if not enabled:
                self.terminals += 1
                if opts.collect_terminals:
                    self.terminal_fps.add(fingerprint(s) & M64)
                continue
            if not expand:
                depth_cut = True
                continue
            order = None
            if self.footprints_of is not None:
                order = persistent_indices(enabled, self.footprints_of(s), self.observed)
            if order is None:
                chosen: Any = range(len(enabled))
            else:
                chosen = order
                if self.proviso:
                    rests[i] = [k for k in range(len(enabled)) if k not in order]
                else:
                    self.pruned += len(enabled) - len(order)
                    self.reduced += 1
            if not successors(i, s, enabled, chosen, self.sleeps[i], i in rests):
                bound = "max_states"
                break
        self._ship("A")
        old = self._take_in("A")
        if self.proviso:
            # Tell each peer which of its reduced states reached an old state here, then expand
            # fully every reduced state of ours that did (here or at a peer).
            for o, fps in old.items():
                self.inboxes[o].put((wid, "R", fps))
            for peer, fps in self._gather("R").items():
                askers = self.outbox[peer].askers
                for f in fps:
                    self.full.update(askers[f])
            for box in self.outbox:
                box.clear()  # in place: the level's successor function holds these
            if found is None and bound is None:
                for i in sorted(self.full & rests.keys()):
                    self.proviso_full += 1
                    s = self.frontier[i]
                    if not successors(i, s, actions_of(s), rests[i], EMPTY, False):
                        bound = "max_states"
                        break
            self._ship("B")
            self._take_in("B")
        for i, rest in rests.items():
            if i not in self.full:  # stayed reduced
                self.pruned += len(rest)
                self.reduced += 1
        if found is None and bound is None:
            self.frontier, self.sleeps = self.next_frontier, self.next_sleeps
            self.par_w.append(self.par_w_next)
            self.par_i.append(self.par_i_next)
            self.acts.append(self.act_next)
        self.counters[2 * wid] = len(self.visited)
        trace = self.par_w + self.par_i + self.acts
        return LevelReport(
            states_before=states_before,
            states=len(self.visited),
            frontier_next=len(self.next_frontier),
            found=found,
            bound=bound,
            depth_cut=depth_cut,
            transitions=self.transitions,
            terminals=self.terminals,
            sleep_skipped=self.sleep_skipped,
            pruned=self.pruned,
            reduced=self.reduced,
            proviso=self.proviso_full,
            sym_merged=self.sym_merged,
            visited_bytes=self.visited.nbytes + sum(a.buffer_info()[1] * a.itemsize for a in trace),
            rss_mib=rss_mib(),
            peak_rss_mib=peak_rss_mib(),
            cpu_seconds=time.process_time() - self.cpu0,
        )


class Levels(Protocol):
    """Expands one level in every partition; answers parent and terminal-state queries."""

    workers: int
    separate_processes: bool

    def expand(self, depth: int, frontier: int) -> list[LevelReport]: ...

    def parent(self, wid: int, level: int, i: int) -> tuple[int, int, int]: ...

    def terminals(self) -> set[int]: ...


class InProcess:
    """The whole search in this process: one partition owning every state."""

    workers = 1
    separate_processes = False

    def __init__(
        self,
        model: Model[Any],
        opts: CheckOptions,
        progress: Callable[[Progress], None] | None,
        cancelled: Callable[[], bool],
        t0: float,
    ) -> None:
        deadline = time.time() + opts.max_seconds if opts.max_seconds is not None else None
        last = [t0]

        def tick(states: int, transitions: int, frontier: int, depth: int) -> None:
            now = time.monotonic()
            if progress is not None and now - last[0] >= opts.progress_interval:
                last[0] = now
                report(progress, states, transitions, frontier, depth, now - t0)

        self.part = Partition(0, 1, model, opts, [None], _Probe(cancelled), [0, 0], deadline, tick)

    def expand(self, depth: int, frontier: int) -> list[LevelReport]:
        return [self.part.expand_level(depth)]

    def parent(self, wid: int, level: int, i: int) -> tuple[int, int, int]:
        return self.part.parent(level, i)

    def terminals(self) -> set[int]:
        return self.part.terminal_fps


class _Probe:
    """`is_set()` over a cancel callable (what a partition polls)."""

    def __init__(self, cancelled: Callable[[], bool]) -> None:
        self.is_set = cancelled


def coordinate(
    model: Model[Any],
    opts: CheckOptions,
    levels: Levels,
    progress: Callable[[Progress], None] | None,
    t0: float,
    cpu0: float,
) -> CheckResult:
    """Drive the levels until a violation, a budget or the end; assemble the result."""
    sleep, persistent, _, _ = plan(model, opts)
    depth = 0
    complete_depth = -1
    bound: str | None = None
    found: tuple[str, int, int] | None = None  # (property, partition, index)
    states_at_violation = 0
    reports: list[LevelReport] = []
    frontier = 1
    while True:
        reports = levels.expand(depth, frontier)
        total = sum(r.states for r in reports)
        for wid, r in enumerate(reports):
            if r.found is not None:
                found = (r.found[0], wid, r.found[1])
                states_at_violation = sum(x.states_before for x in reports)
                break
        if found is not None:
            break
        bounds = [r.bound for r in reports if r.bound is not None]
        if bounds:
            bound = "cancelled" if "cancelled" in bounds else bounds[0]
            break
        if opts.max_states is not None and total >= opts.max_states:
            bound = "max_states"
            break
        if any(r.depth_cut for r in reports):
            bound = "max_depth"
        else:
            complete_depth = depth
        frontier = sum(r.frontier_next for r in reports)
        if frontier == 0:
            break
        depth += 1

    seconds = time.monotonic() - t0
    verdict: Verdict
    counterexample: tuple[Action, ...] = ()
    prop: str | None = None
    if found is not None:
        verdict, prop = "violation", found[0]
        path: list[int] = []
        wid, i = found[1], found[2]
        for level in range(depth, 0, -1):
            wid, i, k = levels.parent(wid, level, i)
            path.append(k)
        path.reverse()
        counterexample = tuple(replay_indices(model, path, opts.symmetry))
        n_states = states_at_violation
    else:
        verdict = "bounded" if bound is not None else "verified"
        n_states = sum(r.states for r in reports)
    terminal_fps: frozenset[int] | None = None
    if opts.collect_terminals:
        terminal_fps = frozenset(levels.terminals())
    own_cpu = time.process_time() - cpu0
    if levels.separate_processes:
        cpu = own_cpu + sum(r.cpu_seconds for r in reports)
        critical = max(r.cpu_seconds for r in reports)
        peak = peak_rss_mib() + sum(r.peak_rss_mib for r in reports)
    else:
        cpu = critical = own_cpu
        peak = peak_rss_mib()
    stats = CheckStats(
        states=n_states,
        transitions=sum(r.transitions for r in reports),
        max_depth=depth,
        complete_depth=complete_depth if found is None else depth - 1,
        terminal_states=sum(r.terminals for r in reports),
        seconds=seconds,
        states_per_second=n_states / seconds if seconds > 0 else 0.0,
        cpu_seconds=cpu,
        critical_cpu_seconds=critical,
        peak_rss_mib=peak,
        visited_bytes=sum(r.visited_bytes for r in reports),
        sleep_skipped_transitions=sum(r.sleep_skipped for r in reports),
        persistent_pruned_transitions=sum(r.pruned for r in reports),
        persistent_reduced_states=sum(r.reduced for r in reports),
        proviso_expansions=sum(r.proviso for r in reports),
        symmetry_merged_transitions=sum(r.sym_merged for r in reports),
        workers=levels.workers,
    )
    if progress is not None:
        report(progress, n_states, stats.transitions, 0, depth, seconds)
    return CheckResult(
        verdict=verdict,
        property=prop,
        counterexample=counterexample,
        bound=bound,
        stats=stats,
        reductions=reductions_named(sleep, persistent, opts.symmetry),
        terminal_fingerprints=terminal_fps,
    )


def report(
    progress: Callable[[Progress], None],
    states: int,
    trans: int,
    frontier: int,
    depth: int,
    secs: float,
) -> None:
    rate = states / secs if secs > 0 else 0.0
    with contextlib.suppress(Exception):  # a broken display must not kill the search
        progress(Progress(states, trans, frontier, depth, rate, secs))
