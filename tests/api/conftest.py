"""Fixtures: an app per test (fresh registry) driven through httpx's ASGI transport."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings

PROBLEM = "application/problem+json"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_app(**overrides: Any) -> FastAPI:
    overrides = {"validate_responses": True, **overrides}
    return create_app(Settings.model_construct(**{**Settings.model_construct().model_dump(),
                                                  **overrides}))


def client_for(app: FastAPI, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://irqlab.test")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(make_app()) as c:
        yield c


MakeVm = Callable[..., Awaitable[str]]


@pytest.fixture
def make_vm(client: httpx.AsyncClient) -> MakeVm:
    async def make(**body: Any) -> str:
        r = await client.post("/v1/vms", json=body)
        assert r.status_code == 201, r.text
        vm_id: str = r.json()["id"]
        return vm_id

    return make


def assert_problem(r: httpx.Response, status: int, field: str | None = None,
                   slug: str | None = None) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status (and field / type)."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers["content-type"]
    body: dict[str, Any] = r.json()
    for key in ("type", "title", "status", "detail"):
        assert key in body, body
    assert body["status"] == status
    if field is not None:
        assert body.get("field") == field, body
    if slug is not None:
        assert body["type"] == f"/problems/{slug}", body
    return body


def read_events(client: httpx.Client, url: str) -> list[tuple[str | None, Any]]:
    """A job's Server-Sent Events (GET url), as (event, data) pairs up to its `end` event."""
    events: list[tuple[str | None, Any]] = []
    with client.stream("GET", url) as stream:
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
                if kind == "end":
                    break
    return events
