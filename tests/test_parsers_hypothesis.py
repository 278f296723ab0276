"""Every parser of untrusted documents, fed generated input (issue 10): the only outcomes are
a result or a refusal that becomes a 4xx, each within a time limit (hypothesis' deadline).
Anything else (a 500's exception, a hang) fails the property.

- YAML: arbitrary text, and documents built from anchors and aliases (bombs, recursion).
- Scenario documents: generated steps of every op with values in and out of range, run by
  the worker job (run_job) with small budgets; its status is 200 or 4xx.
- Snapshots: a real snapshot with one or more fields replaced by hostile values, restored as
  PUT …/snapshot restores it; a 4xx or a VM whose views render.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from fastapi.exceptions import RequestValidationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.api import ops
from app.api import scenarios as S
from app.api.problems import DocumentError
from app.api.registry import Registry, VmEntry
from app.api.safe_load import DocumentLimits, load_json, load_yaml
from app.engine.errors import EngineError
from app.engine.scenario import STEP_OPS
from app.engine.vm import Vm, VmConfig

SETTINGS = settings(max_examples=150, deadline=5000, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LIMITS = DocumentLimits(max_nodes=5_000, max_depth=32)
RUN_LIMITS = S.RunLimits(LIMITS, max_scenario_steps=200, max_settle_budget=500, max_vcpus=8,
                         max_matrix_variants=4, max_run_steps=5_000, max_run_events=5_000,
                         max_response_bytes=4 << 20, max_picture_events=5_000,
                         validate=True)

# ---- YAML

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.sampled_from(["0x41", "6_4", "0b1", "yes", "~", "1:04", "!!binary aGk=",
                                     "2001-12-14", ".inf", "'q'", "\"\\x00\""]),
                    st.text(max_size=8))


@st.composite
def alias_documents(draw: st.DrawFn) -> str:
    """YAML with anchors, aliases to earlier or enclosing anchors, merges and flow lists."""
    lines = []
    n = draw(st.integers(1, 8))
    for i in range(n):
        width = draw(st.integers(1, 12))
        items = [f"*a{draw(st.integers(0, i))}" if i and draw(st.booleans())
                 else str(draw(scalars)) for _ in range(width)]
        lines.append(f"a{i}: &a{i} [{', '.join(items)}]")
    if draw(st.booleans()):
        lines.append(f"m: {{<<: *a{draw(st.integers(0, n - 1))}}}")
    if draw(st.booleans()):
        lines.append("r: &r [*r]")
    return "\n".join(lines) + "\n"


@SETTINGS
@given(st.one_of(st.text(max_size=300), alias_documents(),
                 st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_yaml_is_a_value_or_a_refusal(text: str) -> None:
    with contextlib.suppress(DocumentError):
        load_yaml(text, LIMITS)


@SETTINGS
@given(st.one_of(st.text(max_size=300),
                 st.recursive(scalars, lambda c: st.lists(c, max_size=4), max_leaves=30)
                 .map(lambda v: repr(v).replace("'", '"').replace("None", "null"))))
def test_json_is_a_value_or_a_refusal(text: str) -> None:
    with contextlib.suppress(DocumentError):
        load_json(text, LIMITS)


# ---- scenario documents

ints = st.one_of(st.integers(-3, 300), st.integers(-(2**300), 2**300),
                 st.sampled_from(["0x41", "0x", "64", "0b1", "6_4", True, None, 1.5, [], {}]))
keys = st.sampled_from(["pin", "gsi", "level", "data", "vector", "vcpu", "budget", "us",
                        "offset", "size", "value", "source", "entry", "fields", "action",
                        "entries", "address_lo", "counter", "equals", "steps", "name",
                        "tpr", "svr", "order", "decoded", "run_exits", "label", "save"])


@st.composite
def steps(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    step: dict[str, Any] = {"op": draw(st.sampled_from([*STEP_OPS, "nope", 5]))}
    for key in draw(st.lists(keys, max_size=4, unique=True)):
        if key == "steps" and depth < 2:
            step[key] = draw(st.lists(steps(depth + 1), max_size=3))
        elif key == "entry":
            step[key] = draw(st.one_of(ints, st.dictionaries(
                st.sampled_from(["vector", "trigger", "masked", "raw", "dest"]),
                st.one_of(ints, st.sampled_from(["level", "edge"])), max_size=3)))
        else:
            step[key] = draw(ints)
    return step


@st.composite
def documents(draw: st.DrawFn) -> Any:
    doc: dict[str, Any] = {"steps": draw(st.lists(steps(), max_size=8))}
    if draw(st.booleans()):
        doc["handlers"] = {draw(st.sampled_from(["0x41", "65", "x", "0x100"])):
                           draw(st.lists(steps(1), max_size=3))}
    if draw(st.booleans()):
        doc["vm"] = draw(st.fixed_dictionaries({}, optional={
            "vcpus": ints, "irqchip": st.sampled_from(["kernel", "split", "x"]),
            "x2apic": st.booleans(), "apicv": ints}))
    if draw(st.booleans()):
        doc["matrix"] = draw(st.lists(st.fixed_dictionaries({}, optional={
            "vm": st.fixed_dictionaries({}, optional={"irqchip": st.sampled_from(
                ["kernel", "split"])}), "name": st.text(max_size=3)}), max_size=5))
    for key in draw(st.lists(st.sampled_from(["settle_budget", "commits", "name"]),
                             max_size=2, unique=True)):
        doc[key] = draw(st.one_of(ints, st.none(), st.lists(st.text(max_size=3), max_size=2)))
    return doc


@SETTINGS
@given(documents())
def test_scenario_document_is_a_result_or_a_4xx(doc: Any) -> None:
    status, _media_type, _ = S.run_job(doc, None, True, RUN_LIMITS, "/v1/scenarios/run")
    assert status == 200 or 400 <= status < 500, (status, doc)


# ---- snapshots


def _snapshot() -> dict[str, Any]:
    vm = Vm(VmConfig(vcpus=2))
    vm.write_rte(0, 3, 0x41 | 1 << 15, ("low", "high"))  # level, vector 0x41
    vm.set_line(3, level=1)
    vm.signal_msi(0xFEE00000, 0, 0x42)
    return vm.snapshot()


BASE = _snapshot()
FIELDS = [("version",), ("time",), ("config", "vcpus"), ("config", "irqchip"),
          ("ioapic", "irr"), ("ioapic", "irr_delivered"), ("ioapic", "ioregsel"),
          ("ioapic", "id"), ("ioapic", "version"), ("ioapic", "flavour"),
          ("ioapic", "delayed_at"), ("ioapic", "redir", 3), ("ioapic", "irq_states", 3),
          ("ioapic", "irq_eoi", 3), ("ioapic", "redir"), ("routes",), ("routes", 0),
          ("resamplers",), ("log", "next_seq"), ("log", "base"), ("log", "events"),
          *[("vcpus", i, f) for i in (0, 1) for f in BASE["vcpus"][0]], ("vcpus",)]
hostile = st.one_of(st.integers(-(2**300), 2**300), st.integers(-5, 300),
                    st.sampled_from([-1, 2**256, 2**64, "0x41", "0x" + "f" * 80, "64", True,
                                     None, 1.0, "kvm", "qemu", [], {}, [1, 2], [[1, []]]]))


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(FIELDS), hostile), min_size=1, max_size=3))
def test_snapshot_restore_is_a_vm_or_a_4xx(changes: list[tuple[tuple[Any, ...], Any]]
                                           ) -> None:
    snap = copy.deepcopy(BASE)
    for path, value in changes:
        node: Any = snap
        try:
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = value
        except (LookupError, TypeError):
            pass  # an earlier change replaced what this path goes through
    registry = Registry(max_vms=4, max_vcpus=8, max_events=1000)
    entry = VmEntry("v", Vm(VmConfig()))
    try:
        ops.restore(entry, snap, registry)
    except (RequestValidationError, EngineError):
        return
    entry.vm.state()  # what was restored renders and runs
    for n in range(len(entry.vm.vcpus)):
        for op in (entry.vm.enter, entry.vm.ack, entry.vm.eoi):
            with contextlib.suppress(EngineError):
                op(n)
