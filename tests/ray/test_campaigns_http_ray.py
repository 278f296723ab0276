"""HTTP campaign jobs on a Ray cluster (IRQLAB_CAMPAIGN_RAY): the job's worker process joins
the test session's local cluster ('auto') and drives the chunks as Ray tasks; the census
equals the in-process job's."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import client_for, make_app
from tests.api.test_campaigns_api import wait_done

pytestmark = pytest.mark.anyio
REQUEST = {"sequences": 200, "seed": 4, "batch": 25,
           "profiles": ["linux-4.14", "linux-6.1", "kvm-pvm"]}


async def _run(app: Any) -> dict[str, Any]:
    async with client_for(app) as c:
        r = await c.post("/v1/campaigns", json=REQUEST)
        assert r.status_code == 202, r.text
        body = await wait_done(c, r.headers["location"], timeout=240)
        assert body["status"] == "done", body
        assert body["progress"]["sequences"] == 200
        result: dict[str, Any] = body["result"]
        result.pop("seconds")
        return result


async def test_http_campaign_on_ray(ray_cluster: Any) -> None:
    on_ray = await _run(make_app(campaign_ray="auto"))
    here = await _run(make_app())
    assert on_ray == here
    assert any(p["diverged"] for p in here["pairs"])
