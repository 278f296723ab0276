"""/ui in a real browser: a VM created over HTTP appears, its IRR grid cell turns on within a
second of a line assert sent by another client, the seed race's stuck Remote IRR shows in the
IOAPIC table, and clicking an event shows its cause chain. No request leaves the host."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from .conftest import RecordingPage, screenshot


def test_live_irr_cell_and_cause_chain(server: str, page: RecordingPage, shots: Path) -> None:
    api = httpx.Client(base_url=f"{server}/v1")
    api.post("/vms", json={"id": "race", "vcpus": 2, "irqchip": "split",
                           "profile": "linux-6.1"}).raise_for_status()
    api.put("/vms/race/ioapic/pins/5",
            json={"vector": "0x40", "trigger": "level", "dest": 0}).raise_for_status()
    for n in (0, 1):
        api.post(f"/vms/race/vcpus/{n}/enter").raise_for_status()

    p = page.page
    p.goto(f"{server}/ui?vm=race")
    p.locator("#vms a[aria-current]").filter(has_text="race").wait_for(timeout=10_000)
    p.locator("#status.live").wait_for(timeout=10_000)
    cell = '#v0-irr i[data-vec="64"]'
    p.locator(cell).wait_for(timeout=10_000)
    assert "on" not in (p.locator(cell).get_attribute("class") or "")
    assert p.locator("#ioapic tbody tr").count() == 24

    sent = time.monotonic()
    api.post("/vms/race/ioapic/pins/5/line", json={"action": "assert"}).raise_for_status()
    p.locator(cell + ".on").wait_for(timeout=1_000)
    assert time.monotonic() - sent < 1.0
    assert "remote-irr" in (p.locator('#ioapic tr[data-pin="5"]').get_attribute("class") or "")

    # The rest of the seed race under linux-6.1: the EOI is lost, Remote IRR stays set.
    api.post("/vms/race/vcpus/0/ack").raise_for_status()
    p.locator('#v0-isr i[data-vec="64"].on').wait_for(timeout=2_000)
    api.post("/vms/race/ioapic/pins/5/line", json={"action": "deassert"}).raise_for_status()
    api.patch("/vms/race/ioapic/pins/5", json={"dest": 1}).raise_for_status()
    for n in (0, 1):
        api.post(f"/vms/race/vcpus/{n}/enter").raise_for_status()
    last = api.post("/vms/race/vcpus/0/eoi", json={"run_exits": True}).json()["events"][-1]
    assert last["kind"] == "eoi-not-forwarded"
    row = p.locator(f'#events tr[data-seq="{last["seq"]}"]')
    row.wait_for(timeout=2_000)
    assert p.locator('#v0-isr i[data-vec="64"].on').count() == 0
    assert p.locator('#v1-handled i[data-vec="64"].on').count() == 1
    assert "remote-irr" in (p.locator('#ioapic tr[data-pin="5"]').get_attribute("class") or "")

    row.click()
    chain = p.locator("#chain ol li")
    chain.last.wait_for(timeout=2_000)
    texts = chain.all_inner_texts()
    assert texts[0].split()[2] == "eoi" and texts[-1].split()[2] == "eoi-not-forwarded"
    assert texts[-1].startswith(str(last["seq"]))
    screenshot(p, shots / "dashboard.png", full_page=True)
    page.assert_local()
    api.close()


def test_new_vm_appears_without_reload(server: str, page: RecordingPage) -> None:
    p = page.page
    p.goto(f"{server}/ui")
    p.locator("#status.live").wait_for(timeout=10_000)
    httpx.post(f"{server}/v1/vms", json={"id": "late-arrival"}).raise_for_status()
    p.locator("#vms a", has_text="late-arrival").wait_for(timeout=2_000)
    page.assert_local()
