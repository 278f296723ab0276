"""/metrics: requests by route template and status, latency, VMs, events, running scenario
runs and budget refusals, parsed back with prometheus-client's own text parser."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import client_for, make_app

pytestmark = pytest.mark.anyio


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]],
                                                     float]:
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_requests_by_route_template_and_status(client: httpx.AsyncClient) -> None:
    assert (await client.post("/v1/vms", json={"id": "m", "vcpus": 2})).status_code == 201
    for action in ("assert", "deassert", "assert"):
        r = await client.post("/v1/vms/m/ioapic/pins/5/line", json={"action": action})
        assert r.status_code == 200
    assert (await client.post("/v1/vms/nope/ioapic/pins/5/line",
                              json={"action": "assert"})).status_code == 404
    assert (await client.get("/no/such/route")).status_code == 404
    s = await scrape(client)
    line = "/v1/vms/{vm}/ioapic/pins/{pin}/line"
    assert value(s, "irqlab_http_requests_total", method="POST", route=line,
                 status="200") == 3
    assert value(s, "irqlab_http_requests_total", method="POST", route=line,
                 status="404") == 1
    assert value(s, "irqlab_http_requests_total", method="GET", route="<unmatched>",
                 status="404") == 1
    assert value(s, "irqlab_http_request_duration_seconds_count", method="POST",
                 route=line) == 4
    assert value(s, "irqlab_http_request_duration_seconds_bucket", method="POST",
                 route=line, le="+Inf") == 4
    assert value(s, "irqlab_vms", backend="model") == 1
    events = value(s, "irqlab_vm_events", vm="m")
    last_seq = (await client.get("/v1/vms/m")).json()["events"]
    assert events == last_seq > 0


async def test_budget_refusals_counted() -> None:
    app = make_app(max_vms=1, max_body_bytes=200)
    async with client_for(app) as client:
        assert (await client.post("/v1/vms", json={"id": "a"})).status_code == 201
        r = await client.post("/v1/vms", json={"id": "b"})
        assert r.status_code == 409 and r.json()["limit"] == "IRQLAB_MAX_VMS"
        r = await client.post("/v1/vms/a/ioapic/pins/5/line", content=b"{" + b" " * 300 + b"}",
                              headers={"content-type": "application/json"})
        assert r.status_code == 413
        s = await scrape(client)
        assert value(s, "irqlab_budget_refusals_total", limit="IRQLAB_MAX_VMS") == 1
        assert value(s, "irqlab_budget_refusals_total", limit="IRQLAB_MAX_BODY_BYTES") == 1


async def test_running_scenarios_gauge() -> None:
    """While a library run is in flight the gauge says 1; after it, 0."""
    app = make_app()
    async with client_for(app) as client:
        s = await scrape(client)
        assert ("irqlab_running", (("kind", "scenario-run"),)) in s
        seen: list[float] = []
        gauge = app.state.metrics.running_now.labels("scenario-run")

        async def watch() -> None:
            while True:
                seen.append(gauge._value.get())
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        r = await client.post("/v1/scenarios/seed-race-split/run")
        watcher.cancel()
        assert r.status_code == 200
        assert max(seen) == 1
        assert value(await scrape(client), "irqlab_running", kind="scenario-run") == 0


async def test_metrics_not_in_openapi(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "/metrics" not in spec["paths"]


async def test_running_explorations_gauge() -> None:
    """An exploration job counts in irqlab_running{kind="exploration"} while its worker
    process runs, and not once it is cancelled."""
    app = make_app()
    async with client_for(app) as client:
        assert value(await scrape(client), "irqlab_running", kind="exploration") == 0
        r = await client.post("/v1/explorations", json={
            "name": "broadcast-level-split", "profiles": "all"})
        assert r.status_code == 202, r.text
        assert value(await scrape(client), "irqlab_running", kind="exploration") == 1
        assert (await client.delete(r.headers["location"])).json()["status"] == "cancelled"
        assert value(await scrape(client), "irqlab_running", kind="exploration") == 0
