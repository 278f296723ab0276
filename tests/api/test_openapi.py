"""The committed OpenAPI document is the app's, and every route is documented."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from app.main import app
from tests.script_module import load_script

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "openapi" / "openapi.json"
KVM_QEMU = re.compile(r"KVM|QEMU|kvm_|ioapic_|vcpu_|apic_|irqfd|no KVM", re.IGNORECASE)


def _export_module() -> Any:
    return load_script("export_openapi")


def test_committed_spec_matches_app() -> None:
    rendered = json.dumps(app.openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    committed = COMMITTED.read_text(encoding="utf-8")
    assert committed == rendered, "openapi/openapi.json is stale: run scripts/export_openapi.py"


def test_export_script_is_deterministic(tmp_path: Path) -> None:
    module = _export_module()
    out = tmp_path / "openapi.json"
    assert module.main(["--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == COMMITTED.read_text(encoding="utf-8")
    assert module.main(["--check", "--output", str(out)]) == 0
    out.write_text("{}\n", encoding="utf-8")
    assert module.main(["--check", "--output", str(out)]) == 1


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    spec = json.loads(COMMITTED.read_text(encoding="utf-8"))
    return [(path, method, op) for path, ops in spec["paths"].items()
            for method, op in ops.items()]


@pytest.mark.parametrize(("path", "method", "op"), _operations(),
                         ids=[f"{m.upper()} {p}" for p, m, _ in _operations()])
def test_route_documented(path: str, method: str, op: dict[str, Any]) -> None:
    assert op.get("tags"), "tag"
    assert op.get("summary"), "summary"
    assert op.get("description") and KVM_QEMU.search(op["description"]), "description"
    if "requestBody" in op:
        content = op["requestBody"]["content"]["application/json"]
        assert content.get("examples") or content.get("example"), "request example"
    ok = [r for code, r in op["responses"].items() if code.startswith("2")]
    assert ok
    if not any(code == "204" for code in op["responses"]):
        assert any("example" in c or "examples" in c
                   for r in ok for c in r.get("content", {}).values()), "response example"
    for code, r in op["responses"].items():
        if code[0] in "45":
            assert list(r.get("content", {})) == ["application/problem+json"], code


def test_no_default_validation_schema() -> None:
    text = COMMITTED.read_text(encoding="utf-8")
    assert "HTTPValidationError" not in text


def test_core_paths_present() -> None:
    paths = {(m.upper(), p) for p, m, _ in _operations()}
    for expected in [
        ("POST", "/v1/vms"), ("GET", "/v1/vms"), ("GET", "/v1/vms/{vm}"),
        ("DELETE", "/v1/vms/{vm}"), ("GET", "/v1/profiles"), ("GET", "/v1/vms/{vm}/ioapic"),
        ("PUT", "/v1/vms/{vm}/ioapic/pins/{pin}"), ("PATCH", "/v1/vms/{vm}/ioapic/pins/{pin}"),
        ("POST", "/v1/vms/{vm}/ioapic/pins/{pin}/line"), ("POST", "/v1/vms/{vm}/ioapic/mmio"),
        ("GET", "/v1/vms/{vm}/routes"), ("PUT", "/v1/vms/{vm}/routes"),
        ("POST", "/v1/vms/{vm}/msi"), ("POST", "/v1/vms/{vm}/irq"),
        ("GET", "/v1/vms/{vm}/vcpus"), ("GET", "/v1/vms/{vm}/vcpus/{n}"),
        ("PATCH", "/v1/vms/{vm}/vcpus/{n}/lapic"), ("POST", "/v1/vms/{vm}/vcpus/{n}/enter"),
        ("POST", "/v1/vms/{vm}/vcpus/{n}/exit"), ("POST", "/v1/vms/{vm}/vcpus/{n}/ack"),
        ("POST", "/v1/vms/{vm}/vcpus/{n}/eoi"), ("GET", "/v1/vms/{vm}/bitmaps"),
        ("GET", "/v1/vms/{vm}/state"), ("GET", "/v1/vms/{vm}/events"),
        ("GET", "/v1/vms/{vm}/snapshot"), ("PUT", "/v1/vms/{vm}/snapshot"),
        ("POST", "/v1/vms/{vm}/clock"), ("POST", "/v1/vms/{vm}/resamplers"),
        ("POST", "/v1/vms/{vm}/resamplers/{gsi}/irqfd"), ("GET", "/healthz"),
        ("GET", "/readyz"),
    ]:
        assert expected in paths
