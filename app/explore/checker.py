"""The checker: breadth-first explicit-state search of any `model_api.Model`.

Entry point::

    check(model_or_factory, options=CheckOptions(...), progress=callback, cancel=event)
        -> CheckResult

`model_or_factory` is a `Model` or a `ModelFactory` (required for `workers > 1`: each worker
process builds its own model; in a daemonic process, which may not start others, the search
runs in-process instead). `progress(Progress)` is called at most every
`options.progress_interval` seconds (and once at the end). `cancel` is a `threading.Event`, a
`multiprocessing` event or any zero-argument callable returning True to stop; it is polled every
20 ms and the run ends `bounded` with `bound="cancelled"`.

The result's `verdict` is "violation" (`property` names what failed, `counterexample` holds the
actions from the initial state, shortest as argued below), "verified" (every reachable state was
explored; never said when a budget cut the search) or "bounded" (`bound` names the budget:
max_states, max_depth, max_seconds, max_memory, cancelled; `stats.complete_depth` is the deepest
level explored in full). `replay(model, result.counterexample)` gives the states along it.

Search. Level by level from the initial state; successors in the order `Model.actions` returns
them; a state is checked (`Model.violation`) when it is expanded, so the first violation found is
at the smallest depth and, within a depth, the first in that deterministic order. The visited
set holds 64-bit fingerprints only (`visited.FingerprintSet`). Per level the checker keeps two
arrays: the parent's index in the previous level and the index of the action in the parent's
`actions()` list (6 bytes a state); a counterexample is rebuilt by walking them back and
replaying from the initial state. The states themselves are kept only for the current and the
next level. With a violation, `stats.states` counts the states of the levels up to the violating
one (the same number with any worker count).

Sleep sets (option `sleep_sets`). At a state with sleep set Z, enabled actions are explored in
order, skipping those in Z; the successor by t gets {u in Z or explored before t here : u
independent of t} (by footprints, `model_api.independent`). Without state caching this explores
an equivalent (same actions, permuted, so same length) of every path: the classic argument.
With a visited set, the known trap is a state first reached with a large sleep set and later
with a smaller one. In a breadth-first search all arrivals at a state at its first level happen
before it is expanded, so the checker expands it with the intersection of their sleep sets (a
subset of each, so it explores at least what each would). Later arrivals are on paths longer
than the state's distance; they are dropped, and that is sound: take a shortest path w to any
state; the tree search explores an equivalent w' of the same length, so every prefix of w' is a
shortest path to its own state; by induction over the prefixes, each state on w' is in the level
equal to its distance with a sleep set contained in the one the tree search gives it, so the next
action of w' is not asleep there. Hence every reachable state is reached, at its distance:
`always` and `finally` violations are all found and counterexamples stay shortest. Sleep sets
save transitions (successor computations), never states.

Persistent sets (option `persistent_sets`; needs the model's optional `actor_footprints`, see
`model_api.HasActorFootprints`). At each state only the enabled actions of a set of actors
closed under "what an outside actor may ever do conflicts with what an inside actor may do next"
are explored (`reduction.persistent_indices`). For
terminal-state (`finally`) properties this preserves every reachable terminal state, with no
cycle condition: if a terminal state d is reachable from s by w, w must contain an action of the
persistent set P(s) (otherwise P(s) would still be enabled at d), and its first such action t
commutes to the front, so d is reachable from s.t by a path one shorter; and since the path is a
permutation of w, d is found at its true distance (combined with sleep sets, the same induction
as above, choosing t as the first action of P(s) that can move to the front of w, carries
through the caching argument). For `always` properties the model declares the resources they
read (`model_api.HasObserved.observed`): a proper persistent set must then contain no visible
action (one writing such a resource) and every cycle of the reduced graph must contain a fully
expanded state (otherwise an action could be postponed forever around a cycle: the ignoring
problem). The checker enforces the latter by expanding a state fully when one of its reduced
successors was already visited at the same or an earlier level: every cycle of the reduced
graph has an edge to a state no deeper than its source, so that edge's source is fully
expanded. With `always` properties the counterexample is shortest in the reduced graph only,
and sleep sets are not combined with this mode (their caching argument above relies on states
being found at their true distance). When `observed` is None (unknown), every action is visible
and persistent sets reduce nothing.

Symmetry (option `symmetry`): states are replaced by `Model.canonical(state)` before they are
fingerprinted and stored, so one representative per class is explored; the model promises that
symmetric states have the same future up to renaming and the same verdicts. Sleep sets are not
used with symmetry: they name actions, and canonicalisation renames them (the contract does not
return the permutation). Persistent sets are computed on the representative and commute with
the quotient. Counterexamples are replayed on concrete states by matching, at each step, the
canonical fingerprint of the successor the search took.

The search itself is in `app.explore.search` (one engine: a process alone is a partition that
owns every state); workers (`workers > 1`) are in `app.explore.parallel`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import multiprocessing
import os
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeAlias, TypeVar

from app.explore.model_api import Action, Model, ModelFactory
from app.explore.visited import M64

S = TypeVar("S")
Verdict: TypeAlias = Literal["violation", "verified", "bounded"]
Cancel: TypeAlias = object  # threading/multiprocessing Event, zero-argument callable, or None

TIMING_FIELDS = (
    "seconds",
    "states_per_second",
    "cpu_seconds",
    "critical_cpu_seconds",
    "peak_rss_mib",
)
"""`CheckStats` fields that vary from run to run; every other field is deterministic."""


@dataclass(frozen=True, slots=True)
class CheckOptions:
    """Budgets (None = unlimited) and reductions. Picklable (sent to worker processes).

    max_states: distinct states stored; max_depth: states at this depth are still checked but
    not expanded; max_seconds: wall time; max_memory_mib: resident memory (shared out among
    workers). Reductions: see the module docstring; `collect_terminals` returns every terminal
    state's fingerprint (for tests; costs a Python set).
    """

    max_states: int | None = None
    max_depth: int | None = None
    max_seconds: float | None = None
    max_memory_mib: float | None = None
    sleep_sets: bool = True
    persistent_sets: bool = True
    symmetry: bool = False
    workers: int = 1
    progress_interval: float = 0.5
    collect_terminals: bool = False  # return every terminal state's fingerprint (tests)


@dataclass(frozen=True, slots=True)
class Progress:
    states: int
    transitions: int
    frontier: int
    depth: int
    states_per_second: float
    seconds: float


@dataclass(frozen=True, slots=True)
class CheckStats:
    states: int = 0
    transitions: int = 0
    max_depth: int = 0
    complete_depth: int = -1
    terminal_states: int = 0
    seconds: float = 0.0
    states_per_second: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of the search (all its processes)
    critical_cpu_seconds: float = 0.0  # the busiest process's CPU time (workers: max over them)
    peak_rss_mib: float = 0.0
    visited_bytes: int = 0
    sleep_skipped_transitions: int = 0
    persistent_pruned_transitions: int = 0
    persistent_reduced_states: int = 0
    proviso_expansions: int = 0  # reduced states expanded fully by the cycle proviso
    symmetry_merged_transitions: int = 0
    workers: int = 1


@dataclass(frozen=True, slots=True)
class CheckResult:
    verdict: Verdict
    property: str | None
    counterexample: tuple[Action, ...]
    bound: str | None
    stats: CheckStats
    reductions: tuple[str, ...] = ()
    terminal_fingerprints: frozenset[int] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: actions as {name, actor}; no terminal fingerprints."""
        return {
            "verdict": self.verdict,
            "property": self.property,
            "bound": self.bound,
            "counterexample": [{"name": a.name, "actor": a.actor} for a in self.counterexample],
            "reductions": list(self.reductions),
            "stats": asdict(self.stats),
        }


