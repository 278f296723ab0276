"""The exploration library: every verdict issue 11 asks for, every counterexample replays
through the scenario runner to the same finding, and every document's `expect` holds."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest

from app import explorations
from app.api import scenario_models as SM
from app.engine import flags as F
from app.engine.scenario import run_scenario
from app.explore.counterexample import FINDING_PROPERTIES
from app.explore.run import Options, explore

ALL = list(F.PRESETS)
AFTER_4_15 = [p for p in ALL if p not in ("linux-4.14",)]

REQUIRED: list[tuple[str, str, str]] = [
    *[("seed-race-split", p, "violation") for p in ("linux-4.14", "linux-6.1")],
    *[("seed-race-split", p, "verified")
      for p in ("linux-6.2", "linux-6.10", "linux-latest", "kvm-pvm")],
    ("race1-kernel", "linux-4.14", "violation"),
    *[("race1-kernel", p, "verified") for p in AFTER_4_15 if p != "hardware"],
    ("race2b-posted", "linux-6.9", "violation"),
    *[("race2b-posted", p, "verified") for p in ("linux-6.10", "linux-6.16", "linux-latest")],
    *[("stale-handled-vector", p, "violation") for p in ("linux-6.2", "linux-6.9", "linux-6.10")],
    *[("stale-handled-vector", p, "verified") for p in ("linux-6.16", "linux-latest")],
]


@cache
def result(name: str, profile: str) -> dict[str, Any]:
    doc = explorations.get(name)
    assert doc is not None
    return explore(doc, profile, Options(max_states=200_000, max_seconds=120))


@pytest.mark.parametrize(("name", "profile", "verdict"), REQUIRED,
                         ids=[f"{n}-{p}" for n, p, _ in REQUIRED])
def test_required_verdicts(name: str, profile: str, verdict: str) -> None:
    r = result(name, profile)
    assert r["verdict"] == verdict, r["counterexample"] and r["counterexample"]["steps"]
    if verdict == "violation":
        assert r["property"] in ("remote-irr-stuck", "eoi-not-forwarded",
                                 "handled-vector-stale")


def test_stale_bit_is_the_stale_property() -> None:
    for p in ("linux-6.2", "linux-6.9", "linux-6.10"):
        assert result("stale-handled-vector", p)["property"] == "handled-vector-stale"


def test_library_shape() -> None:
    names = explorations.names()
    for required in ("seed-race-split", "race1-kernel", "race2b-posted",
                     "stale-handled-vector"):
        assert required in names
    docs = [explorations.get(n) for n in names]
    assert any(d and d["vm"].get("vcpus") == 3 for d in docs), "a 3-vCPU exploration"
    # Two devices sharing a handler: two actors driving the same pin.
    shared = False
    for d in docs:
        assert d is not None
        pins = [s.get("pin") for a in d["actors"].values() for s in a["steps"]
                if s["op"] == "line"]
        shared = shared or (len(d["actors"]) >= 2 and len(pins) != len(set(pins)))
    assert shared


LIBRARY_RUNS = [(n, p) for n in explorations.names() for p in ALL]


@pytest.mark.parametrize(("name", "profile"), LIBRARY_RUNS,
                         ids=[f"{n}-{p}" for n, p in LIBRARY_RUNS])
def test_every_run_is_exhaustive_and_replays(name: str, profile: str) -> None:
    """No budget is hit; the document's own expectation holds; a counterexample is a valid
    scenario document that replays (every expect step passes) with the violated finding."""
    r = result(name, profile)
    assert r["verdict"] in ("violation", "verified")
    doc = explorations.get(name)
    assert doc is not None
    want = doc.get("expect", {}).get(profile)
    if want is not None:
        assert r["verdict"] == want
    cx = r["counterexample"]
    if r["verdict"] == "verified":
        assert cx is None
        return
    scenario = cx["scenario"]
    SM.ScenarioDocument.model_validate(scenario)
    replay = run_scenario(scenario)
    assert replay["passed"]
    kinds = {f["kind"] for f in replay["variants"][0]["findings"]}
    if r["property"] in FINDING_PROPERTIES:
        assert r["property"] in kinds
    assert cx["length"] == len(cx["steps"]) == len(scenario["steps"]) - len(
        doc.get("setup", [])) - 1


def test_readme_census_is_current() -> None:
    """README's census is `irqlab explore --library --profile all --markdown`
    (scripts/update_readme_census.py rewrites it)."""
    from pathlib import Path

    from app.explore.cli import census_markdown

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    begin, end = "<!-- census:begin -->\n", "<!-- census:end -->"
    committed = text[text.index(begin) + len(begin):text.index(end)]
    results = [result(n, p) for n in explorations.names() for p in ALL]
    assert committed == census_markdown(results), "run scripts/update_readme_census.py"
