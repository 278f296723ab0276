"""HTTP exploration jobs on a Ray cluster (IRQLAB_EXPLORATION_RAY): the job's worker process
joins the test session's local cluster ('auto') and drives the distributed BFS; verdicts,
counterexample lengths and state counts equal the in-process job's."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import client_for, make_app
from tests.api.test_explorations_api import wait_done

pytestmark = pytest.mark.anyio


async def _run(app: Any) -> list[dict[str, Any]]:
    async with client_for(app) as c:
        r = await c.post("/v1/explorations", json={
            "name": "seed-race-split", "profiles": ["linux-6.1", "linux-latest"]})
        assert r.status_code == 202, r.text
        body = await wait_done(c, r.headers["location"], timeout=240)
        assert body["status"] == "done", body
        return list(body["results"])


async def test_http_job_on_ray(ray_cluster: Any) -> None:
    on_ray = await _run(make_app(exploration_ray="auto", exploration_ray_workers=2))
    here = await _run(make_app())
    assert [r["verdict"] for r in on_ray] == [r["verdict"] for r in here] == [
        "violation", "verified"]
    assert on_ray[0]["counterexample"]["length"] == here[0]["counterexample"]["length"]
    assert on_ray[1]["stats"]["states"] == here[1]["stats"]["states"]
    assert on_ray[1]["stats"]["workers"] == 2
