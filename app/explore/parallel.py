"""`workers > 1`: the same breadth-first search in N processes that own hash partitions.

Each worker process builds its own model from the `ModelFactory` and owns the states whose
fingerprint falls in its partition (`owner`): their slice of the visited set, of the frontier,
and of the per-level parent arrays. The search is level-synchronous: the coordinator tells every
worker to expand its part of level d; a successor the worker owns is deduplicated locally, one
owned by another worker is shipped to it (fingerprint, `Model.encode` bytes, sleep set, parent
index, action index) through that worker's inbox queue, once per level and state: the sender
first deduplicates what it sends (intersecting the sleep sets of the arrivals it merges). When
a worker has expanded its slice it sends every peer an end marker, then takes in what the peers
sent it, in the
order of the peers' ids (so the result does not depend on timing), and reports the level to the
coordinator. Only states that cross partitions travel; the visited set is never shared.

Why the answer is the one a single process gives: every state is still found at the level equal
to its distance (levels are barriers), all arrivals at a state within a level reach its owner
before the next level starts, so its sleep set is the same intersection as in one process, and
persistent sets depend on the state alone. Hence the same distinct states, the same verdict and
a counterexample of the same (shortest) length; which of several violating states of that level
is reported may differ (the one of the lowest worker id, first in its order).

With `always` properties, persistent sets need the cycle proviso: a reduced state is expanded
fully when one of its reduced successors was visited at its level or before. Only the
successor's owner can tell, so in that mode a level has three exchanges: (A) the successors,
those of reduced states marked as questions; (R) each owner's answers (the fingerprints it
already had from an earlier level); (B) the successors of the reduced states expanded fully
after all. Whether a successor is "old" does not depend on the order of the level's work, so the
reduced graph, hence the state count, is the same as in one process.

A counterexample is rebuilt by asking the owners for each parent back to the initial state, then
replayed in the coordinator.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from app.explore.checker import (
    CheckOptions,
    CheckResult,
    CheckStats,
    Progress,
    Verdict,
    cancel_probe,
    peak_rss_mib,
    plan,
    reductions_named,
    replay_indices,
    rss_mib,
)
from app.explore.model_api import Action, ActorFootprint, Model, ModelFactory
from app.explore.reduction import EMPTY, child_sleep, persistent_indices
from app.explore.visited import M64, FingerprintSet

_CHECK_PERIOD = 0.02
_PRIME = 0xFFFFFFFB  # largest prime below 2**32: the partition does not reuse the table's bits


def owner(fp: int, workers: int) -> int:
    return fp % _PRIME % workers


@dataclass(slots=True)
class _LevelReport:
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


class _Worker:
    """One worker process's share of the search."""

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
    ) -> None:
        self.wid, self.n, self.model, self.opts = wid, n, model, opts
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
        # paths of one level): fingerprint -> [state, sleep set, parent, action, askers], where
        # askers are the reduced states here that wait to learn whether it is old (proviso).
        self.outbox: list[dict[int, list[Any]]] = [{} for _ in range(self.n)]
        self.full: set[int] = set()  # states here that the proviso expands fully

    def _successors(
        self, i: int, s: Any, enabled: list[Action], chosen: Any, z: frozenset[str], ask: bool
    ) -> bool:
        """Generate the successors of state i by the actions `chosen`; False at max_states."""
        # Locals for speed: this is the workers' hot loop.
        model, n, wid, sleep, symmetry = (
            self.model,
            self.n,
            self.wid,
            self.sleep,
            self.opts.symmetry,
        )
        step, fingerprint, canonical = model.step, model.fingerprint, model.canonical
        add, visited, outbox, next_index = (
            self.visited.add,
            self.visited,
            self.outbox,
            self.next_index,
        )
        next_frontier, next_sleeps = self.next_frontier, self.next_sleeps
        par_w, par_i, act = self.par_w_next.append, self.par_i_next.append, self.act_next.append
        transitions = 0
        sleeping = [a for a in enabled if a.name in z] if z else []
        done: list[Action] = []
        share = -(-self.opts.max_states // n) if self.opts.max_states is not None else 0
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
            o = f % _PRIME % n  # owner(f, n), inlined
            if o != wid:
                box = outbox[o]
                rec = box.get(f)
                if rec is None:
                    box[f] = [c, zs, i, k, [i] if ask else None]
                else:
                    if rec[1]:
                        rec[1] = rec[1] & zs
                    if ask:
                        if rec[4] is None:
                            rec[4] = [i]
                        else:
                            rec[4].append(i)
            elif add(f):
                next_index[f] = len(next_frontier)
                next_frontier.append(c)
                next_sleeps.append(zs)
                par_w(wid)
                par_i(i)
                act(k)
                if share and len(visited) >= share:
                    self.transitions += transitions
                    return False
            else:
                j = next_index.get(f)
                if j is None:
                    if ask:
                        self.full.add(i)  # proviso: an edge back to a level <= this one
                elif next_sleeps[j]:
                    next_sleeps[j] = next_sleeps[j] & zs
                if symmetry and fingerprint(succ) & M64 != f:
                    self.sym_merged += 1
        self.transitions += transitions
        return True

    def _ship(self, phase: str) -> None:
        """Send each peer what it owns (then an end marker), in insertion order."""
        encode = self.model.encode
        for o in range(self.n):
            if o == self.wid:
                continue
            box = self.outbox[o]
            if box:
                # Columns pickle much faster than one tuple per state.
                recs = list(box.values())
                batch = (
                    array("Q", box.keys()),
                    [encode(r[0]) for r in recs],
                    [tuple(sorted(r[1])) if r[1] else () for r in recs],
                    array("I", [r[2] for r in recs]),
                    array("H", [r[3] for r in recs]),
                    bytes(r[4] is not None for r in recs),
                )
                self.inboxes[o].put((self.wid, phase, batch))
            self.inboxes[o].put((self.wid, phase, None))

    def _gather(self, phase: str) -> dict[int, list[Any]]:
        """Every message of `phase` from every peer (up to their end markers), by peer."""
        got: dict[int, list[Any]] = {o: [] for o in range(self.n) if o != self.wid}
        ends = 0
        for sender, payload in self.stash.pop(phase, []):
            if payload is None:
                ends += 1
            else:
                got[sender].append(payload)
        inbox = self.inboxes[self.wid]
        while ends < self.n - 1:
            sender, ph, payload = inbox.get()
            if ph != phase:  # a faster peer is already in a later phase of this level
                self.stash.setdefault(ph, []).append((sender, payload))
            elif payload is None:
                ends += 1
            else:
                got[sender].append(payload)
        return got

    def _take_in(self, phase: str) -> dict[int, list[int]]:
        """Insert what the peers sent, in peer order; for the proviso, the fingerprints each
        peer asked about that were already visited at an earlier level."""
        decode = self.model.decode
        old: dict[int, list[int]] = {}
        for sender, batches in sorted(self._gather(phase).items()):
            olds: list[int] = []
            for fps, datas, sleeps, parents, acts, asks in batches:
                for f, data, names, pi, k, asked in zip(
                    fps, datas, sleeps, parents, acts, asks, strict=True
                ):
                    zs = frozenset(names) if names else EMPTY
                    if self.visited.add(f):
                        self.next_index[f] = len(self.next_frontier)
                        self.next_frontier.append(decode(data))
                        self.next_sleeps.append(zs)
                        self.par_w_next.append(sender)
                        self.par_i_next.append(pi)
                        self.act_next.append(k)
                        continue
                    j = self.next_index.get(f)
                    if j is None:
                        if asked:
                            olds.append(f)
                    elif self.next_sleeps[j]:
                        self.next_sleeps[j] = self.next_sleeps[j] & zs
            old[sender] = olds
        return old

    def expand_level(self, depth: int) -> _LevelReport:
        model, opts, wid = self.model, self.opts, self.wid
        actions_of, violation, fingerprint = model.actions, model.violation, model.fingerprint
        mem_share = opts.max_memory_mib / self.n if opts.max_memory_mib is not None else None
        expand = depth != (opts.max_depth if opts.max_depth is not None else -1)
        states_before = len(self.visited)
        self._new_level()
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
            if not self._successors(i, s, enabled, chosen, self.sleeps[i], i in rests):
                bound = "max_states"
                break
        self._ship("A")
        old = self._take_in("A")
        if self.proviso:
            # Tell each peer which of its reduced states reached an old state here, then expand
            # fully every reduced state of ours that did (here or at a peer).
            for o, fps in old.items():
                self.inboxes[o].put((wid, "R", fps))
                self.inboxes[o].put((wid, "R", None))
            for peer, answers in self._gather("R").items():
                sent = self.outbox[peer]
                for fps in answers:
                    for f in fps:
                        self.full.update(sent[f][4])
            self.outbox = [{} for _ in range(self.n)]
            if found is None and bound is None:
                for i in sorted(self.full & rests.keys()):
                    self.proviso_full += 1
                    s = self.frontier[i]
                    if not self._successors(i, s, actions_of(s), rests[i], EMPTY, False):
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
        return _LevelReport(
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


def _worker_main(
    wid: int,
    n: int,
    factory: ModelFactory[Any],
    opts: CheckOptions,
    inboxes: list[Any],
    conn: Connection,
    cancel: Any,
    counters: Any,
    deadline: float | None,
) -> None:
    try:
        worker = _Worker(wid, n, factory(), opts, inboxes, cancel, counters, deadline)
        conn.send(("ready", None))
        while True:
            cmd, arg = conn.recv()
            if cmd == "expand":
                conn.send(("level", worker.expand_level(arg)))
            elif cmd == "parent":
                level, i = arg
                conn.send(
                    (
                        "parent",
                        (worker.par_w[level][i], worker.par_i[level][i], worker.acts[level][i]),
                    )
                )
            elif cmd == "terminals":
                conn.send(("terminals", sorted(worker.terminal_fps)))
            else:
                break
    except BaseException as exc:  # report instead of leaving the coordinator waiting
        conn.send(("error", f"worker {wid}: {type(exc).__name__}: {exc}"))
        raise


class WorkerError(RuntimeError):
    pass


def check_parallel(
    factory: ModelFactory[Any],
    opts: CheckOptions,
    progress: Callable[[Progress], None] | None,
    cancel: object,
) -> CheckResult:
    """The `workers > 1` search (see the module docstring); called by `checker.check`."""
    n = opts.workers
    t0 = time.monotonic()
    deadline = time.time() + opts.max_seconds if opts.max_seconds is not None else None
    cancelled = cancel_probe(cancel)
    ctx: Any = mp.get_context(
        "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    )
    if ctx.get_start_method() == "forkserver":
        # Workers fork from a server that already imported the checker and the model's module
        # (takes effect when the server starts, i.e. on the first parallel search).
        ctx.set_forkserver_preload([__name__, getattr(factory.build, "__module__", __name__)])
    inboxes = [ctx.Queue() for _ in range(n)]
    stop = ctx.Event()
    counters = ctx.RawArray("q", 2 * n)
    conns: list[Connection] = []
    procs = []
    for wid in range(n):
        here, there = ctx.Pipe()
        p = ctx.Process(
            target=_worker_main,
            args=(wid, n, factory, opts, inboxes, there, stop, counters, deadline),
            daemon=True,
        )
        p.start()
        there.close()
        conns.append(here)
        procs.append(p)
    try:
        return _coordinate(factory, opts, progress, cancelled, stop, counters, conns, t0)
    finally:
        for c in conns:
            with contextlib.suppress(OSError, ValueError):
                c.send(("stop", None))
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        for q in inboxes:
            q.close()
            q.cancel_join_thread()


def _recv(conn: Connection, kind: str) -> Any:
    try:
        tag, value = conn.recv()
    except EOFError:
        raise WorkerError("a worker process exited without answering") from None
    if tag == "error":
        raise WorkerError(value)
    if tag != kind:
        raise WorkerError(f"expected {kind!r} from a worker, got {tag!r}")
    return value


def _coordinate(
    factory: ModelFactory[Any],
    opts: CheckOptions,
    progress: Callable[[Progress], None] | None,
    cancelled: Callable[[], bool],
    stop: Any,
    counters: Any,
    conns: list[Connection],
    t0: float,
) -> CheckResult:
    n = len(conns)
    cpu0 = time.process_time()
    for c in conns:
        _recv(c, "ready")
    model = factory()
    sleep, persistent, _, _ = plan(model, opts)
    depth = 0
    complete_depth = -1
    bound: str | None = None
    found: tuple[str, int, int] | None = None  # (property, worker, index)
    states_at_violation = 0
    reports: list[_LevelReport] = []
    last_progress = t0
    frontier = 1
    while True:
        for c in conns:
            c.send(("expand", depth))
        got: dict[int, _LevelReport] = {}
        while len(got) < n:
            ready: list[Any] = wait(
                [c for i, c in enumerate(conns) if i not in got], timeout=_CHECK_PERIOD
            )
            for c in ready:
                wid = next(i for i, cc in enumerate(conns) if cc is c)
                got[wid] = _recv(conns[wid], "level")
            if cancelled():
                stop.set()
            now = time.monotonic()
            if progress is not None and now - last_progress >= opts.progress_interval:
                last_progress = now
                states = sum(counters[2 * i] for i in range(n))
                trans = sum(counters[2 * i + 1] for i in range(n))
                _report(progress, states, trans, frontier, depth, now - t0)
        reports = [got[i] for i in range(n)]
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
            conns[wid].send(("parent", (level, i)))
            wid, i, k = _recv(conns[wid], "parent")
            path.append(k)
        path.reverse()
        counterexample = tuple(replay_indices(model, path, opts.symmetry))
        n_states = states_at_violation
    else:
        verdict = "bounded" if bound is not None else "verified"
        n_states = sum(r.states for r in reports)
    terminal_fps: frozenset[int] | None = None
    if opts.collect_terminals:
        fps: set[int] = set()
        for c in conns:
            c.send(("terminals", None))
            fps.update(_recv(c, "terminals"))
        terminal_fps = frozenset(fps)
    stats = CheckStats(
        states=n_states,
        transitions=sum(r.transitions for r in reports),
        max_depth=depth,
        complete_depth=complete_depth if found is None else depth - 1,
        terminal_states=sum(r.terminals for r in reports),
        seconds=seconds,
        states_per_second=n_states / seconds if seconds > 0 else 0.0,
        cpu_seconds=time.process_time() - cpu0 + sum(r.cpu_seconds for r in reports),
        critical_cpu_seconds=max(r.cpu_seconds for r in reports),
        peak_rss_mib=peak_rss_mib() + sum(r.peak_rss_mib for r in reports),
        visited_bytes=sum(r.visited_bytes for r in reports),
        sleep_skipped_transitions=sum(r.sleep_skipped for r in reports),
        persistent_pruned_transitions=sum(r.pruned for r in reports),
        persistent_reduced_states=sum(r.reduced for r in reports),
        proviso_expansions=sum(r.proviso for r in reports),
        symmetry_merged_transitions=sum(r.sym_merged for r in reports),
        workers=n,
    )
    if progress is not None:
        _report(progress, n_states, stats.transitions, 0, depth, seconds)
    return CheckResult(
        verdict=verdict,
        property=prop,
        counterexample=counterexample,
        bound=bound,
        stats=stats,
        reductions=reductions_named(sleep, persistent, opts.symmetry),
        terminal_fingerprints=terminal_fps,
    )


def _report(
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
