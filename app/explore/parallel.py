"""`workers > 1`: the same breadth-first search in N processes that own hash partitions.

Each worker process builds its own model from the `ModelFactory` and runs one
`search.Partition`: it owns the states whose fingerprint falls in its partition
(`search.owner`), i.e. their slice of the visited set, of the frontier and of the per-level
parent arrays. The search is level-synchronous: `search.coordinate`, here in the parent process,
has every worker expand its part of level d; a successor the worker owns is deduplicated
locally, one owned by another worker is shipped to it (fingerprint, `Model.encode` bytes, sleep
set, parent index, action index) through that worker's inbox queue, once per level and state:
the sender first deduplicates what it sends (intersecting the sleep sets of the arrivals it
merges). When a worker has expanded its slice it sends every peer an end marker, then takes in
what the peers sent it, in the order of the peers' ids (so the result does not depend on
timing), and reports the level to the coordinator. Only states that cross partitions travel;
the visited set is never shared. This module holds the processes, pipes and queues.

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
import gc
import multiprocessing as mp
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from app.explore.checker import CheckOptions, CheckResult, Progress, cancel_probe
from app.explore.model_api import ModelFactory
from app.explore.search import LevelReport, Partition, coordinate, report

_CHECK_PERIOD = 0.02


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
    gc.disable()  # for the worker's life: see checker.gc_paused
    try:
        worker = Partition(wid, n, factory(), opts, inboxes, cancel, counters, deadline)
        conn.send(("ready", None))
        while True:
            cmd, arg = conn.recv()
            if cmd == "expand":
                conn.send(("level", worker.expand_level(arg)))
            elif cmd == "parent":
                conn.send(("parent", worker.parent(*arg)))
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
        cpu0 = time.process_time()
        for c in conns:
            _recv(c, "ready")
        levels = _Processes(conns, counters, stop, cancelled, progress, opts, t0)
        return coordinate(factory(), opts, levels, progress, t0, cpu0)
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


class _Processes:
    """The levels expanded by the worker processes, through their pipes."""

    separate_processes = True

    def __init__(
        self,
        conns: list[Connection],
        counters: Any,
        stop: Any,
        cancelled: Callable[[], bool],
        progress: Callable[[Progress], None] | None,
        opts: CheckOptions,
        t0: float,
    ) -> None:
        self.conns, self.counters, self.stop = conns, counters, stop
        self.cancelled, self.progress, self.opts, self.t0 = cancelled, progress, opts, t0
        self.workers = len(conns)
        self.last_progress = t0

    def expand(self, depth: int, frontier: int) -> list[LevelReport]:
        conns, n = self.conns, self.workers
        for c in conns:
            c.send(("expand", depth))
        got: dict[int, LevelReport] = {}
        while len(got) < n:
            ready: list[Any] = wait(
                [c for i, c in enumerate(conns) if i not in got], timeout=_CHECK_PERIOD
            )
            for c in ready:
                wid = next(i for i, cc in enumerate(conns) if cc is c)
                got[wid] = _recv(conns[wid], "level")
            if self.cancelled():
                self.stop.set()
            now = time.monotonic()
            if (
                self.progress is not None
                and now - self.last_progress >= self.opts.progress_interval
            ):
                self.last_progress = now
                states = sum(self.counters[2 * i] for i in range(n))
                trans = sum(self.counters[2 * i + 1] for i in range(n))
                report(self.progress, states, trans, frontier, depth, now - self.t0)
        return [got[i] for i in range(n)]

    def parent(self, wid: int, level: int, i: int) -> tuple[int, int, int]:
        self.conns[wid].send(("parent", (level, i)))
        got: tuple[int, int, int] = _recv(self.conns[wid], "parent")
        return got

    def terminals(self) -> set[int]:
        fps: set[int] = set()
        for c in self.conns:
            c.send(("terminals", None))
            fps.update(_recv(c, "terminals"))
        return fps
