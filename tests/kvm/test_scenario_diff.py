"""app.kvm.scenario_diff: a scenario document on the engine and on real KVM, step by step."""

from __future__ import annotations

import os
from typing import Any

import pytest

from app import scenarios as library
from app.engine.errors import EngineError
from app.kvm import scenario_diff as SD
from app.kvm.detect import vendor_module

from .conftest import ON_PVM, needs_kvm

EDGE: dict[str, Any] = {
    "name": "edge-ack",
    "vm": {"vcpus": 1, "irqchip": "kernel"},
    "steps": [
        {"op": "write_rte", "pin": 3, "entry": {"vector": "0x41", "dest": 0}},
        {"op": "line", "pin": 3, "action": "pulse"},
        {"op": "ack", "vcpu": 0},
        {"op": "expect", "label": "model only", "remote_irr": []},
    ],
}
LEVEL: dict[str, Any] = {
    "name": "level-ack",
    "vm": {"vcpus": 1, "irqchip": "kernel"},
    "steps": [
        {"op": "write_rte", "pin": 4, "entry": {"vector": "0x42", "trigger": "level",
                                                "dest": 0}},
        {"op": "line", "pin": 4, "level": 1},
        {"op": "ack"},
        {"op": "line", "pin": 4, "level": 0},
        {"op": "eoi"},
        {"op": "ack"},
    ],
}


def _diffs(variant: dict[str, Any]) -> list[list[tuple[str, Any, Any]]]:
    return [[(d["path"], d["model"], d["kvm"]) for d in s["differences"]]
            for s in variant["steps"]]


# ---- pure parts (everywhere)


def test_compare_reports_path_model_kvm() -> None:
    assert SD.compare({"a": 1, "counters.x": 1}, {"a": 1}) == [
        {"path": "counters.x", "model": 1, "kvm": 0}]
    assert SD.compare({"vcpus.10.irr": [], "vcpus.2.irr": [1]},
                      {"vcpus.10.irr": [2], "vcpus.2.irr": []}) == [
        {"path": "vcpus.2.irr", "model": [1], "kvm": []},
        {"path": "vcpus.10.irr", "model": [], "kvm": [2]}]


def test_host_facts() -> None:
    facts = SD.host_facts("linux-6.1")
    assert facts == {"kernel_release": os.uname().release, "vendor_module": vendor_module(),
                     "engine_profile": "linux-6.1"}


def test_split_document_builds_a_kvm_vm_too() -> None:
    """A split variant runs on a real split irqchip with irqlab as the VMM: it needs the
    device like an in-kernel one (the model run comes first, so a valid document reaches
    the open)."""
    doc = {"vm": {"irqchip": "split"}, "steps": [{"op": "enter"}]}
    with pytest.raises(OSError):
        SD.diff_scenario(doc, device="/nonexistent/kvm")


def test_malformed_document_raises_with_its_path() -> None:
    with pytest.raises(EngineError) as exc:
        SD.diff_scenario({"steps": [{"op": "line", "pin": 99, "level": 1}]},
                         device="/nonexistent/kvm")
    assert exc.value.field == "steps[0].pin"


class _StormVm:
    """Just enough of a KvmVm for KvmSide.settle: one vCPU that always has 0x41 pending."""

    def __init__(self) -> None:
        self.vcpus = [object()]

    def ack(self, n: int) -> int:
        return 0x41

    def eoi(self, n: int) -> None:
        pass


def test_kvm_side_settle_uses_the_documents_budget() -> None:
    """A settle step without `budget` gets the document's `settle_budget` on the KVM side too
    (as the engine's Runner), a step's own budget wins, and KVM_SETTLE_CAP bounds both."""
    side = SD.KvmSide(_StormVm(), {}, False, settle_budget=7)  # type: ignore[arg-type]
    r = side.run({"op": "settle"}, "steps[0]")
    assert (r["taken_total"], r["budget_exhausted"]) == (7, True)
    assert side.run({"op": "settle", "budget": 3}, "steps[1]")["taken_total"] == 3
    assert side.counters == {"unhandled:0x41": 10}
    default = SD.KvmSide(_StormVm(), {}, False)  # type: ignore[arg-type]
    assert default.run({"op": "settle"}, "steps[0]")["taken_total"] == SD.KVM_SETTLE_CAP


# ---- on real KVM


@needs_kvm
def test_edge_ack_same_irr_tmr_and_vector() -> None:
    result = SD.diff_scenario(EDGE)
    assert result["host"]["engine_profile"] == "linux-latest"
    assert result["host"]["vendor_module"] == vendor_module()
    (v,) = result["variants"]
    assert v["skipped"] is None and v["stopped"] is None
    assert [s["ran"] for s in v["steps"]] == ["model+kvm"] * 3 + ["ignored"]
    paths = {d["path"] for s in v["steps"] for d in s["differences"]}
    assert not {p for p in paths if p.endswith((".irr", ".tmr", ".remote_irr", ".raw"))
                or p == "result.vector"}
    if ON_PVM:  # the implicit EOI of the take: ISR (and so PPR) stay empty on KVM
        assert _diffs(v) == [[], [], [("vcpus.0.isr", [0x41], []), ("vcpus.0.ppr", 0x40, 0)],
                             []]
    else:
        assert _diffs(v) == [[], [], [], []]


