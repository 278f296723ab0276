"""Soundness of the reductions on random small programs (hypothesis).

For each random program: unreduced breadth-first search agrees with brute-force enumeration of
every interleaving (states, terminal states, shortest violation); each reduction reaches exactly
the terminal states and verdict of the unreduced search; counterexamples replay and are
shortest where the theory says so (always with sleep sets; with persistent sets for terminal
properties)."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.explore.brute import enumerate_all
from app.explore.checker import TIMING_FIELDS, CheckOptions, check
from app.explore.toys import Op, Pred, ProgramModel
from tests.explore.checker_helpers import (
    CONFIGS,
    PLAIN,
    assert_counterexample_replays,
    canonical_terminals,
    without_properties,
)

VARS = ("x", "y", "z")


@st.composite
def ops(draw: st.DrawFn) -> Op:
    kind = draw(st.sampled_from(["add", "copy", "load", "store", "await", "mul"]))
    var = draw(st.sampled_from(VARS))
    if kind == "add":
        return ("add", var, draw(st.integers(1, 2)))
    if kind == "copy":
        return ("copy", var, draw(st.sampled_from(VARS)))
    if kind == "load":
        return ("load", var)
    if kind == "store":
        return ("store", var, draw(st.integers(0, 1)))
    if kind == "await":
        return ("await", var, draw(st.integers(0, 2)))
    return ("mul", var, 2, 3)


@st.composite
def preds(draw: st.DrawFn) -> Pred:
    terms = draw(
        st.lists(
            st.tuples(
                st.sampled_from(VARS), st.sampled_from(["==", "!=", "<=", ">="]), st.integers(0, 3)
            ),
            min_size=1,
            max_size=2,
        )
    )
    return Pred(tuple(terms), all_=draw(st.booleans()))


@st.composite
def models(draw: st.DrawFn, loops: bool = False) -> ProgramModel:
    n = draw(st.integers(2, 3))
    programs: list[list[Op]] = []
    for _ in range(n):
        prog = draw(st.lists(ops(), min_size=1, max_size=4 if n == 2 else 3))
        if loops and draw(st.booleans()):
            prog.append(("goto", draw(st.integers(0, len(prog) - 1))))
        programs.append(prog)
    variables = {v: draw(st.integers(0, 2)) for v in VARS}
    always = draw(st.none() | preds())
    finally_ = draw(st.none() | preds())
    modulus = 4 if loops else None
    return ProgramModel(programs, variables, always=always, finally_=finally_, modulus=modulus)


SETTINGS = settings(
    max_examples=int(os.environ.get("IRQLAB_EXPLORE_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@SETTINGS
@given(models())
def test_unreduced_search_agrees_with_brute_force(model: ProgramModel) -> None:
    brute = enumerate_all(model)
    assert brute.complete
    r = check(model, PLAIN)
    if brute.violations:
        assert r.verdict == "violation"
        assert len(r.counterexample) == brute.shortest_violation
        assert_counterexample_replays(model, r)
    else:
        assert r.verdict == "verified"
        assert r.stats.states == len(brute.states)
        assert r.terminal_fingerprints == brute.terminals
    clean = without_properties(model)
    r = check(clean, PLAIN)
    assert r.verdict == "verified"
    assert r.stats.states == len(brute.states)
    assert r.terminal_fingerprints == brute.terminals


def _agree(model: ProgramModel) -> None:
    plain = check(model, PLAIN)
    clean = without_properties(model)
    plain_clean = check(clean, PLAIN)
    for name, opts in CONFIGS.items():
        r = check(model, opts)
        assert r.verdict == plain.verdict, name
        if r.verdict == "violation":
            assert_counterexample_replays(model, r)
            if name == "sleep" or model.always is None:
                assert len(r.counterexample) == len(plain.counterexample), name
            else:
                assert len(r.counterexample) >= len(plain.counterexample), name
        rc = check(clean, opts)
        assert rc.verdict == "verified"
        assert rc.terminal_fingerprints == plain_clean.terminal_fingerprints, name
        if name == "sleep":
            assert rc.stats.states == plain_clean.stats.states
        else:
            assert rc.stats.states <= plain_clean.stats.states


@SETTINGS
@given(models())
def test_reductions_reach_the_same_terminal_states_and_verdict(model: ProgramModel) -> None:
    _agree(model)


@SETTINGS
@given(models(loops=True))
def test_reductions_on_programs_with_loops(model: ProgramModel) -> None:
    _agree(model)


@settings(max_examples=60, deadline=None)
@given(models(loops=True))
def test_same_result_twice(model: ProgramModel) -> None:
    for opts in (PLAIN, CheckOptions(collect_terminals=True)):
        a, b = check(model, opts), check(model, opts)
        assert _strip(a.to_dict()) == _strip(b.to_dict())
        assert a.terminal_fingerprints == b.terminal_fingerprints


def _strip(d: dict[str, Any]) -> dict[str, Any]:
    for k in TIMING_FIELDS:
        d["stats"].pop(k)
    return d


@st.composite
def symmetric_models(draw: st.DrawFn) -> ProgramModel:
    n = draw(st.integers(2, 3))
    prog = draw(st.lists(ops(), min_size=1, max_size=3))
    variables = {v: draw(st.integers(0, 2)) for v in VARS}
    return ProgramModel(
        [list(prog) for _ in range(n)],
        variables,
        always=draw(st.none() | preds()),
        finally_=draw(st.none() | preds()),
        symmetric=True,
    )


@SETTINGS
@given(symmetric_models())
def test_symmetry_keeps_verdict_and_canonical_terminal_states(model: ProgramModel) -> None:
    plain = check(model, PLAIN)
    for persistent in (False, True):
        opts = CheckOptions(symmetry=True, persistent_sets=persistent, collect_terminals=True)
        r = check(model, opts)
        assert r.verdict == plain.verdict
        if r.verdict == "violation":
            assert_counterexample_replays(model, r)
            if not persistent or model.always is None:
                assert len(r.counterexample) == len(plain.counterexample)
        clean = without_properties(model)
        rc = check(clean, opts)
        assert rc.terminal_fingerprints == canonical_terminals(clean)
        assert rc.stats.states <= check(clean, PLAIN).stats.states
