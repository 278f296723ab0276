"""Bitmaps, state, the event log, snapshot and restore."""

from __future__ import annotations

import httpx
import pytest

from .conftest import MakeVm, assert_problem, client_for, make_app

pytestmark = pytest.mark.anyio


async def _level_pin_in_service(client: httpx.AsyncClient, vm: str) -> None:
    base = f"/v1/vms/{vm}"
    await client.put(f"{base}/ioapic/pins/5", json={"vector": 0x40, "trigger": "level"})
    await client.post(f"{base}/vcpus/0/enter")
    await client.post(f"{base}/ioapic/pins/5/line", json={"action": "assert"})
    await client.post(f"{base}/vcpus/0/ack")


async def test_bitmaps(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm(vcpus=2, irqchip="split")
    await _level_pin_in_service(client, vm)
    r = await client.get(f"/v1/vms/{vm}/bitmaps")
    assert r.status_code == 200
    b = r.json()
    assert b["remote_irr"] == {"pins": [5], "hex": "0x000020"}
    assert [h["vcpu"] for h in b["handled_vectors"]] == [0, 1]
    assert b["handled_vectors"][0]["vectors"] == [0x40]
    assert b["handled_vectors"][0]["hex"] == "0x" + f"{1 << 0x40:064x}"
    assert b["handled_vectors"][1]["vectors"] == []


async def test_state(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm(vcpus=2)
    await _level_pin_in_service(client, vm)
    await client.post(f"/v1/vms/{vm}/resamplers", json={"gsi": 3})
    r = await client.get(f"/v1/vms/{vm}/state")
    assert r.status_code == 200
    st = r.json()
    assert st["id"] == vm and st["config"]["id"] == vm
    assert st["config"]["ioapic_version"] == 0x11
    assert len(st["ioapic"]["pins"]) == 24 and len(st["vcpus"]) == 2
    assert st["bitmaps"] == (await client.get(f"/v1/vms/{vm}/bitmaps")).json()
    assert st["routes"] == (await client.get(f"/v1/vms/{vm}/routes")).json()["entries"]
    assert st["resamplers"] == [{"gsi": 3, "signalled": 0}]
    assert st["vcpus"][0]["isr"]["vectors"] == [0x40]


async def test_events_paging(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm()
    await _level_pin_in_service(client, vm)
    r = await client.get(f"/v1/vms/{vm}/events")
    assert r.status_code == 200
    page = r.json()
    events = page["events"]
    assert events and [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert page["next_after"] == events[-1]["seq"] == page["last_seq"]
    assert {"seq", "actor", "kind", "fields", "cause"} <= events[0].keys()
    # Causes point backwards.
    assert all(e["cause"] is None or e["cause"] < e["seq"] for e in events)
    r = await client.get(f"/v1/vms/{vm}/events", params={"after": 2, "limit": 3})
    page = r.json()
    assert [e["seq"] for e in page["events"]] == [3, 4, 5] and page["next_after"] == 5
    r = await client.get(f"/v1/vms/{vm}/events", params={"after": page["last_seq"]})
    assert r.json()["events"] == [] and r.json()["next_after"] == page["last_seq"]
    assert_problem(await client.get(f"/v1/vms/{vm}/events", params={"limit": 0}), 422,
                   "limit")
    assert_problem(await client.get(f"/v1/vms/{vm}/events", params={"after": -1}), 422,
                   "after")
    body = assert_problem(await client.get(f"/v1/vms/{vm}/events", params={"limit": 1001}),
                          422, "limit")
    assert "IRQLAB_MAX_EVENTS_PAGE" in body["detail"]


async def test_events_page_limit_setting() -> None:
    async with client_for(make_app(max_events_page=2)) as c:
        vm = (await c.post("/v1/vms", json={"vcpus": 2, "irqchip": "split"})).json()["id"]
        r = await c.put(f"/v1/vms/{vm}/ioapic/pins/5", json={"vector": 0x40})
        assert len(r.json()["events"]) == 2 and r.json()["events_truncated"] is True
        r = await c.get(f"/v1/vms/{vm}/events")
        assert len(r.json()["events"]) == 2
        assert_problem(await c.get(f"/v1/vms/{vm}/events", params={"limit": 3}), 422, "limit")


async def test_snapshot_restore(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    src = await make_vm(vcpus=2, irqchip="split", profile="linux-6.1")
    await _level_pin_in_service(client, src)
    r = await client.get(f"/v1/vms/{src}/snapshot")
    assert r.status_code == 200
    snap = r.json()
    assert snap["version"] == 1 and snap["config"]["irqchip"] == "split"
    dst = await make_vm()
    r = await client.put(f"/v1/vms/{dst}/snapshot", json=snap)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == dst and r.json()["irqchip"] == "split"
    assert r.json()["profile"] == "linux-6.1"
    a = (await client.get(f"/v1/vms/{src}/state")).json()
    b = (await client.get(f"/v1/vms/{dst}/state")).json()
    for key in ("ioapic", "vcpus", "routes", "bitmaps", "resamplers"):
        assert a[key] == b[key]
    # The two VMs now evolve independently and identically.
    for vm in (src, dst):
        await client.post(f"/v1/vms/{vm}/vcpus/0/eoi")
    assert (await client.get(f"/v1/vms/{src}/bitmaps")).json() == (
        await client.get(f"/v1/vms/{dst}/bitmaps")).json()
    assert (await client.get(f"/v1/vms/{src}/events")).json() == (
        await client.get(f"/v1/vms/{dst}/events")).json()


@pytest.mark.parametrize(("mutate", "status", "field"), [
    (lambda s: s.update(version=2), 422, "version"),
    (lambda s: s.pop("ioapic"), 422, "ioapic"),
    (lambda s: s.update(vcpus=[]), 422, "vcpus"),
    (lambda s: s["vcpus"][0].update(irr="lots"), 422, "vcpus[0].irr"),
    (lambda s: s.update(routes=[["x"]]), 422, "routes[0][0]"),
    (lambda s: s["log"].update(events=[[1, 2]]), 400, "log.events[0]"),
    (lambda s: s["log"].update(events=[[5, "vcpu0", "enter", None]]), 400, "log.events"),
    (lambda s: s["log"].update(next_seq="x"), 422, "log.next_seq"),
    (lambda s: s["config"].update(nr_reserved_ioapic_pins=5), 400, "nr_reserved_ioapic_pins"),
])
async def test_restore_malformed(client: httpx.AsyncClient, make_vm: MakeVm,
                                 mutate: object, status: int, field: str) -> None:
    vm = await make_vm()
    snap = (await client.get(f"/v1/vms/{vm}/snapshot")).json()
    before = (await client.get(f"/v1/vms/{vm}/state")).json()
    assert callable(mutate)
    mutate(snap)
    r = await client.put(f"/v1/vms/{vm}/snapshot", json=snap)
    assert_problem(r, status, field)
    assert (await client.get(f"/v1/vms/{vm}/state")).json() == before


@pytest.mark.parametrize(("config", "field"), [
    ({"vcpus": True}, "config.vcpus"),
    ({"irqchip": "userspace"}, "config.irqchip"),
    ({"profile": "linux-0.1"}, "config.profile"),
    ({"colour": "blue"}, "config.colour"),
])
async def test_restore_bad_config_fields(client: httpx.AsyncClient, make_vm: MakeVm,
                                         config: dict[str, object], field: str) -> None:
    vm = await make_vm()
    snap = (await client.get(f"/v1/vms/{vm}/snapshot")).json()
    snap["config"].update(config)
    assert_problem(await client.put(f"/v1/vms/{vm}/snapshot", json=snap), 422, field)


async def test_restore_respects_vcpu_limit() -> None:
    async with client_for(make_app(max_vcpus=2)) as c:
        vm = (await c.post("/v1/vms", json={"vcpus": 2})).json()["id"]
        snap = (await c.get(f"/v1/vms/{vm}/snapshot")).json()
        snap["config"]["vcpus"] = 3
        body = assert_problem(await c.put(f"/v1/vms/{vm}/snapshot", json=snap), 409,
                              "config.vcpus", "limit-reached")
        assert body["limit"] == "IRQLAB_MAX_VCPUS"
        assert_problem(await c.put(f"/v1/vms/{vm}/snapshot", json=[1]), 422, "body")
        assert_problem(await c.put("/v1/vms/nope/snapshot", json=snap), 404, "vm")
