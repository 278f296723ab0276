"""workers=N: the same verdict, distinct-state count, counterexample length and terminal states
as one process (the worker processes rebuild the model from a ModelFactory)."""

from __future__ import annotations

import multiprocessing as mp
import threading
from typing import Any

import pytest

from app import explorations
from app.explore import toys
from app.explore.checker import CheckOptions, check
from app.explore.irq_model import build_model
from app.explore.model_api import ModelFactory
from app.explore.parallel import WorkerError
from tests.explore.checker_helpers import assert_counterexample_replays

FACTORIES = [
    ModelFactory(toys.lost_update, (3, True)),
    ModelFactory(toys.wide, (4, 5)),
    ModelFactory(toys.spin_and_set),
    *(ModelFactory(toys.random_program, (seed, 3, 3, seed % 2 == 1)) for seed in range(12)),
]
OPTIONS = {
    "plain": CheckOptions(sleep_sets=False, persistent_sets=False),
    "sleep+persistent": CheckOptions(),
    "symmetry": CheckOptions(symmetry=True),
}


def _with(opts: CheckOptions, **changes: object) -> CheckOptions:
    fields = {k: getattr(opts, k) for k in opts.__slots__}
    fields.update(changes)
    return CheckOptions(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(OPTIONS))
def test_two_workers_give_the_single_process_answer(name: str) -> None:
    for factory in FACTORIES:
        opts = OPTIONS[name]
        one = check(factory, opts)
        two = check(factory, _with(opts, workers=2))
        assert two.stats.workers == 2
        assert (two.verdict, two.property is None) == (one.verdict, one.property is None), factory
        assert two.reductions == one.reductions
        assert two.stats.states == one.stats.states, factory
        if one.verdict == "violation":
            assert len(two.counterexample) == len(one.counterexample)
            assert_counterexample_replays(factory(), two)
        else:
            assert two.stats.persistent_reduced_states == one.stats.persistent_reduced_states


def test_two_workers_reach_the_same_terminal_states() -> None:
    for seed in range(6):
        factory = ModelFactory(toys.random_program, (seed, 3, 3, False, False))
        for opts in OPTIONS.values():
            opts = _with(opts, collect_terminals=True)
            one = check(factory, opts)
            two = check(factory, _with(opts, workers=2))
            assert one.verdict == two.verdict == "verified"
            assert two.terminal_fingerprints == one.terminal_fingerprints
            assert (two.stats.states, two.stats.terminal_states) == (
                one.stats.states,
                one.stats.terminal_states,
            )


def test_three_workers_and_a_deterministic_counterexample() -> None:
    factory = ModelFactory(toys.lost_update, (3,))
    a = check(factory, CheckOptions(workers=3))
    b = check(factory, CheckOptions(workers=3))
    assert a.verdict == "violation"
    assert a.counterexample == b.counterexample
    assert a.stats.states == check(factory, CheckOptions()).stats.states


def test_budgets_and_cancel_with_workers() -> None:
    factory = ModelFactory(toys.counters, (4, 5))
    r = check(factory, CheckOptions(workers=2, persistent_sets=False, max_states=200))
    assert (r.verdict, r.bound) == ("bounded", "max_states")
    stop = threading.Event()
    stop.set()
    r = check(factory, CheckOptions(workers=2, persistent_sets=False), cancel=stop)
    assert (r.verdict, r.bound) == ("bounded", "cancelled")


def _broken() -> toys.ProgramModel:
    raise ValueError("no such exploration")


def test_a_worker_that_fails_is_reported() -> None:
    with pytest.raises(WorkerError, match="no such exploration"):
        check(ModelFactory(_broken), CheckOptions(workers=2))


def test_workers_need_a_factory() -> None:
    with pytest.raises(TypeError, match="ModelFactory"):
        check(toys.counters(), CheckOptions(workers=2))


def test_the_cycle_proviso_across_workers_gives_the_single_process_reduction() -> None:
    fired = 0
    for seed in range(12):
        factory = ModelFactory(toys.random_program_observed, (seed, 3, 3))
        one = check(factory, CheckOptions())
        two = check(factory, CheckOptions(workers=2))
        assert one.verdict == two.verdict == "verified"
        assert one.reductions == two.reductions == ("persistent_sets",)
        for field in ("states", "persistent_reduced_states", "proviso_expansions"):
            assert getattr(two.stats, field) == getattr(one.stats, field), (seed, field)
        fired += one.stats.proviso_expansions
    assert fired > 0


def _in_daemon(queue: Any) -> None:
    r = check(ModelFactory(toys.lost_update, (3,)), CheckOptions(workers=2))
    queue.put((r.verdict, r.stats.workers, r.stats.states))


def test_a_daemonic_process_searches_in_process() -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_in_daemon, args=(queue,), daemon=True)
    proc.start()
    got = queue.get(timeout=120)
    proc.join(timeout=30)
    one = check(toys.lost_update(3), CheckOptions())
    assert got == ("violation", 1, one.stats.states)


@pytest.mark.parametrize("name", sorted(explorations.names()))
def test_two_workers_on_the_irqlab_model(name: str) -> None:
    """States cross workers as IrqModel.encode bytes (key parts, derived-table tokens): the
    same answer as one process on every library exploration, under one profile."""
    factory = ModelFactory(build_model, (explorations.get(name), "linux-6.1"))
    one = check(factory, CheckOptions(collect_terminals=True))
    two = check(factory, CheckOptions(workers=2, collect_terminals=True))
    assert two.stats.workers == 2
    assert (two.verdict, two.property, two.stats.states) == (
        one.verdict, one.property, one.stats.states)
    assert len(two.counterexample) == len(one.counterexample)
    if one.verdict == "verified":
        assert two.terminal_fingerprints == one.terminal_fingerprints
