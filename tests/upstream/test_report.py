"""The rig's tables, from result JSON shaped as the guest writes it (no QEMU)."""

from __future__ import annotations

from typing import Any

from app.upstream.cli import any_difference
from app.upstream.guest import summarize_variant
from app.upstream.report import (
    cell,
    explain,
    library_rows,
    render_flag_matrix,
    render_report,
    unexplained,
)


def variant(name: str, irqchip: str, first: dict[str, Any] | None = None,
            stopped: dict[str, Any] | None = None) -> dict[str, Any]:
    """A diff_variant() result with one differing step at `first`'s index."""
    steps = [{"index": i, "op": op, "differences": []}
             for i, op in enumerate(["write_rte", "line", "ack", "eoi"])]
    if first:
        steps[first["index"]]["differences"] = [
            {"path": "pins.5.remote_irr", "model": True, "kvm": False}]
    return {"name": name, "irqchip": irqchip, "vcpus": 2, "skipped": None, "stopped": stopped,
            "steps": steps, "first_difference": first}


def kernel(version: str, cells: list[dict[str, Any]], random_differ: int = 0,
           probe: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"version": version, "abi": f"{version}-amd64", "package_version": f"{version}-1",
            "kit_seconds": 0.0, "kit_bytes": 2**20, "failure": None,
            "attempts": [{"seconds": 20.0, "rig_failure": None}],
            "result": {"profile": "linux-6.1", "facts": {}, "parts": {},
                       "library": [{"scenario": "seed-race-split", "variants": cells}],
                       "random": {"split": {"sequences": 3, "agree": 3 - random_differ,
                                            "differ": random_differ, "seconds": 1.0,
                                            "failures": [{"op": "ack", "step": 4}] *
                                            random_differ}},
                       "probe": probe}}


def test_summarize_and_cells() -> None:
    agree = summarize_variant(variant("a", "split"))
    assert agree["agree"] and cell(agree) == "agree"
    differ = summarize_variant(variant("a", "split", {"index": 3, "op": "eoi",
                                                      "paths": ["pins.5.remote_irr"]}))
    assert not differ["agree"] and differ["differing_steps"] == 1
    assert cell(differ) == "differ@3 eoi: remote_irr"
    stopped = summarize_variant(variant("a", "split", stopped={"index": 2, "op": "exit"}))
    assert cell(stopped) == "agree (to step 2)"


def test_kernel_by_scenario_table_and_counts() -> None:
    first = {"index": 3, "op": "eoi", "paths": ["pins.5.remote_irr"]}
    report = {"seconds": 60.0, "cache": "/c", "disk_bytes": 2**30, "runs_dir": "/c/runs/x",
              "kernels": [kernel("6.1.192", [summarize_variant(variant("v", "split"))]),
                          kernel("6.12.118", [summarize_variant(variant("v", "split", first))],
                                 random_differ=1)]}
    header, rows = library_rows(report)
    assert header == ["scenario / variant", "irqchip", "6.1.192", "6.12.118"]
    assert rows == [["seed-race-split / v", "split", "agree", "differ@3 eoi: remote_irr"]]
    text = render_report(report)
    assert "agree: 6.1.192 1/1, 6.12.118 0/1" in text
    assert "3/3" in text and "2/3" in text and "ack@4" in text
    assert any_difference(report)
    report["kernels"] = report["kernels"][:1]
    assert not any_difference(report)


def test_differences_explained_in_advance() -> None:
    """A variant pinning an older kernel's flag may differ; the same cell on a variant that
    pins nothing is unexplained."""
    first = {"index": 3, "op": "eoi", "paths": ["pins.5.remote_irr"]}
    pinned = summarize_variant(variant("before b200dded0a69", "kernel", first))
    report = {"kernels": [kernel("6.1.192", [pinned])]}
    report["kernels"][0]["result"]["library"][0]["scenario"] = "readonly-bits-preserved"
    report["kernels"][0]["result"]["random"]["split"]["differ"] = 0
    assert unexplained(report) == [] and not any_difference(report)
    assert explain("readonly-bits-preserved", "before b200dded0a69", "linux-6.1") == (
        "pins another kernel's rte_preserves_readonly_bits=False")
    assert explain("readonly-bits-preserved", "b200dded0a69", "linux-6.1") is None
    assert explain("kut-self-reconfigure", "split irqchip, x2APIC, 4 vCPUs, APICv",
                   "linux-latest") == "models APICv, which the emulated CPU lacks"
    row = report["kernels"][0]["result"]["library"][0]
    row["scenario"] = "seed-race-split"
    row["variants"][0]["variant"] = "linux-6.1 (before fceb3a36c29a)"
    assert unexplained(report) and any_difference(report)


def test_flag_matrix() -> None:
    probe = {"probes": [{"flag": "split_scan_keeps_pending_level", "commit": "fceb3a36c29a",
                         "verdict": "lacks"}], "matching_presets": ["linux-6.1"]}
    probe2 = {"probes": [{"flag": "split_scan_keeps_pending_level", "commit": "fceb3a36c29a",
                          "verdict": "has"}], "matching_presets": ["linux-6.10"]}
    text = render_flag_matrix([({"version": "6.1.192"}, probe), ({"version": "6.12.118"}, probe2)])
    line = next(x for x in text.splitlines() if x.startswith("split_scan"))
    assert line.split()[2:] == ["NO", "yes"]
    assert "linux-6.1" in text and "linux-6.10" in text
