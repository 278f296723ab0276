"""POST /v1/scenarios/diff: a scenario on the engine model and on real KVM, side by side.

The checks that come before the device (a malformed document, no usable /dev/kvm, the kvm
limits) run everywhere; the runs themselves skip with kvm_available()'s reason."""

from __future__ import annotations

from typing import Any

import pytest

from app.kvm import detect
from tests.api.conftest import assert_problem, client_for, make_app

pytestmark = pytest.mark.anyio

KVM_OK, KVM_REASON = detect.kvm_available()
needs_kvm = pytest.mark.skipif(not KVM_OK, reason=f"real KVM unavailable: {KVM_REASON}")
ON_PVM = detect.vendor_module() == "kvm_pvm"

EDGE: dict[str, Any] = {
    "name": "edge-ack",
    "vm": {"vcpus": 1, "irqchip": "kernel"},
    "steps": [
        {"op": "write_rte", "pin": 3, "entry": {"vector": "0x41", "dest": 0}},
        {"op": "line", "pin": 3, "action": "pulse"},
        {"op": "ack", "vcpu": 0},
    ],
}
EDGE_YAML = """\
name: edge-ack
vm: {vcpus: 1, irqchip: kernel}
steps:
  - {op: write_rte, pin: 3, entry: {vector: 0x41, dest: 0}}
  - {op: line, pin: 3, action: pulse}
  - {op: ack, vcpu: 0}
matrix:
  - {name: kernel, vm: {irqchip: kernel}}
  - {name: split, vm: {irqchip: split}}
"""


@pytest.fixture
def no_kvm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect, "kvm_available", lambda *a: (False, "/dev/kvm does not exist"))


@pytest.fixture
def fake_kvm(monkeypatch: pytest.MonkeyPatch) -> None:
    """kvm_available() says yes: for the checks that must refuse before any VM is built."""
    monkeypatch.setattr(detect, "kvm_available", lambda *a: (True, "pretend"))


async def test_malformed_document_is_422_with_its_path() -> None:
    async with client_for(make_app()) as c:
        r = await c.post("/v1/scenarios/diff", json={"steps": [{"op": "line", "pin": 99,
                                                                "level": 1}]})
        assert_problem(r, 422, "steps[0].pin")
        r = await c.post("/v1/scenarios/diff", json={"steps": [{"op": "nope"}]})
        assert_problem(r, 422, "steps[0].op")


async def test_no_usable_dev_kvm_is_409_with_the_reason(no_kvm: None) -> None:
    async with client_for(make_app()) as c:
        r = await c.post("/v1/scenarios/diff", json=EDGE)
    body = assert_problem(r, 409, "backend", "unsupported")
    assert "/dev/kvm does not exist" in body["detail"]


async def test_kvm_limits_are_409(fake_kvm: None) -> None:
    async with client_for(make_app(max_kvm_vms=0)) as c:
        r = await c.post("/v1/scenarios/diff", json=EDGE)
    assert_problem(r, 409, slug="limit-reached")
    assert r.json()["limit"] == "IRQLAB_MAX_KVM_VMS"
    async with client_for(make_app(max_kvm_vcpus=1)) as c:
        r = await c.post("/v1/scenarios/diff", json={**EDGE, "vm": {"vcpus": 2}})
    assert_problem(r, 409, "vcpus", "limit-reached")
    assert r.json()["limit"] == "IRQLAB_MAX_KVM_VCPUS"


@needs_kvm
async def test_diff_route_runs_one_document() -> None:
    app = make_app()
    async with client_for(app) as c:
        r = await c.post("/v1/scenarios/diff", json=EDGE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["host"]["vendor_module"] == detect.vendor_module()
    assert body["host"]["engine_profile"] == "linux-latest"
    (v,) = body["variants"]
    assert [s["ran"] for s in v["steps"]] == ["model+kvm"] * 3
    ack = [(d["path"], d["model"], d["kvm"]) for d in v["steps"][2]["differences"]]
    if ON_PVM:
        assert ack == [("vcpus.0.isr", [0x41], []), ("vcpus.0.ppr", 0x40, 0)]
        assert body["differences"] == 2
    else:
        assert ack == [] and body["differences"] == 0
    assert app.state.registry._kvm_pending == 0  # the slot is given back


@needs_kvm
async def test_split_variant_runs_with_irqlab_as_the_vmm_yaml() -> None:
    async with client_for(make_app()) as c:
        r = await c.post("/v1/scenarios/diff", content=EDGE_YAML,
                         headers={"content-type": "application/yaml"})
    assert r.status_code == 200, r.text
    kernel, split = r.json()["variants"]
    assert kernel["skipped"] is None and len(kernel["steps"]) == 3
    assert split["skipped"] is None and len(split["steps"]) == 3
    assert split["irqchip"] == "split" and split["differences"] == kernel["differences"]


async def test_split_variants_count_against_the_kvm_vcpu_limit(fake_kvm: None) -> None:
    """Split variants build KVM VMs too (kvm_available is faked: refused before any VM)."""
    async with client_for(make_app(max_kvm_vcpus=1)) as c:
        r = await c.post("/v1/scenarios/diff", json={"vm": {"irqchip": "split", "vcpus": 2},
                                                     "steps": [{"op": "enter"}]})
    assert_problem(r, 409, "vcpus", "limit-reached")
