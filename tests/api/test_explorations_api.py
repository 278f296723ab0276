"""POST/GET/DELETE /v1/explorations and the SSE stream: jobs run in worker processes under
the service's limits; document errors are 422 at the element's path before any worker
starts. Through the ASGI transport, and over a real uvicorn (SSE, /healthz during a run)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from app import explorations
from tests.api.conftest import assert_problem, client_for, make_app, read_events
from tests.uvicorn_server import irqlab_server

pytestmark = pytest.mark.anyio


async def wait_done(client: httpx.AsyncClient, location: str,
                    timeout: float = 120) -> dict[str, Any]:
    import anyio

    deadline = time.monotonic() + timeout
    while True:
        r = await client.get(location)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body["status"] != "running":
            return body
        assert time.monotonic() < deadline, body
        await anyio.sleep(0.1)


async def test_library_and_a_job() -> None:
    async with client_for(make_app()) as c:
        r = await c.get("/v1/explorations/library")
        assert r.status_code == 200
        assert {e["name"] for e in r.json()} == set(explorations.names())
        r = await c.post("/v1/explorations", json={
            "name": "seed-race-split", "profiles": ["linux-6.1", "linux-latest"]})
        assert r.status_code == 202, r.text
        location = r.headers["location"]
        assert location == f"/v1/explorations/{r.json()['id']}"
        body = await wait_done(c, location)
        assert body["status"] == "done", body
        verdicts = [(x["profile"], x["verdict"]) for x in body["results"]]
        assert verdicts == [("linux-6.1", "violation"), ("linux-latest", "verified")]
        assert body["results"][0]["counterexample"]["scenario"]["steps"]


async def test_document_errors_are_422_at_the_path() -> None:
    doc = explorations.get("seed-race-split")
    assert doc is not None
    async with client_for(make_app()) as c:
        bad = json.loads(json.dumps(doc))
        bad["actors"]["device"]["steps"][0]["pin"] = 99
        r = await c.post("/v1/explorations", json={"document": bad})
        assert_problem(r, 422)
        bad = json.loads(json.dumps(doc))
        bad["setup"][0]["vcpu"] = 7
        r = await c.post("/v1/explorations", json={"document": bad})
        body = assert_problem(r, 422, field="document.setup[0].vcpu")
        assert "vCPU" in body["detail"] or "vcpu" in body["detail"]
        r = await c.post("/v1/explorations", json={"name": "nope"})
        assert_problem(r, 422, field="name")
        r = await c.post("/v1/explorations", json={"name": "seed-race-split",
                                                   "max_states": 10**9})
        body = assert_problem(r, 422, field="max_states")
        assert body["limit"] == "IRQLAB_MAX_EXPLORATION_STATES"
        r = await c.post("/v1/explorations", json={})
        assert_problem(r, 422)
        r = await c.get("/v1/explorations/0123456789abcdef")
        assert_problem(r, 404)


async def test_concurrency_limit_and_cancel() -> None:
    big = explorations.get("lowest-priority-3vcpu")
    assert big is not None
    async with client_for(make_app(max_explorations=1)) as c:
        r = await c.post("/v1/explorations", json={"document": big, "profiles": "all"})
        assert r.status_code == 202
        location = r.headers["location"]
        r2 = await c.post("/v1/explorations", json={"name": "race1-kernel"})
        body = assert_problem(r2, 409)
        assert body["limit"] == "IRQLAB_MAX_EXPLORATIONS"
        r = await c.delete(location)
        assert r.status_code == 200 and r.json()["status"] in ("cancelled", "done")
        r = await c.post("/v1/explorations", json={"name": "race1-kernel"})
        assert r.status_code == 202
        assert (await wait_done(c, r.headers["location"]))["status"] == "done"


def test_events_stream_and_health_over_uvicorn() -> None:
    with irqlab_server() as base, httpx.Client(base_url=base, timeout=60) as c:
        r = c.post("/v1/explorations", json={"name": "race2b-posted",
                                             "profiles": ["linux-6.9", "linux-6.10"]})
        assert r.status_code == 202
        t0 = time.monotonic()
        assert c.get("/healthz").status_code == 200
        assert time.monotonic() - t0 < 5  # generous: CI machines are shared
        events = read_events(c, r.headers["location"] + "/events")
        kinds = [k for k, _ in events]
        assert kinds[-1] == "end" and events[-1][1]["status"] == "done"
        results = [d for k, d in events if k == "result"]
        assert [d["verdict"] for d in results] == ["violation", "verified"]
        assert "progress" in kinds
