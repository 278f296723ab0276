"""The live dashboard: /ui renders the VMs; /ui/stream (Server-Sent Events, against a real
uvicorn) sends a VM's IOAPIC and vCPU bitmaps, and again when another client changes it; the
registry's hub hears of operations that move a VM's log and of nothing else."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.api.live import VM_LIST
from tests.uvicorn_server import irqlab_server

from .conftest import client_for, make_app

anyio = pytest.mark.anyio


@anyio
async def test_page_lists_vms_and_loads_local_assets() -> None:
    async with client_for(make_app()) as client:
        for vm in ("alpha", "beta"):
            assert (await client.post("/v1/vms", json={"id": vm})).status_code == 201
        r = await client.get("/ui?vm=beta")
        assert r.status_code == 200
        assert 'data-vm="beta"' in r.text and "/ui?vm=alpha" in r.text
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert "//" not in r.text.replace("http://www.w3.org", "")
        for asset in ("/static/ui/dashboard.js", "/static/ui/dashboard.css"):
            assert (await client.get(asset)).status_code == 200
        spec = (await client.get("/openapi.json")).json()
        assert not [p for p in spec["paths"] if p.startswith("/ui")]


@anyio
async def test_hub_hears_changes_not_reads() -> None:
    app = make_app()
    hub = app.state.registry.hub
    async with client_for(app) as client:
        assert (await client.post("/v1/vms", json={"id": "w", "vcpus": 2})).status_code == 201
        sub = hub.subscribe()
        assert (await client.get("/v1/vms/w/bitmaps")).status_code == 200
        assert (await client.get("/v1/vms/w/state")).status_code == 200
        assert sub.take() == set()
        assert (await client.post("/v1/vms/w/vcpus/0/enter")).status_code == 200
        assert sub.take() == {"w"}
        assert (await client.post("/v1/vms", json={"id": "x"})).status_code == 201
        assert (await client.delete("/v1/vms/x")).status_code == 204
        assert sub.take() == {VM_LIST}
        hub.unsubscribe(sub)
        assert not hub.subscribers


def _messages(url: str, out: queue.Queue[tuple[float, str, Any]]) -> None:
    """Read a /ui/stream until the server ends it (it does when it stops)."""
    with httpx.stream("GET", url, timeout=httpx.Timeout(5, read=30)) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        event = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: "):
                out.put((time.monotonic(), event, json.loads(line[len("data: "):])))
    out.put((time.monotonic(), "end", None))


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with irqlab_server() as base:
        yield base


def _next_vm(messages: queue.Queue[tuple[float, str, Any]], timeout: float
             ) -> tuple[float, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        at, event, data = messages.get(timeout=max(0.01, deadline - time.monotonic()))
        if event == "vm":
            return at, data


def test_stream_follows_another_clients_operations(server: str) -> None:
    base = server
    httpx.post(f"{base}/v1/vms", json={"id": "live", "vcpus": 2}).raise_for_status()
    httpx.put(f"{base}/v1/vms/live/ioapic/pins/5",
              json={"vector": "0x40", "trigger": "level", "dest": 0}).raise_for_status()
    messages: queue.Queue[tuple[float, str, Any]] = queue.Queue()
    reader = threading.Thread(target=_messages, args=(f"{base}/ui/stream?vm=live", messages),
                              daemon=True)
    reader.start()
    _, first = _next_vm(messages, 10)
    assert first["id"] == "live" and len(first["vcpus"]) == 2
    assert len(first["ioapic"]["pins"]) == 24
    assert int(first["vcpus"][0]["irr"], 16) == 0
    seen = first["last_seq"]

    sent = time.monotonic()
    r = httpx.post(f"{base}/v1/vms/live/ioapic/pins/5/line", json={"action": "assert"})
    r.raise_for_status()
    at, update = _next_vm(messages, 5)
    assert at - sent < 1.0
    assert int(update["vcpus"][0]["irr"], 16) >> 64 & 1
    assert int(update["vcpus"][0]["tmr"], 16) >> 64 & 1
    pin5 = update["ioapic"]["pins"][5]
    assert pin5["remote_irr"] is True and pin5["line"] == 1
    kinds = [e["kind"] for e in update["events"]]
    assert "deliver" in kinds and all(e["seq"] > seen for e in update["events"])

    httpx.delete(f"{base}/v1/vms/live").raise_for_status()
    _, gone = _next_vm(messages, 5)
    assert gone == {"id": "live", "gone": True}


def test_server_stops_promptly_with_a_stream_open() -> None:
    """`irqlab serve` ends open dashboard streams when told to stop, instead of waiting for
    the browsers to go away."""
    messages: queue.Queue[tuple[float, str, Any]] = queue.Queue()
    with irqlab_server() as base:
        reader = threading.Thread(target=_messages, args=(f"{base}/ui/stream", messages),
                                  daemon=True)
        reader.start()
        assert messages.get(timeout=10)[1] == "vms"
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 5
    reader.join(5)
    assert messages.get(timeout=1)[1] == "end"


@anyio
async def test_timeline_embedded() -> None:
    """The page embeds the VM's SVG timeline (GET /v1/vms/{vm}/timeline.svg, app.pictures),
    and that URL draws it."""
    from app.web.dashboard import TIMELINE_PATH

    app = make_app()
    async with client_for(app) as client:
        assert (await client.post("/v1/vms", json={"id": "t"})).status_code == 201
        page = (await client.get("/ui?vm=t")).text
        assert 'id="timeline-svg"' in page and f'data-src="{TIMELINE_PATH}"' in page
        svg = await client.get(TIMELINE_PATH.format(vm="t"))
        assert svg.status_code == 200 and svg.text.lstrip().startswith(("<svg", "<?xml"))
