"""vCPU symmetry (`symmetry:` in an exploration, app/explore/symmetry.py): the reduced search
agrees with the unreduced one (verdict, terminal states up to permutation) and explores fewer
states; a counterexample found under symmetry replays on concrete states; declarations the
program contradicts are refused with the field named."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from app import explorations
from app.engine.errors import EngineError
from app.engine.scenario import run_scenario
from app.explore.counterexample import scenario_document
from app.explore.irq_model import IrqModel
from app.explore.simple_bfs import bfs

from .test_model import reachable

SYMMETRIC = [n for n in explorations.names() if (explorations.get(n) or {}).get("symmetry")]


def _without(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "symmetry"}


def test_library_has_a_symmetric_exploration() -> None:
    assert SYMMETRIC


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-latest", "kvm-pvm"])
@pytest.mark.parametrize("name", SYMMETRIC)
def test_symmetric_search_agrees_with_unreduced(name: str, profile: str) -> None:
    doc = explorations.get(name) or {}
    sym = IrqModel(doc, profile)
    plain = IrqModel(_without(doc), profile)
    reduced = bfs(sym)
    full = bfs(plain)
    assert reduced.verdict == full.verdict
    assert reduced.property == full.property
    assert reduced.stats["states"] < full.stats["states"]
    # Terminal states agree up to permutation: the unreduced terminals' representatives are
    # exactly the reduced search's terminals.
    assert full.verdict == "verified"
    everything = reachable(plain, 1_000_000)
    assert len(everything) == full.stats["states"]
    reps = {sym.fingerprint(sym.canonical(s)) for s in everything if not plain.actions(s)}
    assert reps == reduced.terminal_fingerprints


def test_canonical_merges_exactly_permutations() -> None:
    """Representatives are invariant under permuting the declared vCPUs (what canonical
    promises), and a state with no symmetric twin keeps its own fingerprint class."""
    doc = explorations.get("broadcast-level-split") or {}
    model = IrqModel(doc, "linux-latest")
    s = model.initial()
    for a in model.actions(s)[:1]:
        s = model.step(s, a)
    t = s
    for _ in range(6):  # walk a few steps, taking vCPU1's move where there is one
        acts = model.actions(t)
        if not acts:
            break
        t = model.step(t, next((a for a in acts if a.actor == "vcpu1"), acts[0]))
    c = model.canonical(t)
    assert model.fingerprint(model.canonical(c)) == model.fingerprint(c)
    assert sorted(v.id_reg for v in c.vm.vcpus) == sorted(v.id_reg for v in t.vm.vcpus)
    assert [v.idx for v in c.vm.vcpus] == [0, 1, 2]


def test_violation_under_symmetry_replays() -> None:
    """A user property that fails: the counterexample (concrete actions) replays."""
    doc = copy.deepcopy(explorations.get("broadcast-level-split") or {})
    doc["properties"] = [{"name": "never-two-in-handler",
                          "always": {"counter": "x", "at_most": 1}}]
    doc["handlers"][0x40] = [{"op": "count", "name": "x"}, *doc["handlers"][0x40]]
    doc.pop("expect", None)
    model = IrqModel(doc, "linux-latest")
    r = bfs(model)
    assert r.verdict == "violation"
    plain = bfs(IrqModel(_without(doc), "linux-latest"))
    assert plain.verdict == "violation" and len(plain.trace) == len(r.trace)
    s = model.initial()
    for a in r.trace:
        assert a in model.actions(s)
        s = model.step(s, a)
    assert model.violation(s, not model.actions(s)) == "never-two-in-handler"
    assert len(r.trace) > 3
    scenario = scenario_document(model, r.trace, r.trace_states, "never-two-in-handler")
    assert run_scenario(scenario)["passed"]


@pytest.mark.parametrize(("name", "change", "words"), [
    ("seed-race-split", {"symmetry": [0, 1]}, "physically"),
    ("lowest-priority-3vcpu", {"symmetry": [0, 1, 2]}, ""),
    ("broadcast-level-split", {"symmetry": [0, 0]}, "distinct"),
    ("broadcast-level-split", {"symmetry": [0, 3]}, "distinct"),
    ("broadcast-level-split", {"actors": {"main": {"vcpu": 1, "steps": [{"op": "cli"}]}}},
     "bound"),
    ("broadcast-level-split", {"properties": [{"always": {"vcpu": 2, "irr": {"empty": True}}}]},
     "names"),
    ("broadcast-level-split",
     {"actors": {"dev": {"steps": [{"op": "msi", "decoded": {"dest": 1, "vector": 0x50}}]}}},
     "msi"),
    ("broadcast-level-split", {"handlers": {0x40: [{"op": "patch_rte", "pin": 5,
                                                    "fields": {"dest": 1}}, {"op": "eoi"}]}},
     ""),
])
def test_contradicted_declarations_are_refused(name: str, change: dict[str, Any],
                                               words: str) -> None:
    doc = {**copy.deepcopy(explorations.get(name) or {}), **change}
    doc.pop("expect", None)
    with pytest.raises(EngineError) as exc:
        model = IrqModel(doc, "linux-latest")
        bfs(model)  # a state the program reaches may contradict it
    assert words in exc.value.detail
    assert exc.value.field is not None
    assert exc.value.field.startswith(("symmetry", "properties", "actors"))
