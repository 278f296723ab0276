"""VM lifecycle, profiles, and the limits on VMs and vCPUs."""

from __future__ import annotations

import re

import httpx
import pytest

from app.engine import flags as F

from .conftest import MakeVm, assert_problem, client_for, make_app

pytestmark = pytest.mark.anyio


async def test_create_defaults(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/vms", json={})
    assert r.status_code == 201
    vm = r.json()
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", vm["id"])
    assert r.headers["location"] == f"/v1/vms/{vm['id']}"
    assert vm["vcpus"] == 1 and vm["irqchip"] == "kernel" and vm["profile"] == "linux-latest"
    assert vm["apicv"] is False and vm["nr_reserved_ioapic_pins"] == 24
    assert vm["ioapic_version"] == 0x11
    assert vm["flags"] == F.as_dict(F.PRESETS["linux-latest"].flags)
    assert vm["time"] == 0


async def test_create_split_with_overrides_and_extras(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/vms", json={
        "id": "split-1", "vcpus": "0x2", "irqchip": "split", "profile": "linux-6.2",
        "overrides": {"split_scan_keeps_pending_level": False}, "apicv": True,
        "nr_reserved_ioapic_pins": 16, "x2apic": True, "x2apic_format": True,
        "broadcast_quirk_disabled": True, "vector_hashing": False, "event_log": False,
        "x2apic_cpuid": False,
    })
    assert r.status_code == 201, r.text
    vm = r.json()
    assert vm["id"] == "split-1" and vm["vcpus"] == 2
    assert vm["ioapic_version"] == 0x20  # QEMU's default
    assert vm["flags"]["split_scan_keeps_pending_level"] is False
    assert vm["overrides"] == {"split_scan_keeps_pending_level": False}
    for key in ("apicv", "x2apic", "x2apic_format", "broadcast_quirk_disabled"):
        assert vm[key] is True
    assert vm["vector_hashing"] is False and vm["event_log"] is False
    assert vm["nr_reserved_ioapic_pins"] == 16


