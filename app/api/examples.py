"""OpenAPI examples. Response examples are produced by running the engine through the same
glue the routers use (the split-mode race on a linux-6.2 VM), so they are real outputs, and
the engine is deterministic, so the committed openapi.json stays stable. Long lists are cut
to a few items."""

from __future__ import annotations

import copy
from typing import Any

from app.engine.vm import Vm, VmConfig

from . import models as M
from . import ops
from .registry import VmEntry

LIMIT = 1000
VM_ID = "race"


def _ex(summary: str, value: Any) -> dict[str, Any]:
    return {"summary": summary, "value": value}


REQUESTS: dict[str, dict[str, dict[str, Any]]] = {
    "create_vm": {
        "split-race": _ex("2 vCPUs, split irqchip, Linux 6.1 (race present)",
                          {"id": "race", "vcpus": 2, "irqchip": "split",
                           "profile": "linux-6.1"}),
        "kernel": _ex("In-kernel irqchip, newest behaviour", {"vcpus": 4}),
        "override": _ex("A preset with one flag flipped", {
            "id": "what-if", "vcpus": 2, "irqchip": "split", "profile": "linux-6.2",
            "overrides": {"split_scan_keeps_pending_level": False}}),
        "apicv-x2apic": _ex("APICv and x2APIC, 32-bit MSI ids", {
            "vcpus": 300, "irqchip": "split", "apicv": True, "x2apic": True,
            "x2apic_format": True}),
        "kvm": _ex("A real VM on this host's /dev/kvm (in-kernel irqchip)", {
            "id": "real", "vcpus": 1, "backend": "kvm"}),
    },
    "put_pin": {
        "fields": _ex("Level-triggered vector 0x40 to APIC id 0",
                      {"vector": "0x40", "trigger": "level", "dest": 0, "vcpu": 0}),
        "raw": _ex("A raw entry, written high dword first",
                   {"raw": "0x000000000000a040", "order": "high-first"}),
    },
    "patch_pin": {
        "retarget": _ex("Move the pin to APIC id 1", {"dest": 1, "vcpu": 0}),
        "mask": _ex("Mask it", {"masked": True}),
    },
    "line": {
        "assert": _ex("Raise the line", {"action": "assert"}),
        "level": _ex("Set the level explicitly", {"level": 0}),
        "pulse": _ex("An edge from IRQ source 3", {"action": "pulse", "source": 3}),
    },
    "mmio": {
        "select": _ex("Write IOREGSEL (select RTE 5 low)",
                      {"vcpu": 0, "op": "write", "offset": "0x00", "size": 4,
                       "value": "0x1a"}),
        "read": _ex("Read IOWIN", {"vcpu": 0, "op": "read", "offset": "0x10", "size": 4}),
        "eoi": _ex("QEMU's EOI register (version 0x20)",
                   {"vcpu": 0, "op": "write", "offset": "0x40", "size": 4, "value": "0x40"}),
    },
    "routes": {
        "msi": _ex("GSI 5 as a level MSI to APIC id 1", {"entries": [
            {"gsi": 5, "msi": {"address_lo": "0xfee01000", "address_hi": 0,
                               "data": "0xc040"}}]}),
        "decoded": _ex("The same route, given by meaning", {"entries": [
            {"gsi": 5, "decoded": {"dest": 1, "vector": "0x40", "trigger": "level"}}]}),
        "irqchip": _ex("In-kernel: GSI 9 to IOAPIC pin 9", {"entries": [
            {"gsi": 9, "irqchip": {"chip": "ioapic", "pin": 9}}]}),
    },
    "msi": {
        "raw": _ex("Edge MSI, vector 0x41, APIC id 0",
                   {"address_lo": "0xfee00000", "data": "0x41"}),
        "decoded": _ex("The same, by meaning", {"decoded": {"dest": 0, "vector": "0x41"}}),
    },
    "irq": {"assert": _ex("Raise GSI 5", {"gsi": 5, "level": 1})},
    "resampler": {"gsi5": _ex("Resampler on GSI 5", {"gsi": 5})},
    "clock": {"10ms": _ex("Move 10 ms forward (the EOI-storm delay)", {"advance_us": 10000})},
    "lapic": {
        "tpr": _ex("Raise the task priority", {"tpr": "0x30"}),
        "x2apic": _ex("Switch to x2APIC mode (APIC_BASE enable|extd)",
                      {"apic_base": "0xfee00d00"}),
        "logical": _ex("xAPIC flat logical id 2", {"dfr": "0xffffffff", "ldr": "0x02000000"}),
    },
    "eoi": {
        "default": _ex("Leave a KVM_EXIT_IOAPIC_EOI pending", {}),
        "run": _ex("Also run the exit", {"run_exits": True}),
    },
}


