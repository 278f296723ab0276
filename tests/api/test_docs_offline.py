"""/docs and /redoc load only this server's assets; operationIds are the router functions'
names, unique; the document has servers, a reading order and the seed-race walkthrough.
(The pages rendering in a real browser: tests/browser/test_docs_browser.py.)"""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi.routing import APIRoute

from app.api.openapi_extras import READING_ORDER, assign_operation_ids
from app.main import TAGS, create_app
from app.routers import ALL

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.IGNORECASE)


@pytest.mark.anyio
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_page_loads_only_local_assets(client: httpx.AsyncClient, page: str) -> None:
    r = await client.get(page)
    assert r.status_code == 200
    assert "text/html" in r.headers["content-type"]
    assert not EXTERNAL.search(r.text), r.text
    assert "fonts.googleapis" not in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "img-src 'self' data:" in csp
    assets = re.findall(r"""(?:src|href)=["'](/[^"']+)["']""", r.text)
    assert assets, r.text
    for url in assets:
        got = await client.get(url)
        assert got.status_code == 200, url
        assert len(got.content) > 1000, url


@pytest.mark.anyio
async def test_swagger_page_settings(client: httpx.AsyncClient) -> None:
    text = (await client.get("/docs")).text
    assert '"validatorUrl": null' in text  # no badge fetched from the public validator
    assert "/openapi.json" in text


@pytest.mark.anyio
async def test_operation_ids_are_function_names(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    names = {(m.upper(), r.path): r.name for router in ALL for r in router.routes
             if isinstance(r, APIRoute) for m in r.methods}
    ids = []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            assert op["operationId"] == names[(method.upper(), path)]
            assert re.fullmatch(r"[a-z][a-z0-9_]*", op["operationId"])
            ids.append(op["operationId"])
    assert len(ids) == len(set(ids))
    assert {"create_vm", "drive_line", "write_eoi", "get_bitmaps",
            "run_library_scenario"} <= set(ids)


def test_duplicate_operation_id_is_refused() -> None:
    async def same() -> None: ...

    routes = [APIRoute("/a", same, methods=["GET"]), APIRoute("/b", same, methods=["GET"])]
    with pytest.raises(RuntimeError, match="operationId 'same'"):
        assign_operation_ids(routes)


@pytest.mark.anyio
async def test_servers_and_walkthrough(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["servers"][0]["url"] == "/"
    description = spec["info"]["description"]
    one_call = description.index("POST /v1/scenarios/seed-race-split/run")
    step_by_step = description.index("1. `POST /v1/vms`")
    assert one_call < step_by_step < description.index("DELETE /v1/vms/race")


@pytest.mark.anyio
async def test_operations_in_reading_order(client: httpx.AsyncClient) -> None:
    paths = list((await client.get("/openapi.json")).json()["paths"])
    rank = {t["name"]: i for i, t in enumerate(TAGS)}
    spec = (await client.get("/openapi.json")).json()
    tags = [rank[next(iter(spec["paths"][p].values()))["tags"][0]] for p in paths]
    assert tags == sorted(tags), "grouped by tag, in TAGS order"
    present = [p for p in READING_ORDER if p in paths]
    assert [p for p in paths if p in present] == present
    assert paths.index("/v1/scenarios/{name}/run") < paths.index("/v1/scenarios/run")


def test_route_table_still_hot_first() -> None:
    """Reordering the document leaves the route table sorted for dispatch (app.main)."""
    app = create_app()
    first = [getattr(r, "path", "") for r in app.router.routes[:3]]
    assert first == ["/healthz", "/readyz", "/v1/vms/{vm}/ioapic/pins/{pin}/line"]


@pytest.mark.anyio
async def test_redoc_bundle_served_without_its_remote_logo(client: httpx.AsyncClient) -> None:
    r = await client.get("/static/docs/redoc.standalone.js")
    assert r.status_code == 200 and len(r.content) > 500_000
    assert b"cdn.redoc.ly" not in r.content
    assert b"data:image/svg+xml" in r.content
