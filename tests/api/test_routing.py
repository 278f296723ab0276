"""GSI routing, KVM_SIGNAL_MSI, KVM_IRQ_LINE, resamplers and the clock."""

from __future__ import annotations

import httpx
import pytest

from .conftest import MakeVm, assert_problem

pytestmark = pytest.mark.anyio


async def test_default_routes(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    kernel = await make_vm()
    entries = (await client.get(f"/v1/vms/{kernel}/routes")).json()["entries"]
    gsi3 = [e for e in entries if e["gsi"] == 3]
    assert [e["irqchip"] for e in gsi3] == [{"chip": "pic-master", "pin": 3},
                                            {"chip": "ioapic", "pin": 3}]
    assert all(e["msi"] is None for e in gsi3)
    split = await make_vm(irqchip="split")
    entries = (await client.get(f"/v1/vms/{split}/routes")).json()["entries"]
    assert len(entries) == 24
    assert entries[0]["msi"] == {"address_lo": 0, "address_hi": 0, "data": 0}
    assert entries[0]["decoded"]["vector"] == 0


async def test_put_routes_forms(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm(vcpus=2, irqchip="split")
    r = await client.put(f"/v1/vms/{vm}/routes", json={"entries": [
        {"gsi": 5, "decoded": {"dest": 1, "vector": "0x40", "trigger": "level"}},
        {"gsi": 6, "msi": {"address_lo": "0xfee00000", "data": "0x41"}},
        {"gsi": 7, "decoded": {"dest": 3, "dest_mode": "logical", "vector": 0x42,
                               "delivery_mode": "lowest", "redirection_hint": True}},
    ]})
    assert r.status_code == 200, r.text
    out = r.json()
    by_gsi = {e["gsi"]: e for e in out["entries"]}
    assert by_gsi[5]["msi"] == {"address_lo": 0xFEE01000, "address_hi": 0, "data": 0xC040}
    assert by_gsi[5]["decoded"]["trigger"] == "level" and by_gsi[5]["decoded"]["dest"] == 1
    assert by_gsi[6]["decoded"] == {"dest": 0, "dest_mode": "physical", "vector": 0x41,
                                    "trigger": "edge", "delivery_mode": 0,
                                    "redirection_hint": False}
    assert by_gsi[7]["decoded"]["dest_mode"] == "logical"
    assert by_gsi[7]["decoded"]["delivery_mode"] == 1
    assert by_gsi[7]["decoded"]["redirection_hint"] is True
    # Split mode: the new table makes KVM rescan every vCPU.
    vcpus = (await client.get(f"/v1/vms/{vm}/vcpus")).json()["vcpus"]
    assert all("SCAN_IOAPIC" in v["pending_requests"] for v in vcpus)
    # A GET body can be PUT back unchanged.
    got = (await client.get(f"/v1/vms/{vm}/routes")).json()
    strip = {"entries": [{k: v for k, v in e.items() if v is not None}
                         for e in got["entries"]]}
    r = await client.put(f"/v1/vms/{vm}/routes", json=strip)
    assert r.status_code == 200, r.text
    assert r.json()["entries"] == got["entries"]


async def test_put_routes_kernel_irqchip(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm()
    r = await client.put(f"/v1/vms/{vm}/routes", json={"entries": [
        {"gsi": 9, "irqchip": {"chip": "ioapic", "pin": 9}},
        {"gsi": 9, "irqchip": {"chip": "pic-slave", "pin": 1}},
    ]})
    assert r.status_code == 200, r.text
    assert len(r.json()["entries"]) == 2


@pytest.mark.parametrize(("kw", "entries", "field", "kvm_reason"), [
    ({"irqchip": "split"}, [{"gsi": 1, "irqchip": {"chip": "ioapic", "pin": 1}}],
     "entries[0].irqchip", "split irqchip"),
    ({}, [{"gsi": 1, "irqchip": {"chip": "ioapic", "pin": 1}},
          {"gsi": 1, "irqchip": {"chip": "ioapic", "pin": 2}}], "entries[1]", "at most one"),
    ({}, [{"gsi": 1, "irqchip": {"chip": "ioapic", "pin": 24}}], "entries[0].irqchip.pin",
     "pin"),
    ({}, [{"gsi": 1, "irqchip": {"chip": "pic-master", "pin": 8}}],
     "entries[0].irqchip.pin", "pin"),
    ({}, [{"gsi": 4096, "msi": {"address_lo": 0, "data": 0}}], "entries[0].gsi", "gsi"),
    ({}, [{"gsi": 1, "msi": {"address_lo": 0, "data": 0}},
          {"gsi": 1, "msi": {"address_lo": 0, "data": 0}}], "entries[1]", "MSI"),
    ({}, [{"gsi": 1, "decoded": {"dest": 300, "vector": 1}}], "entries[0].decoded.dest",
     "x2apic"),
    ({"x2apic_format": True}, [{"gsi": 1, "msi": {"address_lo": 0, "address_hi": 1,
                                                  "data": 0}}],
     "entries[0].msi.address_hi", "32-bit"),
])
async def test_put_routes_kvm_invalid(client: httpx.AsyncClient, make_vm: MakeVm,
                                      kw: dict[str, object], entries: list[object],
                                      field: str, kvm_reason: str) -> None:
    vm = await make_vm(**kw)
    before = (await client.get(f"/v1/vms/{vm}/routes")).json()
    r = await client.put(f"/v1/vms/{vm}/routes", json={"entries": entries})
    body = assert_problem(r, 400, field, "invalid-operation")
    assert body["kvm_errno"] == "EINVAL" and kvm_reason in body["detail"]
    assert (await client.get(f"/v1/vms/{vm}/routes")).json() == before


@pytest.mark.parametrize(("entry", "field"), [
    ({"gsi": 1}, "entries[0].msi"),
    ({"gsi": 1, "irqchip": {"chip": "ioapic", "pin": 1},
      "msi": {"address_lo": 0, "data": 0}}, "entries[0].irqchip"),
    ({"gsi": 1, "irqchip": {"chip": "lapic", "pin": 1}}, "entries[0].irqchip.chip"),
    ({"gsi": True, "msi": {"address_lo": 0, "data": 0}}, "entries[0].gsi"),
    ({"gsi": 1, "msi": {"address_lo": "0x1_0000_0000", "data": 0}},
     "entries[0].msi.address_lo"),
    ({"gsi": 1, "msi": {"address_lo": 0}}, "entries[0].msi.data"),
    ({"gsi": 1, "decoded": {"dest": 0, "vector": 1, "delivery_mode": 8}},
     "entries[0].decoded.delivery_mode"),
])
async def test_put_routes_bad_fields(client: httpx.AsyncClient, make_vm: MakeVm,
                                     entry: dict[str, object], field: str) -> None:
    vm = await make_vm()
    r = await client.put(f"/v1/vms/{vm}/routes", json={"entries": [entry]})
    assert_problem(r, 422, field, "validation-error")


async def test_signal_msi(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm(vcpus=2)
    r = await client.post(f"/v1/vms/{vm}/msi", json={"address_lo": "0xfee01000",
                                                     "data": "0x41"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == 1 and r.json()["delivered_to"] == [1]
    r = await client.post(f"/v1/vms/{vm}/msi", json={"decoded": {"dest": 0, "vector": 0x42}})
    assert r.json()["delivered_to"] == [0]
    assert (await client.get(f"/v1/vms/{vm}/vcpus/1")).json()["irr"]["vectors"] == [0x41]
    # A destination nobody has: delivered to no one.
    r = await client.post(f"/v1/vms/{vm}/msi", json={"decoded": {"dest": 7, "vector": 0x43}})
    assert r.json()["delivered_to"] == [] and r.json()["status"] == 0


@pytest.mark.parametrize(("body", "field"), [
    ({}, "address_lo"),
    ({"address_lo": 0}, "data"),
    ({"data": 0}, "address_lo"),
    ({"address_lo": 0, "data": 0, "decoded": {"dest": 0, "vector": 1}}, "decoded"),
    ({"address_lo": 0, "data": True}, "data"),
])
async def test_signal_msi_bad_fields(client: httpx.AsyncClient, make_vm: MakeVm,
                                     body: dict[str, object], field: str) -> None:
    vm = await make_vm()
    assert_problem(await client.post(f"/v1/vms/{vm}/msi", json=body), 422, field)


async def test_signal_msi_x2apic_format(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm(x2apic_format=True)
    r = await client.post(f"/v1/vms/{vm}/msi", json={"address_lo": "0xfee00000",
                                                     "address_hi": 1, "data": 0x30})
    assert_problem(r, 400, "address_hi", "invalid-operation")


async def test_irq_line(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm()
    await client.put(f"/v1/vms/{vm}/ioapic/pins/10", json={"vector": 0x70, "trigger": "level"})
    r = await client.post(f"/v1/vms/{vm}/irq", json={"gsi": 10, "level": 1})
    assert r.status_code == 200, r.text
    assert r.json()["gsi"] == 10 and r.json()["status"] == 1 and r.json()["delivered_to"] == [0]
    assert (await client.get(f"/v1/vms/{vm}/bitmaps")).json()["remote_irr"]["pins"] == [10]
    r = await client.post(f"/v1/vms/{vm}/irq", json={"gsi": 4096, "level": 1})
    assert_problem(r, 400, "gsi")
    assert_problem(await client.post(f"/v1/vms/{vm}/irq", json={"gsi": 1, "level": False}),
                   422, "level")


async def test_resamplers(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm()
    await client.put(f"/v1/vms/{vm}/ioapic/pins/5", json={"vector": 0x40, "trigger": "level"})
    await client.post(f"/v1/vms/{vm}/vcpus/0/enter")
    r = await client.post(f"/v1/vms/{vm}/resamplers", json={"gsi": 5})
    assert r.status_code == 201, r.text
    assert r.json()["gsi"] == 5 and r.json()["signalled"] == 0
    body = assert_problem(await client.post(f"/v1/vms/{vm}/resamplers", json={"gsi": 5}),
                          409, "gsi", "already-exists")
    # irqlab's rule (one resampler per GSI); KVM_IRQFD would share the GSI's resampler.
    assert "kvm_errno" not in body and "irqlab's rule" in body["detail"]
    r = await client.post(f"/v1/vms/{vm}/resamplers/5/irqfd")
    assert r.status_code == 200, r.text
    assert r.json()["delivered_to"] == [0]
    await client.post(f"/v1/vms/{vm}/vcpus/0/ack")
    await client.post(f"/v1/vms/{vm}/vcpus/0/eoi")
    r = await client.get(f"/v1/vms/{vm}/resamplers")
    assert r.json() == {"resamplers": [{"gsi": 5, "signalled": 1}]}
    assert_problem(await client.post(f"/v1/vms/{vm}/resamplers/6/irqfd"), 404, "gsi")
    assert_problem(await client.post(f"/v1/vms/{vm}/resamplers", json={"gsi": 4096}), 400,
                   "gsi")


async def test_clock(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm()
    r = await client.post(f"/v1/vms/{vm}/clock", json={"advance_us": 10_000})
    assert r.status_code == 200, r.text
    assert r.json()["now"] == 10_000 and r.json()["ran_delayed_injection"] is False
    assert (await client.get(f"/v1/vms/{vm}")).json()["time"] == 10_000
    assert_problem(await client.post(f"/v1/vms/{vm}/clock", json={"advance_us": -1}), 422,
                   "advance_us")
