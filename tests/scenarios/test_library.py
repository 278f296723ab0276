"""Every built-in scenario is a regression test: each variant (a profile before a fix and one
with it, or both irqchip modes) must meet its own expectations."""

from __future__ import annotations

import pytest

from app import scenarios
from app.engine.scenario import run_scenario


@pytest.mark.parametrize("name", scenarios.names())
def test_library_scenario_passes(name: str) -> None:
    doc = scenarios.get(name)
    assert doc is not None
    result = run_scenario(doc)
    failures = [
        (v["name"], s.get("label"), [c for c in s["result"]["checks"] if not c["ok"]])
        for v in result["variants"]
        for s in v["steps"]
        if s["op"] == "expect" and not s.get("passed", True)
    ] + [
        (v["name"], x["where"], [c for c in x["checks"] if not c["ok"]])
        for v in result["variants"]
        for x in v["handler_expects"]
        if not x["passed"]
    ]
    errors = [(v["name"], s["index"], s["error"]) for v in result["variants"]
              for s in v["steps"] if not s["ok"]]
    assert not errors, errors
    assert not failures, failures
    assert result["passed"]


@pytest.mark.parametrize("name", scenarios.names())
def test_library_scenario_has_metadata_and_variants(name: str) -> None:
    doc = scenarios.get(name)
    assert doc is not None
    assert doc.get("description") and doc.get("commits")
    # A regression scenario shows both sides: at least two variants that differ.
    assert len(doc.get("matrix", [])) >= 2


def test_before_and_after_variants_really_differ() -> None:
    """The seed race: the buggy and the fixed profile leave different Remote IRR after the EOI
    (guards against expectations that would pass whatever the profile)."""
    doc = scenarios.get("seed-race-split")
    assert doc is not None
    result = run_scenario(doc)
    by_name = {v["name"]: v for v in result["variants"]}
    buggy = next(v for n, v in by_name.items() if n.startswith("linux-6.1"))
    fixed = next(v for n, v in by_name.items() if n.startswith("linux-6.2"))
    assert buggy["final_state"]["bitmaps"]["remote_irr"]["pins"] == [5]
    assert fixed["final_state"]["bitmaps"]["remote_irr"]["pins"] == [5]  # re-asserted at the end
    assert [f["kind"] for f in buggy["findings"]].count("remote-irr-stuck") == 1
    assert "remote-irr-stuck" not in [f["kind"] for f in fixed["findings"]]
    assert buggy["final_state"]["vcpus"][1]["irr"]["vectors"] == []
    assert fixed["final_state"]["vcpus"][1]["irr"]["vectors"] == [0x40]


def test_run_is_deterministic() -> None:
    doc = scenarios.get("race1-kernel")
    assert doc is not None
    assert run_scenario(doc) == run_scenario(scenarios.get("race1-kernel") or {})
