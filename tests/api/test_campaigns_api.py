"""POST/GET/DELETE /v1/campaigns and the SSE stream: `irqlab campaign` as a job in a worker
process, under the service's limits. The census a job reports is the one run_local (what the
CLI runs) gives for the same parameters, and its saved divergences replay as scenarios.
Through the ASGI transport, and over a real uvicorn (SSE, /healthz during a run)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from app.campaign.driver import CampaignSpec, run_local
from app.kvm.detect import kvm_available
from tests.api.conftest import assert_problem, client_for, make_app, read_events
from tests.api.test_metrics import scrape, value
from tests.uvicorn_server import irqlab_server
from tests.work_jobs import alive, wait_dead

pytestmark = pytest.mark.anyio
KVM_OK, KVM_REASON = kvm_available()
# Long enough to be running when the test looks (thousands of sequences, in small chunks).
LONG = {"sequences": 100_000, "profiles": "all", "batch": 10}


async def wait_done(client: httpx.AsyncClient, location: str, timeout: float = 120,
                    seen: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = await client.get(location)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if seen is not None:
            seen.append(body["progress"])
        if body["status"] != "running":
            return body
        assert time.monotonic() < deadline, body
        await anyio.sleep(0.05)


async def wait_progress(client: httpx.AsyncClient, location: str) -> dict[str, Any]:
    """The job once its worker has reported finished sequences."""
    with anyio.fail_after(60):
        while True:
            body: dict[str, Any] = (await client.get(location)).json()
            assert body["status"] == "running", body
            if body["progress"]["sequences"] > 0:
                return body
            await anyio.sleep(0.05)


def plain(data: Any) -> Any:
    return json.loads(json.dumps(data))


async def test_a_campaign_gives_the_cli_census() -> None:
    request = {"sequences": 240, "seed": 5, "batch": 30, "save": 2,
               "profiles": ["linux-4.14", "linux-6.1", "kvm-pvm"]}
    spec = CampaignSpec(5, 240, ("linux-4.14", "linux-6.1", "kvm-pvm"), batch=30, save=2)
    expected = run_local(spec)
    async with client_for(make_app()) as c:
        r = await c.post("/v1/campaigns", json=request)
        assert r.status_code == 202, r.text
        location = r.headers["location"]
        assert location == f"/v1/campaigns/{r.json()['id']}"
        assert r.json()["progress"] == {"sequences": 0, "total": 240, "divergences": 0}
        seen: list[dict[str, Any]] = []
        body = await wait_done(c, location, seen=seen)
        assert body["status"] == "done", body
        done = [p["sequences"] for p in seen]
        assert done == sorted(done) and done[-1] == 240
        result = dict(body["result"])
        documents = result.pop("documents")
        assert documents == plain(expected.scenarios)
        assert result.pop("seconds") > 0
        assert result == plain(expected.as_dict())
        # Progress counted every diverging comparison: the census table's total.
        assert body["progress"]["divergences"] == sum(p["diverged"] for p in result["pairs"])
        assert body["progress"]["divergences"] > 0
        # Each saved divergence is a scenario document the service replays (and passes).
        name, doc = next(iter(documents.items()))
        assert name == f"{doc['name']}.yaml"
        r = await c.post("/v1/scenarios/run", json=doc)
        assert r.status_code == 200, r.text
        assert r.json()["passed"], r.json()


async def test_bad_input_is_4xx_naming_the_field_and_limit() -> None:
    async with client_for(make_app(max_campaign_sequences=1000, max_campaign_seconds=60,
                                   max_kvm_vms=0)) as c:
        r = await c.post("/v1/campaigns", json={"sequences": 1001})
        body = assert_problem(r, 422, field="sequences")
        assert body["limit"] == "IRQLAB_MAX_CAMPAIGN_SEQUENCES" and body["max"] == 1000
        r = await c.post("/v1/campaigns", json={"sequences": 10, "max_seconds": 61})
        body = assert_problem(r, 422, field="max_seconds")
        assert body["limit"] == "IRQLAB_MAX_CAMPAIGN_SECONDS" and body["max"] == 60
        r = await c.post("/v1/campaigns", json={"sequences": 10,
                                                "profiles": ["linux-6.1", "linux-6.1"]})
        assert_problem(r, 422, field="profiles")
        r = await c.post("/v1/campaigns", json={"sequences": 10, "profiles": ["linux-6.1"]})
        assert_problem(r, 422, field="profiles")
        r = await c.post("/v1/campaigns", json={"sequences": 10,
                                                "irqchips": ["split", "split"]})
        assert_problem(r, 422, field="irqchips")
        r = await c.post("/v1/campaigns", json={"sequences": 10, "profiles": ["linux-9.9",
                                                                            "linux-6.1"]})
        assert_problem(r, 422, field="profiles[0]")
        for bad in ({"sequences": 0}, {"sequences": True}, {"sequences": 10, "batch": 0},
                    {"sequences": 10, "save": -1}, {"sequences": 10, "irqchips": []},
                    {"sequences": 10, "workers": 4}, {}):
            assert_problem(await c.post("/v1/campaigns", json=bad), 422)
        r = await c.post("/v1/campaigns", json={"sequences": 10, "profiles": ["kvm-pvm"],
                                                "kvm": True})
        body = assert_problem(r, 409, field="kvm")
        assert body["limit"] == "IRQLAB_MAX_KVM_VMS"
        assert_problem(await c.get("/v1/campaigns/0123456789abcdef"), 404, field="id")
        assert_problem(await c.delete("/v1/campaigns/0123456789abcdef"), 404, field="id")
        assert_problem(await c.get("/v1/campaigns/0123456789abcdef/events"), 404)


async def test_cancel_kills_the_worker_and_frees_the_slot() -> None:
    app = make_app(max_campaigns=1)
    async with client_for(app) as c:
        r = await c.post("/v1/campaigns", json=LONG)
        assert r.status_code == 202, r.text
        location, job_id = r.headers["location"], r.json()["id"]
        await wait_progress(c, location)
        pid = app.state.campaigns.jobs[job_id].process.pid
        assert alive(pid)
        body = assert_problem(await c.post("/v1/campaigns", json={"sequences": 10}), 409)
        assert body["limit"] == "IRQLAB_MAX_CAMPAIGNS" and body["max"] == 1
        r = await c.delete(location)
        assert r.status_code == 200
        assert r.json()["status"] == "cancelled" and r.json()["result"] is None
        await wait_dead(pid)
        assert (await c.get(location)).json()["status"] == "cancelled"
        r = await c.post("/v1/campaigns", json={"sequences": 10})
        assert r.status_code == 202
        assert (await wait_done(c, r.headers["location"]))["status"] == "done"


async def test_time_budget_ends_the_job_with_a_message() -> None:
    async with client_for(make_app()) as c:
        r = await c.post("/v1/campaigns", json={**LONG, "max_seconds": 0.5})
        assert r.status_code == 202, r.text
        body = await wait_done(c, r.headers["location"])
        assert body["status"] == "failed" and body["result"] is None
        assert "max_seconds" in body["error"] and "0.5 s" in body["error"], body
        assert 0 < body["progress"]["sequences"] < 100_000


async def test_running_campaigns_gauge() -> None:
    async with client_for(make_app()) as c:
        assert value(await scrape(c), "irqlab_running", kind="campaign") == 0
        r = await c.post("/v1/campaigns", json=LONG)
        assert r.status_code == 202, r.text
        assert value(await scrape(c), "irqlab_running", kind="campaign") == 1
        assert value(await scrape(c), "irqlab_running", kind="exploration") == 0
        assert (await c.delete(r.headers["location"])).json()["status"] == "cancelled"
        assert value(await scrape(c), "irqlab_running", kind="campaign") == 0


@pytest.mark.skipif(not KVM_OK, reason=f"no usable /dev/kvm: {KVM_REASON}")
async def test_kvm_campaign_in_the_worker_process() -> None:
    """The kernel side runs in the job's process (its own KVM VMs, one at a time): the census
    equals run_local's with kvm on this host."""
    from app.kvm.differential import host_profile

    profile = host_profile()
    spec = CampaignSpec(2, 40, (profile,), ("kernel",), kvm=True, batch=10)
    expected = run_local(spec)
    async with client_for(make_app()) as c:
        r = await c.post("/v1/campaigns", json={"sequences": 40, "seed": 2, "batch": 10,
                                                "profiles": [profile], "irqchips": ["kernel"],
                                                "kvm": True})
        assert r.status_code == 202, r.text
        body = await wait_done(c, r.headers["location"])
        assert body["status"] == "done", body
        result = body["result"]
        result.pop("documents"), result.pop("seconds")
        assert result == plain(expected.as_dict())
        assert [p["pair"] for p in result["pairs"]] == [f"{profile}|kvm"]


