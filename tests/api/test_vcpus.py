"""vCPU views, guest LAPIC writes, enter/exit/ack/eoi."""

from __future__ import annotations

import httpx
import pytest

from .conftest import MakeVm, assert_problem

pytestmark = pytest.mark.anyio

ZERO = "0x" + "0" * 64
VIEW_FIELDS = {"apic_id", "x2apic", "ldr", "dfr", "tpr", "ppr", "svr", "irr", "isr", "tmr",
               "pir", "handled_vectors", "pending_requests", "pending_ioapic_eoi"}


async def test_views(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm(vcpus=3)
    r = await client.get(f"/v1/vms/{vm}/vcpus")
    assert r.status_code == 200
    vcpus = r.json()["vcpus"]
    assert [v["vcpu"] for v in vcpus] == [0, 1, 2]
    assert [v["apic_id"] for v in vcpus] == [0, 1, 2]
    v1 = (await client.get(f"/v1/vms/{vm}/vcpus/1")).json()
    assert v1.keys() >= VIEW_FIELDS
    assert v1 == vcpus[1]
    for bitmap in ("irr", "isr", "tmr", "pir", "handled_vectors"):
        assert v1[bitmap] == {"vectors": [], "hex": ZERO}


async def test_unknown_vcpu(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm(vcpus=2)
    for method, path in [("GET", "/vcpus/2"), ("POST", "/vcpus/2/enter"),
                         ("POST", "/vcpus/5/ack"), ("POST", "/vcpus/-1/eoi"),
                         ("POST", "/vcpus/2/exit")]:
        r = await client.request(method, f"/v1/vms/{vm}{path}")
        assert_problem(r, 404, "vcpu", "not-found")
    r = await client.patch(f"/v1/vms/{vm}/vcpus/2/lapic", json={"tpr": 1})
    assert_problem(r, 404, "vcpu")
    assert_problem(await client.get(f"/v1/vms/{vm}/vcpus/one"), 422, "n")
    assert_problem(await client.post("/v1/vms/ghost/vcpus/0/ack"), 404, "vm")


async def test_ack_and_eoi_kernel(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm()
    base = f"/v1/vms/{vm}"
    await client.put(f"{base}/ioapic/pins/5", json={"vector": 0x40, "trigger": "level"})
    r = await client.post(f"{base}/vcpus/0/enter")
    assert r.status_code == 200
    assert r.json()["pending_requests"] == []
    # vector 0: KVM always scans the RTC pin (GSI 8), masked with vector 0 at reset.
    handled = (await client.get(f"{base}/vcpus/0")).json()["handled_vectors"]["vectors"]
    assert handled == [0, 0x40]
    await client.post(f"{base}/ioapic/pins/5/line", json={"level": 1})
    r = await client.post(f"{base}/vcpus/0/ack")
    assert r.status_code == 200 and r.json()["vector"] == 0x40
    v = (await client.get(f"{base}/vcpus/0")).json()
    assert v["isr"]["vectors"] == [0x40] and v["irr"]["vectors"] == []
    assert v["ppr"] == 0x40
    assert (await client.post(f"{base}/vcpus/0/ack")).json()["vector"] is None
    await client.post(f"{base}/ioapic/pins/5/line", json={"level": 0})
    r = await client.post(f"{base}/vcpus/0/eoi")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["vector"] == 0x40 and out["forwarded"] is True
    assert out["ioapic"] == [{"pin": 5, "remote_irr_cleared": True}]
    assert (await client.get(f"{base}/bitmaps")).json()["remote_irr"]["pins"] == []
    r = await client.post(f"{base}/vcpus/0/eoi")
    assert r.json()["vector"] is None and r.json()["forwarded"] is False


async def test_eoi_run_exits_split(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm(irqchip="split")
    base = f"/v1/vms/{vm}"
    await client.put(f"{base}/ioapic/pins/5", json={"vector": 0x40, "trigger": "level"})
    await client.post(f"{base}/vcpus/0/enter")
    await client.post(f"{base}/ioapic/pins/5/line", json={"level": 1})
    await client.post(f"{base}/vcpus/0/ack")
    await client.post(f"{base}/ioapic/pins/5/line", json={"level": 0})
    r = await client.post(f"{base}/vcpus/0/eoi", json={"run_exits": True})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["forwarded"] is True and out["eoi_exit"] == "pending"
    assert out["exits"][0]["reason"] == "KVM_EXIT_IOAPIC_EOI"
    assert out["exits"][0]["ioapic"] == [{"pin": 5, "remote_irr_cleared": True}]
    assert "IOAPIC_EOI_EXIT" not in out["pending_requests"]
    assert_problem(await client.post(f"{base}/vcpus/0/eoi", json={"run_exits": 1}), 422,
                   "run_exits")
    assert_problem(await client.post(f"{base}/vcpus/0/eoi", json={"later": True}), 422,
                   "later")


async def test_exit_guest_with_apicv(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm(apicv=True)
    base = f"/v1/vms/{vm}"
    await client.post(f"{base}/vcpus/0/enter")
    r = await client.post(f"{base}/vcpus/0/exit")
    assert r.status_code == 200
    assert r.json()["vcpu"] == 0 and r.json()["in_guest"] is False
    await client.post(f"{base}/msi", json={"decoded": {"dest": 0, "vector": 0x51}})
    v = (await client.get(f"{base}/vcpus/0")).json()
    assert v["pir"]["vectors"] == [0x51] and v["irr"]["vectors"] == []
    await client.post(f"{base}/vcpus/0/enter")
    v = (await client.get(f"{base}/vcpus/0")).json()
    assert v["pir"]["vectors"] == [] and v["irr"]["vectors"] == [0x51]
    assert v["in_guest"] is True


async def test_lapic_patch(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm(vcpus=2)
    base = f"/v1/vms/{vm}"
    r = await client.patch(f"{base}/vcpus/1/lapic",
                           json={"tpr": "0x20", "dfr": "0xffffffff", "ldr": "0x02000000"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert [w["reg"] for w in out["writes"]] == ["dfr", "ldr", "tpr"]
    assert out["lapic"]["tpr"] == 0x20 and out["lapic"]["ldr"] == 0x02000000
    # DFR/LDR changed the APIC map: every vCPU must rescan. vCPU 1 itself already did, as
    # its guest code ran again for the next write (the request kicked it out of the guest).
    assert any(e["kind"] == "apic-map-recalculated" for e in out["events"])
    assert any(e["actor"] == "vcpu1" and e["kind"] == "scan" for e in out["events"])
    v0 = (await client.get(f"{base}/vcpus/0")).json()
    assert "SCAN_IOAPIC" in v0["pending_requests"]


async def test_lapic_patch_is_all_or_nothing(client: httpx.AsyncClient, make_vm: MakeVm
                                             ) -> None:
    vm = await make_vm()
    base = f"/v1/vms/{vm}"
    r = await client.patch(f"{base}/vcpus/0/lapic", json={"apic_base": "0xfee00d00"})
    assert r.status_code == 200, r.text
    assert r.json()["lapic"]["x2apic"] is True
    before = (await client.get(f"{base}/state")).json()
    # In x2APIC mode the LDR is read-only: the guest takes a #GP, nothing changes (not even
    # the TPR written before it in the same request).
    r = await client.patch(f"{base}/vcpus/0/lapic", json={"tpr": 0x30, "ldr": 1})
    body = assert_problem(r, 400, "ldr", "invalid-operation")
    assert body["fault"] == "#GP"
    assert (await client.get(f"{base}/state")).json() == before
    r = await client.patch(f"{base}/vcpus/0/lapic", json={"apic_base": "0xfee00800"})
    assert_problem(r, 400, "apic_base")


@pytest.mark.parametrize(("body", "field"), [
    ({}, "body"),
    ({"tpr": True}, "tpr"),
    ({"eoi": 0}, "eoi"),
    ({"ldr": "0x1_0"}, "ldr"),
])
async def test_lapic_patch_bad_fields(client: httpx.AsyncClient, make_vm: MakeVm,
                                      body: dict[str, object], field: str) -> None:
    vm = await make_vm()
    assert_problem(await client.patch(f"/v1/vms/{vm}/vcpus/0/lapic", json=body), 422, field)