async def test_ioapic_version_choice(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/vms", json={"irqchip": "split", "ioapic_version": "0x11"})
    assert r.json()["ioapic_version"] == 0x11
    r = await client.post("/v1/vms", json={"irqchip": "kernel", "ioapic_version": "0x20"})
    body = assert_problem(r, 400, "ioapic_version", "invalid-operation")
    assert body["kvm_errno"] == "EINVAL"


@pytest.mark.parametrize(("body", "field"), [
    ({"nr_reserved_ioapic_pins": 4097, "irqchip": "split"}, "nr_reserved_ioapic_pins"),
    ({"nr_reserved_ioapic_pins": 16}, "nr_reserved_ioapic_pins"),
    ({"vcpus": 256}, "x2apic"),
    ({"overrides": {"split_suppress_eoi_broadcast": True}},
     "overrides.split_suppress_eoi_broadcast"),
    ({"irqchip": "split", "overrides": {"split_suppress_eoi_broadcast": True,
                                        "suppress_eoi_broadcast_disabled": True}},
     "overrides.suppress_eoi_broadcast_disabled"),
])
async def test_kvm_refuses_configuration(client: httpx.AsyncClient, body: dict[str, object],
                                         field: str) -> None:
    assert_problem(await client.post("/v1/vms", json=body), 400, field, "invalid-operation")


@pytest.mark.parametrize(("body", "field"), [
    ({"vcpus": True}, "vcpus"),
    ({"vcpus": 0}, "vcpus"),
    ({"vcpus": 4097}, "vcpus"),
    ({"vcpus": "12"}, "vcpus"),
    ({"vcpus": 1.0}, "vcpus"),
    ({"irqchip": "userspace"}, "irqchip"),
    ({"profile": "linux-9.9"}, "profile"),
    ({"overrides": {"no_such_flag": True}}, "overrides.no_such_flag.[key]"),
    ({"overrides": {"eoi_exit_bitmap": 1}}, "overrides.eoi_exit_bitmap"),
    ({"apicv": 1}, "apicv"),
    ({"id": "Bad_Id"}, "id"),
    ({"id": "-x"}, "id"),
    ({"id": "a" * 64}, "id"),
    ({"ioapic_version": False}, "ioapic_version"),
    ({"colour": "blue"}, "colour"),
])
async def test_bad_fields(client: httpx.AsyncClient, body: dict[str, object],
                          field: str) -> None:
    problem = assert_problem(await client.post("/v1/vms", json=body), 422, field,
                             "validation-error")
    assert problem["errors"][0]["field"] == field


async def test_boolean_as_int_message(client: httpx.AsyncClient) -> None:
    problem = assert_problem(await client.post("/v1/vms", json={"vcpus": True}), 422, "vcpus")
    assert "boolean" in problem["detail"]


async def test_list_get_delete(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    a = await make_vm(id="a")
    b = await make_vm(id="b", vcpus=3)
    r = await client.get("/v1/vms")
    assert r.status_code == 200
    assert [v["id"] for v in r.json()["vms"]] == [a, b]
    r = await client.get(f"/v1/vms/{b}")
    assert r.status_code == 200 and r.json()["vcpus"] == 3
    r = await client.delete(f"/v1/vms/{a}")
    assert r.status_code == 204 and r.content == b""
    assert_problem(await client.get(f"/v1/vms/{a}"), 404, "vm", "not-found")
    assert_problem(await client.delete(f"/v1/vms/{a}"), 404, "vm")
    assert [v["id"] for v in (await client.get("/v1/vms")).json()["vms"]] == [b]


async def test_duplicate_id_is_409(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    await make_vm(id="dup")
    body = assert_problem(await client.post("/v1/vms", json={"id": "dup"}), 409, "id",
                          "already-exists")
    assert "dup" in body["detail"]


async def test_vm_count_limit() -> None:
    async with client_for(make_app(max_vms=2)) as c:
        for _ in range(2):
            assert (await c.post("/v1/vms", json={})).status_code == 201
        body = assert_problem(await c.post("/v1/vms", json={}), 409, slug="limit-reached")
        assert body["limit"] == "IRQLAB_MAX_VMS" and body["max"] == 2
        assert "IRQLAB_MAX_VMS" in body["detail"]
        vms = (await c.get("/v1/vms")).json()["vms"]
        await c.delete(f"/v1/vms/{vms[0]['id']}")
        assert (await c.post("/v1/vms", json={})).status_code == 201
        ready = (await c.get("/readyz")).json()
        import app.engine

        assert ready == {"status": "ready", "vms": 2, "max_vms": 2,
                         "engine": app.engine.ENGINE_BUILD, "version": app.__version__}


async def test_vcpu_limit() -> None:
    async with client_for(make_app(max_vcpus=4)) as c:
        assert (await c.post("/v1/vms", json={"vcpus": 4})).status_code == 201
        body = assert_problem(await c.post("/v1/vms", json={"vcpus": 5}), 409, "vcpus",
                              "limit-reached")
        assert body["limit"] == "IRQLAB_MAX_VCPUS" and body["max"] == 4


async def test_profiles(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/profiles")
    assert r.status_code == 200
    doc = r.json()
    assert doc["default"] == "linux-latest"
    assert [p["name"] for p in doc["presets"]] == list(F.PRESETS)
    assert {f["name"] for f in doc["flags"]} == set(F.FLAGS)
    fix = next(f for f in doc["flags"] if f["name"] == "split_scan_keeps_pending_level")
    assert fix["commit"] == "fceb3a36c29a" and fix["release"] == "v6.2" and fix["description"]
    r = await client.get("/v1/profiles/linux-6.1")
    assert r.json()["flags"]["split_scan_keeps_pending_level"] is False
    assert_problem(await client.get("/v1/profiles/linux-0.1"), 404, "name")


async def test_health(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json()["status"] == "ready"
    assert (await client.get("/docs")).status_code == 200
    assert (await client.get("/redoc")).status_code == 200
    assert (await client.get("/openapi.json")).status_code == 200