def _cut(value: dict[str, Any], key: str, keep: slice) -> dict[str, Any]:
    value = copy.deepcopy(value)
    value[key] = value[key][keep]
    return value


def _race() -> dict[str, Any]:
    """The split-mode race (issue §3) on linux-6.2, recording each step's response."""
    out: dict[str, Any] = {}
    vm = Vm(VmConfig(vcpus=2, irqchip="split", profile="linux-6.2"))
    entry = VmEntry(VM_ID, vm)
    out["summary"] = ops.summary(entry)
    out["put_pin"] = ops.capture(vm, lambda: ops.write_pin(vm, 5, M.PinPut.model_validate(
        {"vector": 0x40, "trigger": "level", "dest": 0})), LIMIT)
    out["enter"] = ops.capture(vm, lambda: vm.enter(0), LIMIT)
    vm.enter(1)
    out["line"] = ops.capture(vm, lambda: ops.set_line(vm, 5, M.LineRequest.model_validate(
        {"action": "assert"})), LIMIT)
    out["ack"] = ops.capture(vm, lambda: vm.ack(0), LIMIT)
    vm.set_line(5, level=0)
    out["patch_pin"] = ops.capture(vm, lambda: ops.patch_pin(vm, 5, M.PinPatch.model_validate(
        {"dest": 1})), LIMIT)
    out["vcpu"] = vm.vcpu_view(0)
    out["enter_scan"] = ops.capture(vm, lambda: vm.enter(0), LIMIT)
    vm.enter(1)
    out["eoi"] = ops.capture(vm, lambda: vm.eoi(0), LIMIT)
    out["enter_eoi"] = ops.capture(vm, lambda: vm.enter(0), LIMIT)
    out["bitmaps"] = vm.bitmaps()
    out["ioapic"] = _cut(vm.ioapic_view(), "pins", slice(5, 6))
    out["pin"] = vm.pin_view(5)
    out["vcpus"] = ops.vcpus(vm)
    out["routes"] = _cut(vm.routes_view(), "entries", slice(4, 6))
    out["events"] = ops.events_page(vm, 0, 4)
    out["exit"] = ops.capture(vm, lambda: vm.exit_guest(1), LIMIT)
    out["mmio"] = ops.capture(vm, lambda: ops.mmio(vm, M.MmioRequest.model_validate(
        {"op": "read", "offset": 0x10, "size": 4})), LIMIT)
    out["msi"] = ops.capture(vm, lambda: ops.signal_msi(vm, M.MsiRequest.model_validate(
        {"address_lo": 0xFEE00000, "data": 0x41})), LIMIT)
    out["irq"] = ops.capture(vm, lambda: ops.irq_line(vm, M.IrqLineRequest.model_validate(
        {"gsi": 5, "level": 1})), LIMIT)
    out["resampler"] = ops.capture(vm, lambda: ops.register_resampler(vm, 5), LIMIT)
    out["resamplers"] = ops.resamplers(vm)
    out["irqfd"] = ops.capture(vm, lambda: ops.irqfd(vm, 5), LIMIT)
    out["clock"] = ops.capture(vm, lambda: vm.advance_time(10_000), LIMIT)
    out["set_routes"] = ops.capture(vm, lambda: ops.set_routes(vm, M.RoutesPut.model_validate(
        {"entries": [{"gsi": 5, "decoded": {"dest": 1, "vector": 0x40,
                                            "trigger": "level"}}]})), LIMIT)
    out["lapic"] = ops.capture(vm, lambda: ops.lapic_patch(vm, 0, M.LapicPatch.model_validate(
        {"tpr": 0x30})), LIMIT)
    st = ops.state(entry)
    st["ioapic"] = _cut(st["ioapic"], "pins", slice(5, 6))
    st["vcpus"] = st["vcpus"][:1]
    out["state"] = st
    snap = vm.snapshot()
    snap["ioapic"] = {k: v for k, v in snap["ioapic"].items()}
    snap["log"]["events"] = snap["log"]["events"][:2]
    snap["vcpus"] = snap["vcpus"][:1]
    snap["routes"] = snap["routes"][:2]
    out["snapshot"] = snap
    return out


RESPONSES: dict[str, Any] = _race()