def check(
    model_or_factory: Model[Any] | ModelFactory[Any],
    options: CheckOptions | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: Cancel = None,
) -> CheckResult:
    """Search `model_or_factory`'s state space; see the module docstring."""
    with gc_paused():
        return _check(model_or_factory, options, progress, cancel)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off meanwhile. A search allocates a few objects per
    transition and keeps a level's states alive, so the collector's generation scans of the
    growing frontier cost about a quarter of the search (on the irqlab model); states hold no
    reference cycles, and whatever cyclic garbage a model makes is collected afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _check(
    model_or_factory: Model[Any] | ModelFactory[Any],
    options: CheckOptions | None,
    progress: Callable[[Progress], None] | None,
    cancel: Cancel,
) -> CheckResult:
    opts = options or CheckOptions()
    if opts.workers > 1 and multiprocessing.current_process().daemon:
        # A daemonic process (e.g. a job runner's worker) may not start processes: search here;
        # the answer is the same by construction, and stats.workers says 1.
        opts = dataclasses.replace(opts, workers=1)
    if opts.workers > 1:
        if not isinstance(model_or_factory, ModelFactory):
            raise TypeError("workers > 1 needs a ModelFactory (each worker builds its model)")
        from app.explore.parallel import check_parallel

        return check_parallel(model_or_factory, opts, progress, cancel)
    model: Model[Any] = (
        model_or_factory() if isinstance(model_or_factory, ModelFactory) else model_or_factory
    )
    from app.explore.search import InProcess, coordinate

    t0, cpu0 = time.monotonic(), time.process_time()
    levels = InProcess(model, opts, progress, cancel_probe(cancel), t0)
    return coordinate(model, opts, levels, progress, t0, cpu0)


