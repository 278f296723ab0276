"""The exploration document models, their committed JSON Schema and the explorer's own
parser must agree: the schema file is current, every library exploration validates, the
programs' ops are the explorer's, and documents one refuses the other refuses too."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app import explorations
from app.engine.errors import EngineError
from app.explore import doc_models as DM
from app.explore import steps as S
from app.explore.document import BUILTIN_PROPERTIES
from app.explore.irq_model import IrqModel
from tests.script_module import load_script

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "openapi" / "exploration.schema.json"


def _export() -> Any:
    return load_script("export_exploration_schema")


def test_committed_schema_is_current() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == _export().render(), (
        "run scripts/export_exploration_schema.py")
    assert _export().main(["--check"]) == 0


@pytest.mark.parametrize("name", explorations.names())
def test_library_validates(name: str) -> None:
    DM.ExplorationDocument.model_validate(explorations.get(name))


def test_program_ops_are_the_explorers() -> None:
    schema = json.loads(COMMITTED.read_text(encoding="utf-8"))
    ops = set()
    for name, d in schema["$defs"].items():
        if name in ("ProgramEoi",) or name.startswith("Step"):
            const = d.get("properties", {}).get("op", {}).get("const")
            if const:
                ops.add(const)
    assert set(S.PROGRAM_OPS) <= ops
    assert typing.get_args(DM.BuiltinProperty) == tuple(BUILTIN_PROPERTIES)
    props = json.dumps(schema["properties"]["properties"])
    for builtin in BUILTIN_PROPERTIES:
        assert builtin in props


BASE: dict[str, Any] = {
    "vm": {"vcpus": 2, "irqchip": "split"},
    "actors": {"dev": {"steps": [{"op": "line", "pin": 5, "level": 1}]}},
    "properties": ["remote-irr-stuck"],
}
BAD = [
    {"actors": {"dev": {"steps": [{"op": "take", "vcpu": 0}]}}},
    {"actors": {"dev": {"steps": [{"op": "eoi", "run_exits": True}], "vcpu": 0}}},
    {"properties": ["remote-irr-stuk"]},
    {"properties": [{"always": {"vcpu": 0, "isr": {"has": 64}}}]},
    {"properties": [{"always": {"pin": 5, "colour": {"is": 1}}}]},
    {"properties": []},
    {"actors": {}},
    {"expect": {"linux-6.1": "maybe"}},
]


@pytest.mark.parametrize("change", BAD, ids=range(len(BAD)))
def test_both_refuse(change: dict[str, Any]) -> None:
    doc = {**BASE, **change}
    with pytest.raises(ValidationError):
        DM.ExplorationDocument.model_validate(doc)
    with pytest.raises(EngineError):
        IrqModel(doc, "linux-latest")


def test_both_accept_user_properties() -> None:
    doc = {**BASE, "properties": [
        {"name": "a", "always": {"any": [{"remote_irr": {"pin": 5, "is": False}},
                                         {"vcpu": 1, "if": {"is": True}}]}},
        {"finally": {"all": [{"counter": "n", "at_least": 0}, {"actor": "dev", "done": True},
                             {"pin": 5, "trigger": {"is": "edge"}}]}}]}
    doc["actors"] = {"dev": {"steps": [{"op": "line", "pin": 5, "level": 1},
                                       {"op": "count", "name": "n"}]}}
    DM.ExplorationDocument.model_validate(doc)
    IrqModel(doc, "linux-latest")
