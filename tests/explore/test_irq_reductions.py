"""Partial-order reduction on the irqlab model (app/explore/irq_footprints.py): sound on every
library exploration under every preset its document names, and on random small documents built
from the exploration vocabulary, where the unreduced search also agrees with brute force.

"Sound" here: the reduced search (persistent sets, sleep sets, both, with and without vCPU
symmetry where the document declares it) reaches exactly the terminal states of the unreduced
one and the same verdict, and a counterexample it returns replays to the violation. Terminal
states are compared on the same model with its property checks switched off (the search stops
at a violation's level, so only a clean run reaches them all) while `observed()` stays what
the document's properties read: the always-property mode (visibility, cycle proviso) is what
runs. And directly: the `next` and `ever` footprints an actor is given at a state cover every
step it takes afterwards."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from app import explorations
from app.explore.brute import enumerate_all
from app.explore.checker import CheckOptions, CheckResult, check, replay
from app.explore.irq_model import IrqModel, IrqState, build_model
from app.explore.model_api import ModelFactory

PLAIN = CheckOptions(sleep_sets=False, persistent_sets=False, collect_terminals=True)
CONFIGS = {
    "sleep": CheckOptions(sleep_sets=True, persistent_sets=False, collect_terminals=True),
    "persistent": CheckOptions(sleep_sets=False, persistent_sets=True, collect_terminals=True),
    "both": CheckOptions(sleep_sets=True, persistent_sets=True, collect_terminals=True),
}
SYM_PLAIN = CheckOptions(sleep_sets=False, persistent_sets=False, symmetry=True,
                         collect_terminals=True)
SYM_CONFIGS = {
    "symmetry+persistent": CheckOptions(sleep_sets=False, persistent_sets=True, symmetry=True,
                                        collect_terminals=True),
    "symmetry+both": CheckOptions(sleep_sets=True, persistent_sets=True, symmetry=True,
                                  collect_terminals=True),
}


def clean(model: IrqModel) -> IrqModel:
    """The same model with no property that can fail; `observed()` is unchanged."""
    m = copy.copy(model)
    m.always = []
    m.finally_ = []
    return m


def assert_replays(model: IrqModel, r: CheckResult) -> None:
    last = replay(model, r.counterexample)[-1]
    assert model.violation(last, not model.actions(last)) == r.property


def assert_agree(model: IrqModel, configs: dict[str, CheckOptions], plain_opts: CheckOptions,
                 what: str) -> int:
    """Every configuration against the unreduced search; returns the states persistent sets
    reduced (so callers can check the reduction did something somewhere)."""
    plain = check(model, plain_opts)
    plain_clean = check(clean(model), plain_opts)
    assert plain_clean.verdict == "verified"
    reduced = 0
    for name, opts in configs.items():
        r = check(model, opts)
        assert r.verdict == plain.verdict, (what, name)
        if r.verdict == "violation":
            assert_replays(model, r)
            if "persistent_sets" not in r.reductions or not model.observed():
                assert len(r.counterexample) == len(plain.counterexample), (what, name)
        else:
            assert r.terminal_fingerprints == plain.terminal_fingerprints, (what, name)
        rc = check(clean(model), opts)
        assert rc.verdict == "verified"
        assert rc.terminal_fingerprints == plain_clean.terminal_fingerprints, (what, name)
        assert rc.stats.states <= plain_clean.stats.states
        reduced += rc.stats.persistent_reduced_states
    return reduced


LIBRARY = [(n, p) for n in explorations.names()
           for p in sorted((explorations.get(n) or {}).get("expect") or {"linux-latest": None})]


@pytest.mark.parametrize(("name", "profile"), LIBRARY, ids=[f"{n}-{p}" for n, p in LIBRARY])
def test_library_reductions_reach_the_unreduced_terminal_states(name: str, profile: str) -> None:
    doc = explorations.get(name)
    assert doc is not None
    model = IrqModel(doc, profile)
    assert callable(model.actor_footprints) and model.observed() is not None
    assert_agree(model, CONFIGS, PLAIN, f"{name} {profile}")
    if model.symmetry:
        assert_agree(model, SYM_CONFIGS, SYM_PLAIN, f"{name} {profile} symmetry")


def test_persistent_sets_reduce_states_on_the_library() -> None:
    """Where independence exists (the vCPUs' last entries once no delivery can happen, a
    finished device's silent tail), states are saved, and never more states are explored."""
    saved = {}
    for name in explorations.names():
        model = clean(IrqModel(explorations.get(name) or {}, "linux-latest"))
        plain = check(model, PLAIN)
        pers = check(model, CONFIGS["persistent"])
        assert pers.stats.states <= plain.stats.states
        saved[name] = plain.stats.states - pers.stats.states
    assert saved["race2b-posted"] > 0 and saved["seed-race-split"] > 0, saved


# ---- the footprints themselves ----


def _descendants(model: IrqModel, s: IrqState, skip: str | None,
                 limit: int) -> list[IrqState]:
    """States reachable from s (s included) without steps of actor `skip`."""
    from tests.explore.test_model import reachable

    return reachable(model, limit, s, skip)


def assert_footprints_cover(model: IrqModel, states: list[IrqState], limit: int = 400) -> int:
    """At each state with footprints: an actor's `ever` covers every step it takes on any path
    from there, and its `next` covers every step it can take before it moves itself."""
    with_fps = [s for s in states if model.actor_footprints(s) is not None]
    step = max(1, len(with_fps) // 60)  # at most about 60 of them, spread over the search
    checked = 0
    for s in with_fps[::step]:
        fps = model.actor_footprints(s)
        assert fps is not None
        checked += 1
        for t in _descendants(model, s, None, limit):
            for a in model.actions(t):
                assert a.actor in fps, a.name
                ever_r, ever_w = fps[a.actor].ever
                assert a.reads <= ever_r and a.writes <= ever_w, (a.name, "ever")
        for actor, af in fps.items():
            nr, nw = af.next
            for t in _descendants(model, s, actor, limit):
                for a in model.actions(t):
                    if a.actor == actor:
                        assert a.reads <= nr and a.writes <= nw, (a.name, "next")
    return checked


@pytest.mark.parametrize("name", explorations.names())
def test_actor_footprints_cover_the_future_on_the_library(name: str) -> None:
    from tests.explore.test_model import reachable

    model = IrqModel(explorations.get(name) or {}, "linux-latest")
    assert assert_footprints_cover(model, reachable(model, 30_000)) > 0


# ---- random small documents ----

PINS = {5: 0x40, 6: 0x50}


def _device_step(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(["raise", "raise", "lower", "msi", "count", "routes"])
    if kind == "raise":
        return {"op": "line", "pin": rng.choice(list(PINS)), "level": 1}
    if kind == "lower":
        return {"op": "line", "pin": rng.choice(list(PINS)), "level": 0}
    if kind == "msi":
        return {"op": "msi", "decoded": {"dest": rng.choice([0, 1]),
                                         "vector": rng.choice(list(PINS.values()))}}
    if kind == "count":
        return {"op": "count", "name": "n"}
    return {"op": "routes", "entries": [{"gsi": p, "irqchip": {"chip": "ioapic", "pin": p}}
                                        for p in PINS]}


def _guest_step(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(["tpr", "tpr", "exit", "cli", "sti", "count", "retarget", "mask", "eoi",
                       "lower"])
    if kind == "tpr":
        return {"op": "lapic", "tpr": rng.choice([0, 0x60])}
    if kind == "retarget":
        return {"op": "patch_rte", "pin": rng.choice(list(PINS)),
                "fields": {"dest": rng.choice([0, 1])}}
    if kind == "mask":
        return {"op": "patch_rte", "pin": rng.choice(list(PINS)),
                "fields": {"masked": rng.choice([True, False])}}
    if kind == "lower":
        return {"op": "line", "pin": rng.choice(list(PINS)), "level": 0}
    if kind == "count":
        return {"op": "count", "name": "n"}
    return {"op": kind}


PROPERTY_SETS = [
    ["remote-irr-stuck", "eoi-not-forwarded"],  # always + finally: proviso mode
    ["remote-irr-stuck", "interrupt-lost"],  # finally only: no proviso, sleep sets combine
    ["handled-vector-stale"],
    [{"name": "tpr-low", "always": {"vcpu": 1, "tpr": {"at_most": 0x10}}}],
]
PROFILES = ["linux-4.14", "linux-6.1", "linux-6.9", "linux-latest", "kvm-pvm"]


def random_document(seed: int) -> tuple[dict[str, Any], str]:
    """Two vCPUs, two level or edge pins with fixed vectors, one or two devices and maybe a
    vCPU flow, handlers of at most two steps before their EOI; the tails are often silent
    (lines lowered, TPR writes, counters) so that states where nothing can be delivered any
    more, where persistent sets reduce, are common."""
    rng = random.Random(seed)
    split = rng.random() < 0.5
    setup: list[dict[str, Any]] = []
    for pin, vec in PINS.items():
        setup.append({"op": "write_rte", "vcpu": 0, "pin": pin,
                      "entry": {"vector": vec, "trigger": rng.choice(["level", "edge"]),
                                "dest": rng.choice([0, 1])}})
    setup += [{"op": "enter", "vcpu": 0}, {"op": "enter", "vcpu": 1}]
    handlers = {}
    for pin, vec in PINS.items():
        # The handler quiets its device first: a level line left high re-delivers at every EOI
        # until the storm throttle, thousands of states. No counter in a handler either.
        body = [{"op": "line", "pin": pin, "level": 0}]
        body += [st for st in (_guest_step(rng) for _ in range(rng.randint(0, 1)))
                 if st["op"] != "count"]
        handlers[vec] = [*body, {"op": "eoi"}]
    actors: dict[str, Any] = {}
    for d in range(rng.randint(1, 2)):
        steps = [_device_step(rng) for _ in range(rng.randint(1, 2))]
        if rng.random() < 0.5:
            steps.append({"op": "line", "pin": rng.choice(list(PINS)), "level": 0})
        actors[f"dev{d}"] = {"steps": steps}
    if rng.random() < 0.6:
        actors["main"] = {"vcpu": rng.choice([0, 1]),
                          "steps": [_guest_step(rng) for _ in range(rng.randint(1, 2))]}
    doc = {"name": "random", "vm": {"vcpus": 2, "irqchip": "split" if split else "kernel",
                                    "apicv": rng.random() < 0.3},
           "setup": setup, "handlers": handlers, "actors": actors,
           "properties": rng.choice(PROPERTY_SETS)}
    return doc, rng.choice(PROFILES)


SEEDS = range(150)


def test_random_documents_reduced_equals_unreduced_equals_brute_force() -> None:
    reduced = compared = 0
    for seed in SEEDS:
        doc, profile = random_document(seed)
        model = IrqModel(doc, profile)
        what = f"seed {seed} {profile}"
        plain = check(clean(model), PLAIN)
        assert plain.verdict == "verified", what
        # Brute force is exponential: small graphs only, and no deeper than the longest
        # shortest path plus one (a cycle then shows as an incomplete enumeration).
        if plain.stats.states <= 200:
            depth = plain.stats.max_depth + 1
            brute = enumerate_all(clean(model), max_depth=depth, max_paths=5000)
            if brute.complete:
                compared += 1
                assert plain.stats.states == len(brute.states), what
                assert plain.terminal_fingerprints == brute.terminals, what
                with_props = check(model, PLAIN)
                b = enumerate_all(model, max_depth=depth, max_paths=5000)
                if b.violations:
                    assert with_props.verdict == "violation", what
                    assert len(with_props.counterexample) == b.shortest_violation, what
                else:
                    assert with_props.verdict == "verified", what
        reduced += assert_agree(model, CONFIGS, PLAIN, what)
    assert compared >= len(SEEDS) // 2
    assert reduced > 0


def test_random_documents_footprints_cover_the_future() -> None:
    from tests.explore.test_model import reachable

    checked = 0
    for seed in range(0, 60, 3):
        doc, profile = random_document(seed)
        model = IrqModel(doc, profile)
        checked += assert_footprints_cover(model, reachable(model, 600), limit=200)
    assert checked > 0


# ---- workers ----

WORKER_CASES = [("race2b-posted", "linux-latest"), ("seed-race-split", "linux-6.2"),
                ("masked-retarget-split", "linux-6.1")]


@pytest.mark.parametrize(("name", "profile"), WORKER_CASES)
def test_two_workers_give_the_single_process_state_count(name: str, profile: str) -> None:
    """With the cycle proviso (the documents have `always` properties) and without it (only
    their `finally` ones), two workers explore the states one process does."""
    doc = explorations.get(name)
    assert doc is not None
    finally_only = dict(doc, properties=["remote-irr-stuck"])
    for d in (doc, finally_only):
        factory = ModelFactory(build_model, (d, profile))
        for opts in (CheckOptions(sleep_sets=False), CheckOptions()):
            one = check(factory, opts)
            two = check(factory, CheckOptions(sleep_sets=opts.sleep_sets, workers=2))
            assert "persistent_sets" in one.reductions
            assert two.reductions == one.reductions
            assert (two.verdict, two.stats.states) == (one.verdict, one.stats.states)
            assert two.stats.persistent_reduced_states == one.stats.persistent_reduced_states
            assert two.stats.proviso_expansions == one.stats.proviso_expansions