def cancel_probe(cancel: Cancel) -> Callable[[], bool]:
    """A zero-argument callable for any accepted `cancel` value."""
    if cancel is None:
        return lambda: False
    is_set = getattr(cancel, "is_set", None)
    if callable(is_set):
        return lambda: bool(is_set())
    if callable(cancel):
        return lambda: bool(cancel())
    raise TypeError("cancel must be an Event or a callable")


def rss_mib() -> float:
    """The process's resident set size now, in MiB (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def plan(model: Model[Any], opts: CheckOptions) -> tuple[bool, bool, bool, frozenset[str] | None]:
    """Which reductions apply to this model: (sleep, persistent, proviso, observed)."""
    footprints = getattr(model, "actor_footprints", None)
    observed_fn = getattr(model, "observed", None)
    observed: frozenset[str] | None = observed_fn() if callable(observed_fn) else None
    persistent = opts.persistent_sets and callable(footprints) and observed is not None
    proviso = persistent and bool(observed)
    sleep = opts.sleep_sets and not opts.symmetry and not proviso
    return sleep, persistent, proviso, observed


def reductions_named(sleep: bool, persistent: bool, symmetry: bool) -> tuple[str, ...]:
    names = []
    if sleep:
        names.append("sleep_sets")
    if persistent:
        names.append("persistent_sets")
    if symmetry:
        names.append("symmetry")
    return tuple(names)


def replay_indices(model: Model[Any], path: list[int], symmetry: bool) -> list[Action]:
    """Turn a list of action indices taken on (canonical) states into concrete actions."""
    if not symmetry:
        s = model.initial()
        out = []
        for k in path:
            a = model.actions(s)[k]
            out.append(a)
            s = model.step(s, a)
        return out
    # The search took action k of each canonical state; walk the canonical chain for the target
    # fingerprints, then follow them from the concrete initial state.
    c = model.canonical(model.initial())
    targets = []
    for k in path:
        c = model.canonical(model.step(c, model.actions(c)[k]))
        targets.append(model.fingerprint(c) & M64)
    s = model.initial()
    out = []
    for target in targets:
        for a in model.actions(s):
            nxt = model.step(s, a)
            if model.fingerprint(model.canonical(nxt)) & M64 == target:
                out.append(a)
                s = nxt
                break
        else:  # the model's canonical() is not a symmetry of its transitions
            raise RuntimeError("counterexample replay failed: canonical() is not a symmetry")
    return out


def replay(model: Model[S], actions: tuple[Action, ...] | list[Action]) -> list[S]:
    """The states along `actions` from the initial state (initial state first)."""
    s = model.initial()
    states = [s]
    for a in actions:
        s = model.step(s, a)
        states.append(s)
    return states
