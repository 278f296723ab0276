"""Shared helpers for the checker tests: the reduction configurations and result checks."""

from __future__ import annotations

from typing import Any

from app.explore.checker import CheckOptions, CheckResult, check, replay
from app.explore.model_api import Model
from app.explore.toys import ProgramModel

PLAIN = CheckOptions(sleep_sets=False, persistent_sets=False, collect_terminals=True)
CONFIGS = {
    "sleep": CheckOptions(sleep_sets=True, persistent_sets=False, collect_terminals=True),
    "persistent": CheckOptions(sleep_sets=False, persistent_sets=True, collect_terminals=True),
    "both": CheckOptions(sleep_sets=True, persistent_sets=True, collect_terminals=True),
}


def without_properties(m: ProgramModel) -> ProgramModel:
    """The same programs with no property that can fail, keeping `observed` (so persistent sets
    still run in the always-property mode when the original had one)."""
    from app.explore.toys import Pred

    always = None
    if m.always is not None:
        always = Pred(tuple((v, ">=", -(10**9)) for v in sorted(m.always.reads)))
    return ProgramModel(
        m.programs,
        dict(zip(m.names, m.init_vars, strict=True)),
        always=always,
        symmetric=m.symmetric,
        modulus=m.modulus,
    )


def assert_counterexample_replays(model: Model[Any], result: CheckResult) -> None:
    assert result.verdict == "violation"
    states = replay(model, result.counterexample)
    last = states[-1]
    assert model.violation(last, not model.actions(last)) == result.property
    # Shortest: no earlier state on the path violates anything.
    for s in states[:-1]:
        assert model.violation(s, not model.actions(s)) is None


def run(model: Model[Any], opts: CheckOptions) -> CheckResult:
    return check(model, opts)


def canonical_terminals(model: ProgramModel) -> frozenset[int]:
    """Fingerprints of the canonical forms of every reachable terminal state (plain DFS)."""
    seen: set[Any] = set()
    todo = [model.initial()]
    out = set()
    while todo:
        s = todo.pop()
        if s in seen:
            continue
        seen.add(s)
        acts = model.actions(s)
        if not acts:
            out.add(model.fingerprint(model.canonical(s)) & (2**64 - 1))
        todo.extend(model.step(s, a) for a in acts)
    return frozenset(out)
