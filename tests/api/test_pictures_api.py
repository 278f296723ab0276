"""Pictures over HTTP: GET …/timeline.svg and …/trace?format=perfetto|vcd of a VM driven
through the API (model and, where /dev/kvm works, kvm backend), scenario runs answered as SVG,
HTML, Perfetto or VCD (by `format` or Accept), `observe`, and the problem+json refusals."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import httpx
import pytest

from app.kvm import detect
from app.pictures.vcd_trace import scope_name
from tests.api.conftest import MakeVm, assert_problem, client_for, make_app
from tests.pictures.signals import read_vcd
from tests.pictures.trace_rules import check_trace

pytestmark = pytest.mark.anyio
SVG = "{http://www.w3.org/2000/svg}"
SEED_RUN = "/v1/scenarios/seed-race-split/run"
KVM_OK, KVM_REASON = detect.kvm_available()


async def seed_race(client: httpx.AsyncClient, make_vm: MakeVm) -> str:
    """The seed race over HTTP on a linux-6.1 split VM: Remote IRR of pin 5 stays set."""
    vm = await make_vm(vcpus=2, irqchip="split", profile="linux-6.1")
    base = f"/v1/vms/{vm}"
    steps = [
        ("PUT", f"{base}/ioapic/pins/5", {"vector": 64, "trigger": "level", "dest": 0}),
        ("POST", f"{base}/vcpus/0/enter", None),
        ("POST", f"{base}/vcpus/1/enter", None),
        ("POST", f"{base}/ioapic/pins/5/line", {"level": 1}),
        ("POST", f"{base}/vcpus/0/ack", None),
        ("POST", f"{base}/ioapic/pins/5/line", {"level": 0}),
        ("PATCH", f"{base}/ioapic/pins/5", {"dest": 1, "order": "high-first"}),
        ("POST", f"{base}/vcpus/0/enter", None),
        ("POST", f"{base}/vcpus/1/enter", None),
        ("POST", f"{base}/vcpus/0/eoi", None),
        ("POST", f"{base}/vcpus/0/enter", None),
    ]
    for method, path, body in steps:
        r = await client.request(method, path, json=body)
        assert r.status_code == 200, (path, r.text)
    r = await client.get(f"{base}/bitmaps")
    assert r.json()["remote_irr"]["pins"] == [5]
    return vm


async def test_vm_timeline_svg_shows_the_stuck_remote_irr(client: httpx.AsyncClient,
                                                          make_vm: MakeVm) -> None:
    vm = await seed_race(client, make_vm)
    r = await client.get(f"/v1/vms/{vm}/timeline.svg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/svg+xml"
    root = ET.fromstring(r.text)
    lanes = [g.get("data-lane") for g in root.iter(f"{SVG}g") if g.get("class") == "lane"]
    assert lanes == ["device", "ioapic", "vmm", "vcpu0", "vcpu1"]
    spans = {(g.get("data-kind"), g.get("data-name"), g.get("data-stuck"))
             for g in root.iter(f"{SVG}g") if g.get("class") == "span"}
    assert ("remote-irr", "Remote IRR pin 5", "true") in spans
    findings = {g.get("data-kind") for g in root.iter(f"{SVG}g") if g.get("class") == "finding"}
    assert "remote-irr-stuck" in findings
    # A window: only events after `after`, at most `limit`.
    r = await client.get(f"/v1/vms/{vm}/timeline.svg", params={"after": 10, "limit": 5})
    seqs = [int(g.get("data-seq", "0")) for g in ET.fromstring(r.text).iter(f"{SVG}g")
            if g.get("class") == "event"]
    assert seqs == [11, 12, 13, 14, 15]


async def test_vm_traces(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await seed_race(client, make_vm)
    r = await client.get(f"/v1/vms/{vm}/trace")  # perfetto by default
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    trace = r.json()
    assert check_trace(trace) == []
    assert any(e["name"] == "process_name" and e["args"]["name"] == vm
               for e in trace["traceEvents"])
    r = await client.get(f"/v1/vms/{vm}/trace", params={"format": "vcd"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/x-vcd")
    signals = read_vcd(r.text)
    rirr = signals[f"irqlab.{scope_name(vm)}.ioapic.pin5_remote_irr"]
    assert rirr[-1][1] == 1


async def test_picture_refusals(client: httpx.AsyncClient, make_vm: MakeVm) -> None:
    vm = await make_vm(vcpus=1)
    assert_problem(await client.get(f"/v1/vms/{vm}/trace", params={"format": "png"}), 422,
                   field="format")
    body = assert_problem(await client.get(f"/v1/vms/{vm}/timeline.svg",
                                           params={"limit": 10**6}), 422, field="limit")
    assert body["limit"] == "IRQLAB_MAX_PICTURE_EVENTS" and body["max"] == 5000
    assert_problem(await client.get(f"/v1/vms/{vm}/timeline.svg", params={"after": -1}), 422,
                   field="after")
    assert_problem(await client.get("/v1/vms/nope/timeline.svg"), 404, field="vm")
    assert_problem(await client.post(SEED_RUN, params={"format": "gif"}), 422, field="format")
    body = assert_problem(await client.post(SEED_RUN, params={"variant": "linux-9"}), 422,
                          field="variant")
    assert "linux-6.1 (before fceb3a36c29a)" in body["detail"]


async def test_a_run_too_large_to_draw_is_refused() -> None:
    async with client_for(make_app(max_picture_events=20)) as c:
        body = assert_problem(await c.post(SEED_RUN, params={"format": "svg"}), 422,
                              field="format")
        assert body["limit"] == "IRQLAB_MAX_PICTURE_EVENTS" and body["max"] == 20
        assert (await c.post(SEED_RUN)).status_code == 200  # JSON is not a picture


async def test_scenario_run_pictures(client: httpx.AsyncClient) -> None:
    r = await client.post(SEED_RUN, params={"format": "svg"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/svg+xml"
    assert len(ET.fromstring(r.text).findall(f"{SVG}svg")) == 3  # the variants, stacked
    r = await client.post(SEED_RUN, params={"format": "svg", "variant": "0"})
    root = ET.fromstring(r.text)
    assert root.findall(f"{SVG}svg") == [] and "linux-6.1" in root.findtext(f"{SVG}title", "")
    r = await client.post(SEED_RUN, headers={"accept": "text/html"})
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert "First divergence after <b>step 10</b>" in r.text
    r = await client.post(SEED_RUN, params={"format": "perfetto", "profile": "linux-6.2"})
    assert check_trace(r.json()) == []
    r = await client.post(SEED_RUN, params={"format": "vcd"})
    assert len({k.split(".")[1] for k in read_vcd(r.text)}) == 3


async def test_a_posted_document_as_html(client: httpx.AsyncClient) -> None:
    doc = {"name": "tiny", "vm": {"vcpus": 1},
           "steps": [{"op": "write_rte", "pin": 1, "entry": {"vector": 0x30, "dest": 0}},
                     {"op": "line", "pin": 1, "action": "pulse"},
                     {"op": "expect", "label": "pending", "vcpus": {"0": {"irr": [0x30]}}}]}
    r = await client.post("/v1/scenarios/run", params={"format": "html"},
                          content=json.dumps(doc), headers={"content-type": "application/json"})
    assert r.status_code == 200 and "tiny" in r.text and "✓ passed" in r.text


async def test_observe_adds_step_boundaries_and_state(client: httpx.AsyncClient) -> None:
    r = await client.post(SEED_RUN, params={"observe": "true", "variant": "linux-6.1 (before "
                                            "fceb3a36c29a)"})
    assert r.status_code == 200
    (v,) = r.json()["variants"]
    steps = v["steps"]
    assert [s["last_seq"] for s in steps] == sorted(s["last_seq"] for s in steps)
    assert steps[-1]["last_seq"] == v["events"][-1]["seq"]
    assert steps[-1]["state"]["remote_irr"] == [5]
    assert steps[10]["state"]["vcpus"][0]["handled_vectors"] == []
    plain = (await client.post(SEED_RUN)).json()
    assert "last_seq" not in plain["variants"][0]["steps"][0]


@pytest.mark.skipif(not KVM_OK, reason=f"real KVM unavailable: {KVM_REASON}")
async def test_kvm_backend_vm_is_drawn_from_its_log() -> None:
    async with client_for(make_app()) as c:
        r = await c.post("/v1/vms", json={"backend": "kvm", "vcpus": 1})
        assert r.status_code == 201, r.text
        vm = r.json()["id"]
        try:
            r = await c.put(f"/v1/vms/{vm}/ioapic/pins/4", json={"vector": 0x44, "dest": 0})
            assert r.status_code == 200, r.text
            r = await c.get(f"/v1/vms/{vm}/timeline.svg")
            assert r.status_code == 200
            kinds = {g.get("data-kind") for g in ET.fromstring(r.text).iter(f"{SVG}g")
                     if g.get("class") == "event"}
            assert "create-vm" in kinds
            assert check_trace((await c.get(f"/v1/vms/{vm}/trace")).json()) == []
        finally:
            await c.delete(f"/v1/vms/{vm}")


def test_accept_negotiation() -> None:
    from app.api.pictures import negotiate

    assert negotiate(None, None) == "json"
    assert negotiate(None, "*/*") == "json"
    assert negotiate(None, "text/html,application/xhtml+xml;q=0.9") == "html"
    assert negotiate(None, "application/json, text/html") == "json"
    assert negotiate(None, "image/svg+xml") == "svg"
    assert negotiate("vcd", "text/html") == "vcd"


async def test_library_pictures_by_get(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/scenarios/seed-race-split/timeline.svg",
                         params={"variant": "0", "irqchip": "split"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/svg+xml"
    again = await client.get("/v1/scenarios/seed-race-split/timeline.svg",
                             params={"variant": "0", "irqchip": "split"})
    assert again.content == r.content  # deterministic: a stable URL for a picture
    assert "never cleared: Remote IRR pin 5" in r.text
    r = await client.get("/v1/scenarios/seed-race-split/report.html",
                         params={"profile": "linux-6.1"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert_problem(await client.get("/v1/scenarios/nope/timeline.svg"), 404, field="name")
    assert_problem(await client.get("/v1/scenarios/seed-race-split/report.html",
                                    params={"variant": "9"}), 422, field="variant")
