"""The rig's counterexample step on the host side: exploring the library, merging the traces
several presets share, APICv ones reported not runnable (never run, never passing), the end
state the verdict reads, and the table's cells. The replay on real kernels is in
test_rig_smoke.py (marker upstream)."""

from __future__ import annotations

from typing import Any

from app.upstream.counterexamples import NEEDS_APICV, _stuck, collect, replay, replay_one
from app.upstream.report import counterexample_cell, counterexample_rows, render_report


def test_collect_merges_traces_shared_by_presets() -> None:
    out = collect(["linux-6.2", "linux-6.9", "linux-6.10"], ["race2b-posted"])
    verdicts = {c["profile"]: c["verdict"] for c in out["census"]}
    assert verdicts == {"linux-6.2": "violation", "linux-6.9": "violation",
                        "linux-6.10": "verified"}
    (entry,) = out["entries"]  # 6.2 and 6.9 find the same shortest trace
    assert entry["found_under"] == ["linux-6.2", "linux-6.9"]
    assert entry["needs_apicv"] and entry["irqchip"] == "split"
    assert entry["scenario"]["steps"][-1]["op"] == "expect"


def test_collect_keeps_different_traces_apart() -> None:
    out = collect(["linux-4.14", "linux-6.1", "linux-6.2"], ["seed-race-split"])
    assert [e["found_under"] for e in out["entries"]] == [["linux-4.14"], ["linux-6.1"]]
    assert [c["verdict"] for c in out["census"]] == ["violation", "violation", "verified"]


def test_apicv_counterexample_is_not_runnable_and_never_touches_kvm() -> None:
    (entry,) = collect(["linux-6.1"], ["race2b-posted"])["entries"]
    row = replay_one(entry, "linux-6.1")
    assert row["status"] == "not-runnable" and row["reason"] == NEEDS_APICV
    assert "reproduces" not in row
    assert counterexample_cell(row) == "not runnable here: needs APICv"


def test_replay_reports_a_harness_failure_as_a_row() -> None:
    bad = {"id": "x@linux-6.1", "exploration": "x", "found_under": ["linux-6.1"],
           "property": "remote-irr-stuck", "irqchip": "split", "vcpus": 2,
           "needs_apicv": False, "scenario": {"steps": "not a list"}}
    (row,) = replay([bad], "linux-6.1")
    assert row["status"] == "error" and row["reason"]


def test_stuck_needs_nothing_requested_or_in_service() -> None:
    base = {"pins.5.remote_irr": True, "pins.6.remote_irr": False,
            "vcpus.0.irr": [], "vcpus.0.isr": [], "vcpus.1.irr": [], "vcpus.1.isr": []}
    assert _stuck(base, 2) == [5]
    assert _stuck({**base, "vcpus.1.isr": [0x40]}, 2) == []  # its EOI may still come
    assert _stuck({**base, "vcpus.0.irr": [0x40]}, 2) == []  # it will be taken and EOId
    assert _stuck({**base, "pins.5.remote_irr": False}, 2) == []


def _row(status: str, **extra: Any) -> dict[str, Any]:
    return {"id": "seed-race-split@linux-6.1", "exploration": "seed-race-split",
            "found_under": ["linux-6.1"], "property": "eoi-not-forwarded", "status": status,
            **extra}


def test_cells_and_table() -> None:
    agree_stuck = _row("agree", predicted_violation=True, reproduces=True,
                       diff={"first_difference": None, "stopped": None},
                       kernel={"stuck_pins": [5]})
    fixed = _row("agree", predicted_violation=False, reproduces=False,
                 diff={"first_difference": None, "stopped": None}, kernel={"stuck_pins": []})
    differ = _row("differ", reproduces=False, kernel={"stuck_pins": []},
                  diff={"first_difference": {"index": 9, "op": "eoi", "differences": [
                      {"path": "pins.5.remote_irr", "model": True, "kvm": False}]},
                      "stopped": None})
    stopped = _row("stopped", reproduces=None, kernel={"stuck_pins": []},
                   diff={"first_difference": None, "stopped": {"index": 7, "op": "line"}})
    assert counterexample_cell(agree_stuck) == "*agree; stuck 5"
    assert counterexample_cell(fixed) == "agree; not stuck"
    assert counterexample_cell(differ) == "differ@9 eoi: remote_irr; not stuck"
    assert counterexample_cell(stopped) == "agree to step 7 (then unsupported)"
    stale = _row("agree", reproduces=None, property="handled-vector-stale",
                 diff={"first_difference": None, "stopped": None}, kernel={"stuck_pins": [5]})
    assert counterexample_cell(stale) == ("agree; handled-vector-stale not observable, "
                                          "Remote IRR stuck 5")
    report = {"seconds": 1, "cache": "/c", "disk_bytes": 0, "runs_dir": "/r", "kernels": [
        {"version": v, "abi": v, "package_version": v, "kit_seconds": 0, "kit_bytes": 0,
         "attempts": [], "failure": None,
         "result": {"counterexample_profile": {"profile": p}, "counterexamples": [r]}}
        for v, p, r in (("6.1.192", "linux-6.1", agree_stuck),
                        ("6.12.118", "linux-6.10", fixed))]}
    header, rows = counterexample_rows(report)
    assert header[2:] == ["6.1.192 (linux-6.1)", "6.12.118 (linux-6.10)"]
    assert rows == [["seed-race-split (linux-6.1)", "eoi-not-forwarded", "*agree; stuck 5",
                     "agree; not stuck"]]
    assert "*agree; stuck 5" in render_report(report)
