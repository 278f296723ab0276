"""The checker on toy models with known state spaces and known bugs."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from app.explore import toys
from app.explore.brute import enumerate_all
from app.explore.checker import CheckOptions, Progress, check
from app.explore.model_api import Action
from tests.explore.checker_helpers import (
    CONFIGS,
    PLAIN,
    assert_counterexample_replays,
    canonical_terminals,
)


def test_independent_counters_have_k_plus_one_to_the_n_states() -> None:
    r = check(toys.counters(3, 4), PLAIN)
    assert (r.verdict, r.stats.states, r.stats.max_depth) == ("verified", 125, 12)
    assert r.stats.transitions == 300  # 3 * 4 * 5 * 5 edges
    assert r.stats.terminal_states == 1


def test_sleep_sets_keep_every_state_and_save_transitions() -> None:
    r = check(toys.counters(3, 4), CONFIGS["sleep"])
    assert (r.verdict, r.stats.states) == ("verified", 125)
    assert r.stats.transitions == 124  # one incoming edge per state
    assert r.stats.sleep_skipped_transitions == 300 - 124


def test_persistent_sets_explore_one_interleaving_of_independent_counters() -> None:
    r = check(toys.counters(3, 4), CONFIGS["persistent"])
    assert (r.verdict, r.stats.states, r.stats.transitions) == ("verified", 13, 12)
    assert r.terminal_fingerprints == check(toys.counters(3, 4), PLAIN).terminal_fingerprints


@pytest.mark.parametrize("config", ["plain", *CONFIGS])
def test_lost_update_found_with_the_shortest_counterexample(config: str) -> None:
    model = toys.lost_update(2)
    r = check(model, PLAIN if config == "plain" else CONFIGS[config])
    assert (r.verdict, r.property) == ("violation", "finally")
    assert [a.name for a in r.counterexample] == [
        "p0@0:load",
        "p1@0:load",
        "p0@1:store",
        "p1@1:store",
    ]
    assert_counterexample_replays(model, r)
    assert r.stats.states == 13  # every state: all terminal states are at depth 4


def test_symmetry_merges_identical_processes_and_replays_concretely() -> None:
    model = toys.lost_update(3, symmetric=True)
    plain = check(model, PLAIN)
    sym = check(model, CheckOptions(symmetry=True, persistent_sets=False, collect_terminals=True))
    assert sym.verdict == plain.verdict == "violation"
    assert len(sym.counterexample) == len(plain.counterexample) == 6
    assert sym.stats.states < plain.stats.states
    assert sym.reductions == ("symmetry",)
    assert_counterexample_replays(model, sym)


def test_symmetry_reaches_the_canonical_terminal_states() -> None:
    model = toys.lost_update(3, symmetric=True)
    model.finally_ = None
    plain = check(model, PLAIN)
    sym = check(model, CheckOptions(symmetry=True, collect_terminals=True))
    assert plain.terminal_fingerprints is not None
    assert sym.terminal_fingerprints == canonical_terminals(model)
    assert sym.stats.states < plain.stats.states
    assert sym.stats.symmetry_merged_transitions > 0


def test_the_cycle_proviso_stops_persistent_sets_from_ignoring_a_visible_step() -> None:
    # p0 loops forever on its own variable; always y == 0 fails once p1 runs. A persistent set
    # {p0's step} at every state would postpone p1 forever around p0's loop.
    model = toys.spin_and_set()
    r = check(model, CONFIGS["persistent"])
    assert (r.verdict, r.property) == ("violation", "always")
    assert r.reductions == ("persistent_sets",)
    assert r.stats.persistent_pruned_transitions > 0
    assert_counterexample_replays(model, r)


def test_unreduced_search_agrees_with_brute_force_on_the_bench_model() -> None:
    model = toys.wide(3, 4, shared_every=2)
    brute = enumerate_all(model)
    r = check(model, PLAIN)
    assert brute.complete
    assert r.stats.states == len(brute.states)
    assert r.terminal_fingerprints == brute.terminals
    for opts in CONFIGS.values():
        assert check(model, opts).terminal_fingerprints == brute.terminals


def test_max_states_makes_the_run_bounded_never_verified() -> None:
    r = check(toys.counters(3, 4), CheckOptions(max_states=50, persistent_sets=False))
    assert (r.verdict, r.bound, r.stats.states) == ("bounded", "max_states", 50)


def test_max_depth_reports_the_levels_covered() -> None:
    r = check(toys.counters(3, 4), CheckOptions(max_depth=5))
    assert (r.verdict, r.bound) == ("bounded", "max_depth")
    assert (r.stats.max_depth, r.stats.complete_depth) == (5, 4)
    # A depth bound the search never reaches does not make it bounded.
    assert check(toys.counters(3, 4), CheckOptions(max_depth=12)).verdict == "verified"


class _Slow(toys.ProgramModel):
    def step(self, state: Any, action: Action) -> Any:
        time.sleep(0.0005)
        return super().step(state, action)


def _slow() -> _Slow:
    return _Slow([[("add", f"c{i}", 1)] * 8 for i in range(4)], {f"c{i}": 0 for i in range(4)})


def test_max_seconds_and_progress() -> None:
    seen: list[Progress] = []
    opts = CheckOptions(
        max_seconds=0.3, progress_interval=0.05, sleep_sets=False, persistent_sets=False
    )
    r = check(_slow(), opts, progress=seen.append)
    assert (r.verdict, r.bound) == ("bounded", "max_seconds")
    assert 0.3 <= r.stats.seconds < 2
    assert len(seen) >= 3
    assert all(b.states >= a.states for a, b in itertools.pairwise(seen))


def test_cancel_by_event_from_another_thread() -> None:
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    r = check(_slow(), CheckOptions(sleep_sets=False, persistent_sets=False), cancel=stop)
    assert (r.verdict, r.bound) == ("bounded", "cancelled")
    assert r.stats.seconds < 2


def test_cancel_by_callable() -> None:
    r = check(_slow(), CheckOptions(), cancel=lambda: True)
    assert (r.verdict, r.bound) == ("bounded", "cancelled")


_SCRIPT = """
import json
from app.explore import toys
from app.explore.checker import TIMING_FIELDS, CheckOptions, check
out = {}
for name, model in [("lost", toys.lost_update(3, symmetric=True)), ("wide", toys.wide(3, 5))]:
    for sym in (False, True):
        r = check(model, CheckOptions(symmetry=sym, collect_terminals=True))
        d = r.to_dict()
        for k in TIMING_FIELDS:
            d["stats"].pop(k)
        d["terminals"] = sorted(r.terminal_fingerprints)
        out[f"{name}-{sym}"] = d
print(json.dumps(out, sort_keys=True))
"""


def test_same_result_in_fresh_processes_with_different_hash_seeds() -> None:
    outputs = []
    for seed in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        proc = subprocess.run(
            [sys.executable, "-c", _SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        outputs.append(json.loads(proc.stdout))
    assert outputs[0] == outputs[1]
    assert outputs[0]["lost-False"]["verdict"] == "violation"