@needs_kvm
def test_level_ack_shows_the_kvm_pvm_implicit_eoi() -> None:
    (v,) = SD.diff_scenario(LEVEL)["variants"]
    assert v["stopped"] is None
    if not ON_PVM:
        assert v["differences"] == 0, _diffs(v)
        return
    taken = [("vcpus.0.irr", [], [0x42]), ("vcpus.0.isr", [0x42], []),
             ("vcpus.0.ppr", 0x40, 0)]
    assert _diffs(v) == [
        [], [],
        taken,  # ack: ISR empty on KVM, and the high line re-delivered 0x42 at once
        taken,  # line low: IRR keeps the re-delivered vector
        [("pins.4.remote_irr", False, True), ("vcpus.0.irr", [], [0x42])],  # eoi retires none
        [("result.vector", None, 0x42)],  # KVM takes the re-delivered vector again
    ]
    assert v["first_difference"] == {"index": 2, "op": "ack",
                                     "paths": ["vcpus.0.irr", "vcpus.0.isr", "vcpus.0.ppr"]}


@needs_kvm
def test_split_and_kernel_variants_both_run() -> None:
    """The same edge steps on the in-kernel IOAPIC and on irqlab's VMM over a split irqchip:
    the IOAPIC side agrees with the model in both (edge: no Remote IRR; the route delivers
    0x41 to vCPU 0), so they differ from the model in the same way."""
    doc = {**EDGE, "matrix": [{"name": "k", "vm": {"irqchip": "kernel"}},
                              {"name": "s", "vm": {"irqchip": "split"}}]}
    k, s = SD.diff_scenario(doc)["variants"]
    assert (k["irqchip"], s["irqchip"]) == ("kernel", "split")
    for v in (k, s):
        assert v["skipped"] is None and v["stopped"] is None and len(v["steps"]) == 4
    assert _diffs(s) == _diffs(k)
    if ON_PVM:
        assert s["differences"] == 2  # ISR/PPR after the take (the implicit EOI)
    else:
        assert s["differences"] == 0, _diffs(s)


@needs_kvm
def test_unsupported_op_stops_the_variant() -> None:
    doc = {"steps": [{"op": "line", "pin": 3, "level": 1},
                     {"op": "advance", "us": 10}, {"op": "ack"}]}
    (v,) = SD.diff_scenario(doc)["variants"]
    assert [s["ran"] for s in v["steps"]] == ["model+kvm", "unsupported"]
    assert v["stopped"]["index"] == 1 and "advance" in v["stopped"]["reason"]
    doc = {"handlers": {"0x41": [{"op": "advance", "us": 1}]}, "steps": [{"op": "settle"}]}
    (v,) = SD.diff_scenario(doc)["variants"]
    assert v["stopped"]["op"] == "settle" and "advance" in v["stopped"]["reason"]
    # ... also when the op is nested in a handler's `when`
    doc = {"handlers": {"0x41": [{"op": "when", "counter": "c", "equals": 0,
                                  "steps": [{"op": "advance", "us": 1}]}]},
           "steps": [{"op": "settle"}]}
    (v,) = SD.diff_scenario(doc)["variants"]
    assert v["stopped"]["op"] == "settle" and "advance" in v["stopped"]["reason"]


@needs_kvm
def test_settle_runs_handlers_on_both_sides() -> None:
    doc = library.get("kut-level-intr")
    assert doc is not None
    result = SD.diff_scenario(doc)
    kernel = [v for v in result["variants"] if v["irqchip"] == "kernel"]
    split = [v for v in result["variants"] if v["irqchip"] == "split"]
    assert kernel and split
    # Split variants run with irqlab as the VMM: the EOI exit re-services the high line the
    # same way the in-kernel IOAPIC does, so both show the same differences.
    for v in kernel + split:
        assert v["stopped"] is None
        settle = v["steps"][2]
        assert settle["op"] == "settle" and settle["ran"] == "model+kvm"
        if ON_PVM:  # 0x77 is re-delivered before the handler lowers the line: taken twice
            assert _diffs(v)[2] == [("result.taken", [[0, 0x77]], [[0, 0x77], [0, 0x77]]),
                                    ("result.taken_total", 1, 2),
                                    ("counters.g_isr_77", 1, 2)]
        else:
            assert v["differences"] == 0, _diffs(v)


STORM: dict[str, Any] = {
    "name": "msi-storm",
    "settle_budget": 7,
    "vm": {"vcpus": 1, "irqchip": "kernel"},
    # Each run of 0x41's handler sends 0x41 again: a storm on every kernel and profile.
    "handlers": {"0x41": [{"op": "count", "name": "runs"}, {"op": "msi", "data": "0x41"},
                          {"op": "eoi"}]},
    "steps": [{"op": "msi", "data": "0x41"}, {"op": "settle"}, {"op": "settle", "budget": 3}],
}


@needs_kvm
def test_document_settle_budget_bounds_the_kvm_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The document's settle_budget reaches the KVM side of a diff (it used to settle up to
    KVM_SETTLE_CAP takes whatever the document said)."""
    seen: list[tuple[int, int]] = []
    settle = SD.KvmSide.settle

    def spy(self: SD.KvmSide, budget: int) -> dict[str, Any]:
        r = settle(self, budget)
        seen.append((budget, r["taken_total"]))
        return r

    monkeypatch.setattr(SD.KvmSide, "settle", spy)
    (v,) = SD.diff_scenario(STORM)["variants"]
    assert v["stopped"] is None
    assert seen == [(7, 7), (3, 3)]
    kvm_runs = [d["kvm"] for s in v["steps"] for d in s["differences"]
                if d["path"] == "counters.runs"]
    assert all(n <= 10 for n in kvm_runs), kvm_runs
