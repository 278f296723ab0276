"""The scenario document models, their JSON Schema (openapi/scenario.schema.json) and the
engine's language must not drift apart: the committed schema is the models', every library
scenario validates, and the models' ops, vm fields and expectation fields are the engine's."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from app import scenarios
from app.api import examples as X
from app.api import scenario_models as SM
from app.engine import lapic
from app.engine.errors import EngineError
from app.engine.scenario import (
    BITMAP_FIELDS,
    HANDLER_FORBIDDEN,
    STEP_OPS,
    VM_KEYS,
    run_scenario,
)
from app.engine.vm import Vm, VmConfig
from app.main import app
from tests.script_module import load_script

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "openapi" / "scenario.schema.json"


def _export_module() -> Any:
    return load_script("export_scenario_schema")


def test_committed_schema_matches_models() -> None:
    rendered = json.dumps(SM.document_json_schema(), indent=2, sort_keys=True,
                          ensure_ascii=False) + "\n"
    assert COMMITTED.read_text(encoding="utf-8") == rendered, (
        "openapi/scenario.schema.json is stale: run scripts/export_scenario_schema.py")


def test_export_script(tmp_path: Path) -> None:
    module = _export_module()
    out = tmp_path / "scenario.schema.json"
    assert module.main(["--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == COMMITTED.read_text(encoding="utf-8")
    assert module.main(["--check", "--output", str(out)]) == 0
    out.write_text("{}\n", encoding="utf-8")
    assert module.main(["--check", "--output", str(out)]) == 1


def test_schema_shape() -> None:
    schema = json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert schema["$schema"] == SM.SCHEMA_DIALECT
    assert schema["required"] == ["steps"] and schema["additionalProperties"] is False
    step_union = schema["properties"]["steps"]["items"]
    assert step_union["discriminator"]["propertyName"] == "op"
    assert set(step_union["discriminator"]["mapping"]) == set(STEP_OPS)
    # An optional key that may not be null shows no "default": null.
    vcpu = schema["$defs"]["StepEnter"]["properties"]["vcpu"]
    assert "default" not in vcpu and "vcpu" not in schema["$defs"]["StepEnter"]["required"]


def test_openapi_body_is_the_document_schema() -> None:
    spec = app.openapi()
    body = spec["paths"]["/v1/scenarios/run"]["post"]["requestBody"]
    assert body["required"] is True
    assert set(body["content"]) == {"application/json", "application/yaml", "text/yaml"}
    for content in body["content"].values():
        assert content["schema"] == {"$ref": "#/components/schemas/ScenarioDocument"}
    components = spec["components"]["schemas"]
    for name, schema in SM.openapi_components().items():
        assert components[name] == schema


@pytest.mark.parametrize("name", scenarios.names())
def test_library_scenario_validates(name: str) -> None:
    doc = scenarios.get(name)
    assert doc is not None
    SM.ScenarioDocument.model_validate(doc)  # as loaded from YAML (integer keys)
    SM.ScenarioDocument.model_validate_json(json.dumps(doc))  # as sent over HTTP


def test_examples_validate_and_agree() -> None:
    SM.ScenarioDocument.model_validate(X.SCENARIO)
    assert yaml.safe_load(X.SCENARIO_YAML) == X.SCENARIO
    for example in X.SCENARIO_REQUESTS.values():
        SM.ScenarioDocument.model_validate(example["value"])


@pytest.mark.parametrize("name", ["seed-race-split", "kut-level-retrigger-mask",
                                  "race1-kernel", "unmask-resamples"])
def test_results_match_the_result_model(name: str) -> None:
    SM.ScenarioResult.model_validate(run_scenario(scenarios.get(name) or {}))


# ---- the models are the engine's language


def _tags(models: tuple[type[Any], ...]) -> list[str]:
    return [typing.get_args(m.model_fields["op"].annotation)[0] for m in models]


def test_ops_are_the_engines() -> None:
    assert sorted(_tags(SM.STEP_MODELS)) == sorted(STEP_OPS)
    assert sorted(_tags(SM.HANDLER_STEP_MODELS)) == sorted(set(STEP_OPS) - set(HANDLER_FORBIDDEN))


def test_vm_fields_are_the_engines() -> None:
    assert set(SM.ScenarioVm.model_fields) == VM_KEYS


def test_expectation_fields_are_the_views() -> None:
    vm = Vm(VmConfig(vcpus=1))
    assert set(SM.PinExpectation.model_fields) == set(vm.pin_view(0))
    vcpu_fields = {f.alias or n for n, f in SM.VcpuExpectation.model_fields.items()}
    assert vcpu_fields == set(vm.vcpu_view(0)) | {"if"}
    assert set(BITMAP_FIELDS) <= vcpu_fields
    assert set(SM.IoapicExpectation.model_fields) <= set(vm.ioapic_view())
    assert set(SM.LAPIC_REGS) == set(lapic.LAPIC_REGS)


EXPECTATIONS: dict[str, Any] = {
    "remote_irr": [], "pins": {"5": {"vector": "0x00", "masked": True}},
    "vcpus": {"0": {"handled_vectors": [], "if": True, "tpr": 0}}, "counters": {"n": 0},
    "events": [{"kind": "enter"}], "no_events": [{"kind": "nope"}],
    "event_counts": {"enter": 1}, "findings": [], "saved": {"x": None},
    "ioapic": {"version": "0x11", "flavour": "kvm"}, "resamplers": {"10": None},
}


def test_every_expectation_key_is_the_engines() -> None:
    assert set(SM.Expectations.model_fields) == set(EXPECTATIONS)
    doc = {"steps": [{"op": "enter"}, {"op": "expect", **EXPECTATIONS}]}
    SM.ScenarioDocument.model_validate(doc)
    result = run_scenario(doc)
    assert result["passed"], result["variants"][0]["steps"][1]


VALID: list[Any] = [
    {"steps": []},
    {"steps": [{"op": "line", "pin": "0x05", "action": "pulse", "source": 3}]},
    {"handlers": {"0x40": [{"op": "when", "counter": "n", "at_least": 1,
                            "steps": [{"op": "eoi"}]}]}, "steps": [{"op": "take"}]},
    {"steps": [{"op": "msi", "decoded": {"vector": 65, "delivery_mode": 0}}]},
    {"steps": [{"op": "write_rte", "pin": 3, "entry": "0x10040"},
               {"op": "write_rte", "pin": 3, "entry": {"raw": 64}, "order": "high-first"}]},
    {"vm": {"vcpus": 2, "overrides": {"unmask_resamples": True}}, "steps": [],
     "matrix": [{"vm": {"profile": "linux-6.1"}, "expect": {"x": {"remote_irr": []}}}]},
]
INVALID: list[Any] = [
    {"steps": [{"op": "nope"}]},
    {"steps": [{"op": "line", "pin": 24, "level": 1}]},
    {"steps": [{"op": "line", "level": 1}]},
    {"steps": [{"op": "irq", "gsi": 4096, "level": 1}]},
    {"steps": [{"op": "msi", "address_lo": "0xfee00000"}]},
    {"steps": [{"op": "eoi", "vcpu": True}]},
    {"steps": [{"op": "count", "name": 3}]},
    {"steps": [{"op": "settle", "budget": 0}]},
    {"steps": [{"op": "advance"}]},
    {"steps": [{"op": "when", "counter": "n", "steps": []}]},
    {"steps": [{"op": "patch_rte", "pin": 1, "fields": {"vector": 256}}]},
    {"steps": [{"op": "expect", "pins": {"5": {"colour": 1}}}]},
    {"steps": [{"op": "expect", "vcpus": {"0": {"colour": 1}}}]},
    {"steps": [{"op": "expect", "ioapic": {"pins": []}}]},
    {"steps": [{"op": "expect", "colour": 1}]},
    {"steps": [{"op": "enter", "save": 5}]},
    {"handlers": {"0x40": [{"op": "settle"}]}, "steps": []},
    {"handlers": {"256": [{"op": "eoi"}]}, "steps": []},
    {"steps": [], "settle_budget": None},
    {"steps": [], "extra": 1},
    {"steps": "enter"},
    {"vm": {"irqchip": "userspace"}, "steps": []},
    {"vm": {"profile": "linux-9"}, "steps": []},
    {"vm": {"vcpus": 0}, "steps": []},
    {"vm": {"id": "x"}, "steps": []},
    {"steps": [], "matrix": [{"vm": {"overrides": {"nope": True}}}]},
]


@pytest.mark.parametrize("doc", VALID)
def test_both_accept(doc: Any) -> None:
    SM.ScenarioDocument.model_validate(doc)
    run_scenario(doc)


@pytest.mark.parametrize("doc", INVALID)
def test_both_refuse(doc: Any) -> None:
    with pytest.raises(ValidationError):
        SM.ScenarioDocument.model_validate(doc)
    with pytest.raises(EngineError):
        run_scenario(doc)
