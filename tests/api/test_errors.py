"""Every error class comes back as RFC 9457 problem+json from one handler."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from app.api.problems import PROBLEM_TYPES
from app.engine.vm import Vm

from .conftest import MakeVm, assert_problem, client_for, make_app

pytestmark = pytest.mark.anyio


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/v2/nothing"), 404, slug="not-found")
    assert body["instance"] == "/v2/nothing"
    assert_problem(await client.put("/v1/profiles", json={}), 405, slug="method-not-allowed")


async def test_malformed_json(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/vms", content=b'{"vcpus": ',
                          headers={"content-type": "application/json"})
    body = assert_problem(r, 422, slug="validation-error")
    assert body["errors"][0]["type"] == "json_invalid"


async def test_missing_body(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm()
    assert_problem(await client.post(f"/v1/vms/{vm}/irq"), 422, "body")


async def test_all_errors_listed(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm()
    r = await client.put(f"/v1/vms/{vm}/ioapic/pins/1",
                         json={"vector": True, "trigger": "up", "dest": -1})
    body = assert_problem(r, 422, "vector")
    assert {e["field"] for e in body["errors"]} == {"vector", "dest", "trigger"}


async def test_body_too_large_content_length() -> None:
    async with client_for(make_app(max_body_bytes=64)) as c:
        r = await c.post("/v1/vms", json={"id": "x" * 100})
        body = assert_problem(r, 413, slug="payload-too-large")
        assert body["limit"] == "IRQLAB_MAX_BODY_BYTES" and body["max"] == 64
        assert (await c.post("/v1/vms", json={"id": "small"})).status_code == 201


async def test_body_too_large_chunked() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"id": "'
        for _ in range(10):
            yield b"x" * 20
        yield b'"}'

    async with client_for(make_app(max_body_bytes=64)) as c:
        r = await c.post("/v1/vms", content=chunks(),
                         headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers
        assert_problem(r, 413, slug="payload-too-large")
        assert (await c.get("/v1/vms")).json() == {"vms": []}


async def test_bad_content_length(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/vms", content=b"{}",
                          headers={"content-type": "application/json", "content-length": "x"})
    assert_problem(r, 400, slug="bad-request")


async def test_unexpected_error_is_500_problem_and_unlocks(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    app = make_app()
    async with client_for(app, raise_app_exceptions=False) as c:
        vm = (await c.post("/v1/vms", json={})).json()["id"]

        def boom(self: Vm, n: int) -> None:
            raise RuntimeError("engine bug")

        monkeypatch.setattr(Vm, "ack", boom)
        r = await c.post(f"/v1/vms/{vm}/vcpus/0/ack")
        body = assert_problem(r, 500, slug="internal-error")
        assert "engine bug" not in body["detail"]
        monkeypatch.undo()
        # The VM's lock was released.
        assert (await c.post(f"/v1/vms/{vm}/vcpus/0/ack")).status_code == 200


async def test_problem_types_documented(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    for slug, pt in PROBLEM_TYPES.items():
        r = await client.get(f"/problems/{slug}")
        assert r.status_code == 200 and r.json()["status"] == pt.status
    assert_problem(await client.get("/problems/nope"), 404, "slug")
    vm = await make_vm()
    body = assert_problem(await client.get(f"/v1/vms/{vm}/vcpus/3"), 404)
    r = await client.get(body["type"])
    assert r.json()["slug"] == "not-found"


async def test_hex_strings(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm()
    for good in ("0x40", "0X40", 64):
        r = await client.put(f"/v1/vms/{vm}/ioapic/pins/1", json={"vector": good})
        assert r.json()["vector"] == 64
    for bad in ("64", "0x", "40h", " 0x40", "0x40 ", -1, 64.0, [64], None, False):
        r = await client.put(f"/v1/vms/{vm}/ioapic/pins/1", json={"vector": bad})
        assert_problem(r, 422, "vector")


async def test_second_irqchip_is_eexist(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    """KVM_CREATE_IRQCHIP / KVM_CAP_SPLIT_IRQCHIP on a VM that has an irqchip: -EEXIST, after
    the argument check (too many reserved pins: -EINVAL)."""
    for irqchip in ("kernel", "split"):
        vm = await make_vm(irqchip=irqchip)
        for mode in ("kernel", "split"):
            r = await client.post(f"/v1/vms/{vm}/irqchip", json={"mode": mode})
            body = assert_problem(r, 409, "mode")
            assert body["kvm_errno"] == "EEXIST"
            assert ("KVM_CREATE_IRQCHIP" if mode == "kernel" else "KVM_CAP_SPLIT_IRQCHIP") \
                in body["detail"]
        r = await client.post(f"/v1/vms/{vm}/irqchip",
                              json={"mode": "split", "nr_reserved_ioapic_pins": 5000})
        assert assert_problem(r, 400, "nr_reserved_ioapic_pins")["kvm_errno"] == "EINVAL"
    assert_problem(await client.post(f"/v1/vms/{vm}/irqchip", json={"mode": "pic"}), 422,
                   "mode")
    assert_problem(await client.post("/v1/vms/nope/irqchip", json={"mode": "kernel"}), 404,
                   "vm")