def response(key: str, status: int = 200, description: str = "Successful Response"
             ) -> dict[int | str, dict[str, Any]]:
    """An OpenAPI `responses` entry with the recorded example."""
    return {status: {"description": description,
                     "content": {"application/json": {"example": RESPONSES[key]}}}}


# ---- scenarios

SCENARIO: dict[str, Any] = {
    "name": "lost-eoi-split",
    "description": "vCPU0 retargets a level pin to vCPU1 while vector 0x40 is in service. "
                   "Before fceb3a36c29a KVM's rescan drops the vector from vCPU0's handled "
                   "vectors: its EOI never becomes KVM_EXIT_IOAPIC_EOI and QEMU's Remote IRR "
                   "stays set.",
    "commits": ["fceb3a36c29a"],
    "vm": {"vcpus": 2, "irqchip": "split"},
    "steps": [
        {"op": "write_rte", "pin": 5, "entry": {"vector": "0x40", "trigger": "level",
                                                 "dest": 0}},
        {"op": "enter", "vcpu": 0},
        {"op": "line", "pin": 5, "level": 1},
        {"op": "ack", "vcpu": 0},
        {"op": "line", "pin": 5, "level": 0},
        {"op": "patch_rte", "vcpu": 0, "pin": 5, "fields": {"dest": 1}},
        {"op": "enter", "vcpu": 0},
        {"op": "eoi", "vcpu": 0},
        {"op": "enter", "vcpu": 0},
        {"op": "expect", "label": "after-eoi", "remote_irr": []},
    ],
    "matrix": [{"name": "linux-6.1", "vm": {"profile": "linux-6.1"}},
               {"name": "linux-6.2", "vm": {"profile": "linux-6.2"}}],
}
"""A small document: its linux-6.1 variant fails its expectation (the bug), linux-6.2
passes; the response is 200 either way."""

SCENARIO_YAML = """\
name: lost-eoi-split
description: >-
  vCPU0 retargets a level pin to vCPU1 while vector 0x40 is in service. Before fceb3a36c29a
  KVM's rescan drops the vector from vCPU0's handled vectors: its EOI never becomes
  KVM_EXIT_IOAPIC_EOI and QEMU's Remote IRR stays set.
commits: [fceb3a36c29a]
vm: {vcpus: 2, irqchip: split}
steps:
  - {op: write_rte, pin: 5, entry: {vector: "0x40", trigger: level, dest: 0}}
  - {op: enter, vcpu: 0}
  - {op: line, pin: 5, level: 1}
  - {op: ack, vcpu: 0}
  - {op: line, pin: 5, level: 0}
  - {op: patch_rte, vcpu: 0, pin: 5, fields: {dest: 1}}
  - {op: enter, vcpu: 0}
  - {op: eoi, vcpu: 0}
  - {op: enter, vcpu: 0}
  - {op: expect, label: after-eoi, remote_irr: []}
matrix:
  - {name: linux-6.1, vm: {profile: linux-6.1}}
  - {name: linux-6.2, vm: {profile: linux-6.2}}
"""
"""The same document as YAML (a test checks that they are the same)."""

SCENARIO_REQUESTS = {
    "lost-eoi": _ex("Two profiles, one expectation (fails on linux-6.1)", SCENARIO),
    "minimal": _ex("One VM, one step", {"vm": {"vcpus": 1}, "steps": [{"op": "enter"}]}),
}


def _cut_result(result: dict[str, Any], variants: slice = slice(None),
                steps: int | None = None) -> dict[str, Any]:
    """A run's result cut for the documentation: a few events, the final bitmaps only."""
    result = copy.deepcopy(result)
    result["variants"] = result["variants"][variants]
    for v in result["variants"]:
        if steps is not None:
            v["steps"] = [s for s in v["steps"] if s["op"] == "expect" or s["findings"]][:steps]
        v["events"] = v["events"][:3]
        v["final_state"] = {"bitmaps": v["final_state"]["bitmaps"]}
    return result


def _scenarios() -> dict[str, Any]:
    from app import scenarios as library
    from app.engine.scenario import run_scenario

    from . import scenarios as S

    seed = library.get("seed-race-split")
    assert seed is not None
    listing = S.listing()
    return {
        "scenario_run": _cut_result(run_scenario(SCENARIO)),
        "scenario_list": {"scenarios": [s for s in listing["scenarios"]
                                        if s["name"] in ("race1-kernel", "seed-race-split")]},
        "scenario_document": S.document("seed-race-split"),
        "scenario_library_run": _cut_result(
            run_scenario(S.override_vm(seed, profile="linux-6.1")), slice(1, 2), 4),
    }


RESPONSES.update(_scenarios())