@pytest.mark.skipif(KVM_OK, reason="this host has a usable /dev/kvm")
async def test_kvm_campaign_without_kvm_is_409() -> None:
    async with client_for(make_app()) as c:
        r = await c.post("/v1/campaigns", json={"sequences": 10, "profiles": ["linux-6.1"],
                                                "kvm": True})
        assert_problem(r, 409, field="kvm", slug="unsupported")


def test_events_stream_and_health_over_uvicorn() -> None:
    with irqlab_server() as base, httpx.Client(base_url=base, timeout=60) as c:
        r = c.post("/v1/campaigns", json={"sequences": 600, "batch": 20, "seed": 3})
        assert r.status_code == 202, r.text
        t0 = time.monotonic()
        assert c.get("/healthz").status_code == 200
        assert time.monotonic() - t0 < 5  # generous: CI machines are shared
        events = read_events(c, r.headers["location"] + "/events")
        kinds = [k for k, _ in events]
        assert kinds[-1] == "end" and events[-1][1] == {"status": "done", "error": None}
        progress = [d["sequences"] for k, d in events if k == "progress"]
        assert len(progress) >= 2 and progress == sorted(progress) and progress[-1] == 600
        results = [d for k, d in events if k == "result"]
        assert len(results) == 1
        job = c.get(r.headers["location"]).json()
        assert results[0] == job["result"]
        assert results[0]["pairs"] and results[0]["sequences"] == 600


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_block_runs_as_written() -> None:
    """README's "Campaigns over HTTP" shell block, against a real `irqlab serve`."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Campaigns over HTTP"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block
    with irqlab_server() as base:
        script = block.group(1).replace("http://127.0.0.1:8000", base)
        assert base in script
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env,
                             capture_output=True, text=True, timeout=120, check=True).stdout
    assert "event: result" in out and 'event: end\ndata: {"status":"done","error":null}' in out
    assert out.endswith("50 {'step': 11, 'kind': 'line', 'fields': ['status']}\n"
                        "replays: True\n"), out[-300:]
