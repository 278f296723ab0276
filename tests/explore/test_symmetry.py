"""vCPU symmetry (`symmetry:` in an exploration, app/explore/symmetry.py): the reduced search
agrees with the unreduced one (verdict, terminal states up to permutation) and explores fewer
states; a counterexample found under symmetry replays on concrete states; declarations the
program contradicts are refused with the field named."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import explorations
from app.engine import flags as F
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


# ---- random symmetric programs (hypothesis, derandomized) ----

_device = st.one_of(
    st.builds(lambda p, lv: {"op": "line", "pin": p, "level": lv},
              st.sampled_from([5, 6]), st.sampled_from([0, 1])),
    st.just({"op": "count", "name": "n"}),
)
_guest = st.one_of(
    _device,
    st.builds(lambda p, m: {"op": "patch_rte", "pin": p, "fields": {"masked": m}},
              st.sampled_from([5, 6]), st.booleans()),
    st.builds(lambda t: {"op": "lapic", "tpr": t}, st.sampled_from([0, 0x60])),
    st.sampled_from([{"op": "eoi"}, {"op": "exit"}, {"op": "cli"}, {"op": "sti"}]),
)


@st.composite
def _symmetric_documents(draw: Any) -> tuple[dict[str, Any], str]:
    n = draw(st.sampled_from([2, 3]))
    vm = {"vcpus": n, "irqchip": draw(st.sampled_from(["split", "kernel"])),
          "apicv": draw(st.booleans())}
    logical = draw(st.booleans())
    setup: list[dict[str, Any]] = [{"op": "lapic", "vcpu": i, "ldr": 0x01000000}
                                   for i in range(n)] if logical else []
    for pin, vec in ((5, 0x40), (6, 0x50)):
        entry = {"vector": vec, "trigger": draw(st.sampled_from(["level", "edge"])),
                 "dest": 0x01 if logical else 0xFF}
        if logical:
            entry["dest_mode"] = "logical"
        setup.append({"op": "write_rte", "vcpu": 0, "pin": pin, "entry": entry})
    setup += [{"op": "enter", "vcpu": i} for i in range(n)]
    handlers = {v: [*draw(st.lists(_guest, max_size=2)), {"op": "eoi"}] for v in (0x40, 0x50)}
    actors = {"dev": {"steps": draw(st.lists(_device, min_size=1, max_size=2))}}
    props = draw(st.sampled_from([["remote-irr-stuck", "eoi-not-forwarded"],
                                  ["interrupt-lost", "delivered-twice"],
                                  [{"finally": {"remote_irr": {"pin": 6, "is": False}}}]]))
    doc = {"name": "random-symmetric", "vm": vm, "setup": setup, "handlers": handlers,
           "actors": actors, "properties": props, "symmetry": list(range(n))}
    return doc, draw(st.sampled_from(list(F.PRESETS)))


@settings(max_examples=25, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_symmetric_documents())
def test_symmetry_agrees_on_random_symmetric_programs(case: tuple[dict[str, Any], str]) -> None:
    """Same verdict, property and counterexample length with and without the declared
    symmetry; when verified, the same terminal states up to permutation; never more states."""
    doc, profile = case
    sym = IrqModel(doc, profile)
    plain = IrqModel(_without(doc), profile)
    reduced = bfs(sym, max_states=50_000)
    full = bfs(plain, max_states=50_000)
    if "bounded" in (reduced.verdict, full.verdict):
        return
    assert (reduced.verdict, reduced.property) == (full.verdict, full.property)
    assert len(reduced.trace) == len(full.trace)
    assert reduced.stats["states"] <= full.stats["states"]
    if full.verdict == "verified":
        everything = reachable(plain, 1_000_000)
        reps = {sym.fingerprint(sym.canonical(s)) for s in everything if not plain.actions(s)}
        assert reps == reduced.terminal_fingerprints
