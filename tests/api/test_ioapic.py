"""IOAPIC view, guest RTE writes (PUT/PATCH), input lines, raw MMIO."""

from __future__ import annotations

import httpx
import pytest

from .conftest import MakeVm, assert_problem

pytestmark = pytest.mark.anyio

PIN_FIELDS = {"pin", "vector", "delivery_mode", "dest_mode", "dest", "trigger", "polarity",
              "masked", "remote_irr", "delivery_status", "line", "raw"}


async def test_get_ioapic(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm()
    r = await client.get(f"/v1/vms/{vm}/ioapic")
    assert r.status_code == 200
    io = r.json()
    assert io["id"] == 0 and io["version"] == 0x11 and io["flavour"] == "kvm"
    assert len(io["pins"]) == 24
    pin = io["pins"][3]
    assert pin.keys() >= PIN_FIELDS
    assert pin["pin"] == 3 and pin["masked"] is True and pin["raw"] == "0x0000000000010000"
    assert pin["line"] == 0 and pin["remote_irr"] is False
    r = await client.get(f"/v1/vms/{vm}/ioapic/pins/3")
    assert r.json() == pin


async def test_put_fields(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm(vcpus=2)
    r = await client.put(f"/v1/vms/{vm}/ioapic/pins/5", json={
        "vector": "0x40", "trigger": "level", "dest": 1, "dest_mode": "physical",
        "polarity": "low", "delivery_mode": "lowest"})
    assert r.status_code == 200, r.text
    pin = r.json()
    assert pin["vector"] == 0x40 and pin["trigger"] == "level" and pin["dest"] == 1
    assert pin["polarity"] == "low" and pin["delivery_mode"] == "lowest"
    assert pin["masked"] is False
    assert pin["raw"] == "0x010000000000a140"
    # Done as a guest: IOREGSEL/IOWIN writes by vCPU 0, low dword first, scan requests.
    mmio = [e for e in pin["events"] if e["kind"] == "ioapic-mmio"]
    assert [e["actor"] for e in mmio] == ["vcpu0"] * 4
    assert [e["fields"]["value"] for e in mmio] == [0x1A, 0xA140, 0x1B, 0x01000000]
    assert any(e["kind"] == "request" and e["fields"]["request"] == "SCAN_IOAPIC"
               for e in pin["events"])


async def test_put_raw_high_first_by_vcpu1(client: httpx.AsyncClient, make_vm: MakeVm
                                           ) -> None:
    vm = await make_vm(vcpus=2)
    r = await client.put(f"/v1/vms/{vm}/ioapic/pins/7",
                         json={"raw": "0x020000000000a033", "vcpu": 1, "order": "high-first"})
    assert r.status_code == 200, r.text
    assert r.json()["raw"] == "0x020000000000a033"
    halves = [e["fields"]["half"] for e in r.json()["events"] if e["kind"] == "rte-write"]
    assert halves == ["high", "low"]
    assert {e["actor"] for e in r.json()["events"] if e["kind"] == "ioapic-mmio"} == {"vcpu1"}


async def test_put_readonly_bits_follow_profile(client: httpx.AsyncClient, make_vm: MakeVm
                                                ) -> None:
    """Since b200dded0a69 both read-only bits keep their values; before it delivery status
    was stored as written, and a low-dword write cleared Remote IRR whatever bit 14 said."""
    new = await make_vm()
    old = await make_vm(profile="linux-4.14")
    body = {"vector": 0x30, "trigger": "level", "remote_irr": True, "delivery_status": True}
    got_new = (await client.put(f"/v1/vms/{new}/ioapic/pins/2", json=body)).json()
    got_old = (await client.put(f"/v1/vms/{old}/ioapic/pins/2", json=body)).json()
    assert (got_new["remote_irr"], got_new["delivery_status"]) == (False, False)
    assert (got_old["remote_irr"], got_old["delivery_status"]) == (False, True)


@pytest.mark.parametrize(("body", "field"), [
    ({"raw": 0, "vector": 1}, "raw"),
    ({"masked": True}, "vector"),
    ({"vector": True}, "vector"),
    ({"vector": 256}, "vector"),
    ({"vector": "0x4g"}, "vector"),
    ({"vector": 1, "trigger": "both"}, "trigger"),
    ({"vector": 1, "delivery_mode": "broadcast"}, "delivery_mode"),
    ({"vector": 1, "dest": 256}, "dest"),
    ({"raw": "0x1ffffffffffffffff"}, "raw"),
    ({"vector": 1, "order": "middle-out"}, "order"),
    ({"vector": 1, "vcpu": False}, "vcpu"),
])
async def test_put_bad_fields(client: httpx.AsyncClient, make_vm: MakeVm,
                              body: dict[str, object], field: str) -> None:
    vm = await make_vm()
    assert_problem(await client.put(f"/v1/vms/{vm}/ioapic/pins/1", json=body), 422, field)


async def test_pin_out_of_range_and_unknown_vcpu(client: httpx.AsyncClient, make_vm: MakeVm
                                                 ) -> None:
    vm = await make_vm()
    assert_problem(await client.get(f"/v1/vms/{vm}/ioapic/pins/24"), 422, "pin")
    assert_problem(await client.put(f"/v1/vms/{vm}/ioapic/pins/x", json={"vector": 1}),
                   422, "pin")
    assert_problem(await client.put(f"/v1/vms/{vm}/ioapic/pins/1",
                                    json={"vector": 1, "vcpu": 1}), 404, "vcpu", "not-found")
    assert_problem(await client.get("/v1/vms/none/ioapic"), 404, "vm")


async def test_line_route_validates_its_own_path_parameters(
        client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    """The line route parses vm and pin itself (app/api/deps.py): same answers as the
    routes whose parameters FastAPI validates."""
    vm = await make_vm()
    for bad in ("24", "-1", "x", "1.5"):
        r = await client.post(f"/v1/vms/{vm}/ioapic/pins/{bad}/line", json={"level": 1})
        body = assert_problem(r, 422, "pin")
        other = (await client.get(f"/v1/vms/{vm}/ioapic/pins/{bad}")).json()
        assert body["detail"] == other["detail"], (body, other)
    assert_problem(await client.post("/v1/vms/none/ioapic/pins/1/line", json={"level": 1}),
                   404, "vm")
    assert (await client.post(f"/v1/vms/{vm}/ioapic/pins/0x5/line",
                              json={"level": 1})).status_code == 422


async def test_patch_writes_only_the_needed_dword(client: httpx.AsyncClient, make_vm: MakeVm
                                                  ) -> None:
    vm = await make_vm(vcpus=2)
    await client.put(f"/v1/vms/{vm}/ioapic/pins/5", json={"vector": 0x40, "trigger": "level"})
    r = await client.patch(f"/v1/vms/{vm}/ioapic/pins/5", json={"dest": 1})
    assert r.status_code == 200, r.text
    pin = r.json()
    assert pin["dest"] == 1 and pin["vector"] == 0x40 and pin["trigger"] == "level"
    assert [e["fields"]["half"] for e in pin["events"] if e["kind"] == "rte-write"] == ["high"]
    r = await client.patch(f"/v1/vms/{vm}/ioapic/pins/5",
                           json={"masked": True, "dest": 0, "order": "high-first"})
    assert [e["fields"]["half"] for e in r.json()["events"] if e["kind"] == "rte-write"] == [
        "high", "low"]
    assert r.json()["masked"] is True
    assert_problem(await client.patch(f"/v1/vms/{vm}/ioapic/pins/5", json={}), 422, "body")
    assert_problem(await client.patch(f"/v1/vms/{vm}/ioapic/pins/5", json={"raw": 1}), 422,
                   "raw")
    assert_problem(await client.patch(f"/v1/vms/{vm}/ioapic/pins/5", json={"masked": 1}),
                   422, "masked")


async def test_line_kernel_level(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm()
    base = f"/v1/vms/{vm}/ioapic/pins/9"
    await client.put(base, json={"vector": 0x50, "trigger": "level"})
    r = await client.post(f"{base}/line", json={"level": 1})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["remote_irr"] is True and out["pin"] == 9 and out["source"] == 0
    assert out["steps"] == [{"level": 1, "status": 1, "delivered_to": [0],
                             "outcome": "delivered", "reason": None}]
    assert (await client.get(base)).json()["line"] == 1
    # Remote IRR set: a second source's assert is refused.
    r = await client.post(f"{base}/line", json={"action": "assert", "source": 3})
    step = r.json()["steps"][0]
    assert step["outcome"] == "blocked" and step["reason"] == "remote-irr"
    assert step["delivered_to"] == []
    assert (await client.get(base)).json()["sources"] == [0, 3]
    r = await client.post(f"{base}/line", json={"action": "deassert"})
    assert r.json()["steps"][0]["outcome"] != "lowered"  # source 3 still holds it high
    r = await client.post(f"{base}/line", json={"level": 0, "source": 3})
    assert r.json()["steps"][0]["outcome"] == "lowered"


async def test_line_masked_edge_and_pulse(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm()
    r = await client.post(f"/v1/vms/{vm}/ioapic/pins/4/line", json={"action": "assert"})
    assert r.json()["steps"][0]["outcome"] == "blocked"
    assert r.json()["steps"][0]["reason"] == "masked"
    await client.put(f"/v1/vms/{vm}/ioapic/pins/3", json={"vector": 0x33})
    r = await client.post(f"/v1/vms/{vm}/ioapic/pins/3/line", json={"action": "pulse"})
    steps = r.json()["steps"]
    assert [s["level"] for s in steps] == [1, 0]
    assert steps[0]["outcome"] == "delivered" and steps[0]["delivered_to"] == [0]
    assert steps[1]["outcome"] == "lowered"
    vcpu = (await client.get(f"/v1/vms/{vm}/vcpus/0")).json()
    assert vcpu["irr"]["vectors"] == [0x33] and vcpu["tmr"]["vectors"] == []


async def test_line_split_blocked_and_dropped(client: httpx.AsyncClient, make_vm: MakeVm
                                              ) -> None:
    vm = await make_vm(irqchip="split")
    r = await client.post(f"/v1/vms/{vm}/ioapic/pins/3/line", json={"action": "pulse"})
    assert r.json()["steps"][0]["outcome"] == "dropped"
    assert r.json()["steps"][0]["reason"] == "masked"
    await client.put(f"/v1/vms/{vm}/ioapic/pins/6", json={"vector": 0x60, "trigger": "level"})
    r = await client.post(f"/v1/vms/{vm}/ioapic/pins/6/line", json={"level": 1})
    assert r.json()["steps"][0]["outcome"] == "delivered"
    r = await client.post(f"/v1/vms/{vm}/ioapic/pins/6/line", json={"level": 1, "source": 1})
    assert r.json()["steps"][0] | {"delivered_to": []} == r.json()["steps"][0]
    assert r.json()["steps"][0]["outcome"] == "blocked"
    assert r.json()["steps"][0]["reason"] == "remote-irr"


@pytest.mark.parametrize(("body", "field"), [
    ({"level": 1, "action": "assert"}, "level"),
    ({}, "level"),
    ({"level": True}, "level"),
    ({"level": 2}, "level"),
    ({"action": "wiggle"}, "action"),
    ({"level": 1, "source": 64}, "source"),
])
async def test_line_bad_fields(client: httpx.AsyncClient, make_vm: MakeVm,
                               body: dict[str, object], field: str) -> None:
    vm = await make_vm()
    assert_problem(await client.post(f"/v1/vms/{vm}/ioapic/pins/1/line", json=body), 422,
                   field)


async def test_mmio_kernel(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm()
    url = f"/v1/vms/{vm}/ioapic/mmio"
    r = await client.post(url, json={"op": "write", "offset": 0, "value": 1})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] is True
    r = await client.post(url, json={"op": "read", "offset": "0x10", "size": 4})
    assert r.json()["value"] == (23 << 16) | 0x11
    # The window decodes only 0x00 and 0x10; a write to 0x40 (no EOI register in KVM) is
    # ignored.
    r = await client.post(url, json={"op": "write", "offset": "0x40", "value": 0x40})
    assert r.json()["accepted"] is False


async def test_mmio_split_eoi_register(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm(irqchip="split")
    url = f"/v1/vms/{vm}/ioapic/mmio"
    await client.put(f"/v1/vms/{vm}/ioapic/pins/6", json={"vector": 0x60, "trigger": "level"})
    await client.post(f"/v1/vms/{vm}/ioapic/pins/6/line", json={"level": 1})
    await client.post(f"/v1/vms/{vm}/ioapic/pins/6/line", json={"level": 0})
    assert (await client.get(f"/v1/vms/{vm}/bitmaps")).json()["remote_irr"]["pins"] == [6]
    r = await client.post(url, json={"op": "write", "offset": "0x40", "value": "0x60"})
    assert r.status_code == 200, r.text
    assert r.json()["writes"][0]["kind"] == "eoi"
    assert (await client.get(f"/v1/vms/{vm}/bitmaps")).json()["remote_irr"]["pins"] == []
    r = await client.post(url, json={"op": "read", "offset": 0, "size": 8})
    assert "value" in r.json()


@pytest.mark.parametrize(("body", "field"), [
    ({"op": "write", "offset": 0, "size": 3}, "size"),
    ({"op": "write", "offset": 0, "size": True}, "size"),
    ({"op": "write", "offset": 0, "size": 1, "value": 256}, "value"),
    ({"op": "write", "offset": 256}, "offset"),
    ({"op": "poke", "offset": 0}, "op"),
    ({"op": "read"}, "offset"),
])
async def test_mmio_bad_fields(client: httpx.AsyncClient, make_vm: MakeVm,
                               body: dict[str, object], field: str) -> None:
    vm = await make_vm()
    assert_problem(await client.post(f"/v1/vms/{vm}/ioapic/mmio", json=body), 422, field)


async def test_mmio_unknown_vcpu(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm()
    r = await client.post(f"/v1/vms/{vm}/ioapic/mmio", json={"op": "read", "offset": 0,
                                                              "vcpu": 9})
    assert_problem(r, 404, "vcpu")
