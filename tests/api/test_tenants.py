"""Tenants and tokens (IRQLAB_TOKENS), content types, Origin, CORS and Host checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import cli
from app.api.tenants import TokenTable, add_token, token_hash

from .conftest import PROBLEM, client_for, make_app

pytestmark = pytest.mark.anyio

PIN = {"vector": "0x40", "trigger": "level", "dest": 0}


@pytest.fixture
def tokens(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "tokens"
    return {"path": path, "a": add_token(path, "alpha"), "b": add_token(path, "beta")}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def clients(tokens: dict[str, Any]) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    app = make_app(tokens=tokens["path"])
    async with client_for(app) as a, client_for(app) as b, client_for(app) as anon:
        a.headers.update(bearer(tokens["a"]))
        b.headers.update(bearer(tokens["b"]))
        yield {"a": a, "b": b, "anon": anon}


def is_problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    assert body["type"] == f"/problems/{slug}", body
    return body


def test_token_file_holds_hashes_only(tokens: dict[str, Any]) -> None:
    text = tokens["path"].read_text()
    assert tokens["a"] not in text and tokens["b"] not in text
    assert f"{token_hash(tokens['a'])} alpha" in text
    table = TokenTable.load(tokens["path"])
    assert table.tenant_of(tokens["b"]) == "beta" and table.tenant_of("nope") is None
    assert tokens["path"].stat().st_mode & 0o777 == 0o600


def test_token_add_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t"
    assert cli.main(["token", "add", "gamma", "--file", str(path)]) == 0
    token = capsys.readouterr().out.strip()
    assert TokenTable.load(path).tenant_of(token) == "gamma"
    assert cli.main(["token", "add", "Bad Name", "--file", str(path)]) == 2


async def test_tokens_required_on_v1_only(clients: dict[str, httpx.AsyncClient]) -> None:
    anon = clients["anon"]
    r = is_problem(await anon.get("/v1/vms"), 401, "unauthorized")
    assert "Bearer" in (await anon.get("/v1/vms")).headers["www-authenticate"]
    assert r["instance"] == "/v1/vms"
    is_problem(await anon.get("/v1/vms", headers=bearer("irqlab_wrong")), 401,
               "unauthorized")
    is_problem(await anon.post("/v1/scenarios/run", json={"steps": []}), 401, "unauthorized")
    is_problem(await anon.post("/v1/scenarios/diff", json={"steps": []}), 401, "unauthorized")
    is_problem(await anon.get("/v1/scenarios"), 401, "unauthorized")
    is_problem(await anon.post("/v1/vms/x/ioapic/pins/5/line", json={"level": 1}), 401,
               "unauthorized")  # the hot route too
    for open_path in ("/healthz", "/readyz", "/openapi.json", "/problems/not-found"):
        assert (await anon.get(open_path)).status_code == 200, open_path


async def test_each_tenant_sees_only_its_vms(clients: dict[str, httpx.AsyncClient]) -> None:
    a, b = clients["a"], clients["b"]
    for c in (a, b):  # the same id in two tenants
        assert (await c.post("/v1/vms", json={"id": "same", "vcpus": 1})).status_code == 201
    assert (await a.post("/v1/vms", json={"id": "mine", "vcpus": 1})).status_code == 201
    assert (await a.put("/v1/vms/same/ioapic/pins/5", json=PIN)).status_code == 200
    assert (await a.post("/v1/vms/same/ioapic/pins/5/line",
                         json={"action": "assert"})).status_code == 200
    # each "same" is its own VM
    assert (await b.get("/v1/vms/same/ioapic/pins/5")).json()["vector"] == 0
    assert (await a.get("/v1/vms/same/ioapic/pins/5")).json()["vector"] == 0x40
    assert [v["id"] for v in (await a.get("/v1/vms")).json()["vms"]] == ["same", "mine"]
    assert [v["id"] for v in (await b.get("/v1/vms")).json()["vms"]] == ["same"]
    # beta cannot reach alpha's VM by any route: 404 as if it did not exist, never 403
    snap = (await a.get("/v1/vms/mine/snapshot")).json()
    probes = [
        b.get("/v1/vms/mine"), b.get("/v1/vms/mine/state"), b.get("/v1/vms/mine/events"),
        b.get("/v1/vms/mine/snapshot"), b.put("/v1/vms/mine/snapshot", json=snap),
        b.get("/v1/vms/mine/bitmaps"),
        b.post("/v1/vms/mine/ioapic/pins/5/line", json={"action": "assert"}),
        b.put("/v1/vms/mine/ioapic/pins/5", json=PIN), b.post("/v1/vms/mine/vcpus/0/ack"),
        b.post("/v1/vms/mine/msi", json={"address_lo": "0xfee00000", "data": "0x40"}),
        b.get("/v1/vms/mine/routes"), b.delete("/v1/vms/mine"),
    ]
    for probe in probes:
        r = await probe
        body = is_problem(r, 404, "not-found")
        assert body["detail"] == "no VM with id 'mine'"
    # and alpha's VM is untouched by all that
    assert (await a.get("/v1/vms/mine/snapshot")).json() == snap
    # scenario runs work for each tenant and touch no VM
    for c in (a, b):
        r = await c.post("/v1/scenarios/run", json={"vm": {"vcpus": 1}, "steps": []})
        assert r.status_code == 200, r.text
    assert [v["id"] for v in (await b.get("/v1/vms")).json()["vms"]] == ["same"]
    assert (await b.delete("/v1/vms/same")).status_code == 204
    assert (await a.get("/v1/vms/same")).status_code == 200


async def test_tenant_vm_limit(tokens: dict[str, Any]) -> None:
    app = make_app(tokens=tokens["path"], tenant_max_vms=2, max_vms=10)
    async with client_for(app) as a, client_for(app) as b:
        a.headers.update(bearer(tokens["a"]))
        b.headers.update(bearer(tokens["b"]))
        for i in range(2):
            assert (await a.post("/v1/vms", json={"id": f"v{i}"})).status_code == 201
        body = is_problem(await a.post("/v1/vms", json={"id": "v2"}), 409, "limit-reached")
        assert body["limit"] == "IRQLAB_TENANT_MAX_VMS" and body["max"] == 2
        assert (await b.post("/v1/vms", json={"id": "v0"})).status_code == 201


async def test_durable_vms_come_back_to_their_tenant(tokens: dict[str, Any],
                                                     tmp_path: Path) -> None:
    for round_ in range(2):
        app = make_app(tokens=tokens["path"], state_dir=tmp_path / "state")
        async with app.router.lifespan_context(app), client_for(app) as a, \
                client_for(app) as b:
            a.headers.update(bearer(tokens["a"]))
            b.headers.update(bearer(tokens["b"]))
            if round_ == 0:
                assert (await a.post("/v1/vms", json={"id": "x"})).status_code == 201
                assert (await a.put("/v1/vms/x/ioapic/pins/5", json=PIN)).status_code == 200
            else:
                assert (await a.get("/v1/vms/x/ioapic/pins/5")).json()["vector"] == 0x40
                assert (await b.get("/v1/vms/x")).status_code == 404
    assert (tmp_path / "state" / "vms" / "alpha" / "x" / "snapshot.json").exists()


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", None])
async def test_json_routes_refuse_other_content_types(client: httpx.AsyncClient,
                                                      ctype: str | None) -> None:
    """What a web page can send cross-site without a CORS preflight never reaches a route
    (open mode too)."""
    assert (await client.post("/v1/vms", json={"id": "a"})).status_code == 201
    headers = {} if ctype is None else {"content-type": ctype}
    for path in ("/v1/vms", "/v1/vms/a/ioapic/pins/5/line", "/v1/scenarios/run"):
        r = await client.post(path, content=b'{"level": 1}', headers=headers)
        is_problem(r, 415, "unsupported-media-type")
    yaml = await client.post("/v1/scenarios/run", content=b"vm: {vcpus: 1}\nsteps: []\n",
                             headers={"content-type": "application/yaml"})
    assert yaml.status_code == 200, yaml.text
    # body-less operations need no content type
    assert (await client.post("/v1/vms/a/vcpus/0/ack")).status_code == 200


async def test_foreign_origin_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/vms", json={"id": "a"},
                          headers={"origin": "https://evil.example"})
    is_problem(r, 403, "forbidden-origin")
    assert (await client.get("/v1/vms")).json() == {"vms": []}
    # a body-less "simple" POST from another site is refused too
    is_problem(await client.post("/v1/vms/a/vcpus/0/ack",
                                 headers={"origin": "null"}), 403, "forbidden-origin")
    # the service's own pages (/docs) are same-origin
    r = await client.post("/v1/vms", json={"id": "a"},
                          headers={"origin": "http://irqlab.test"})
    assert r.status_code == 201, r.text


async def test_cors_allow_list() -> None:
    app = make_app(cors_origins="https://ui.example, https://other.example")
    async with client_for(app) as c:
        pre = await c.options("/v1/vms", headers={
            "origin": "https://ui.example", "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, authorization"})
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "https://ui.example"
        r = await c.post("/v1/vms", json={"id": "a"}, headers={"origin": "https://ui.example"})
        assert r.status_code == 201
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        denied = await c.options("/v1/vms", headers={
            "origin": "https://evil.example", "access-control-request-method": "POST"})
        assert "access-control-allow-origin" not in denied.headers
        is_problem(await c.get("/v1/vms", headers={"origin": "https://evil.example"}), 403,
                   "forbidden-origin")
    async with client_for(make_app()) as c:  # no allow-list: no CORS headers at all
        r = await c.get("/v1/vms")
        assert "access-control-allow-origin" not in r.headers


async def test_allowed_hosts() -> None:
    app = make_app(allowed_hosts="irqlab.test, *.lab.example")
    async with client_for(app) as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/healthz", headers={"host": "a.lab.example:8000"})).status_code \
            == 200
        is_problem(await c.get("/v1/vms", headers={"host": "rebound.example"}), 400,
                   "host-not-allowed")


async def test_openapi_declares_bearer(tokens: dict[str, Any]) -> None:
    async with client_for(make_app()) as c:
        spec = (await c.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    op = spec["paths"]["/v1/vms"]["post"]
    assert op["security"] == [{"bearer": []}, {}] and "415" in op["responses"]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    async with client_for(make_app(tokens=tokens["path"])) as c:
        spec = (await c.get("/openapi.json")).json()
    op = spec["paths"]["/v1/vms/{vm}/ioapic/pins/{pin}/line"]["post"]
    assert op["security"] == [{"bearer": []}] and "401" in op["responses"]


def test_start_line_says_whether_open(tokens: dict[str, Any], tmp_path: Path) -> None:
    from app.settings import Settings

    open_line = cli._access_line(Settings.model_construct(tokens=None, state_dir=None),
                                 "127.0.0.1")
    assert "no tokens" in open_line and "127.0.0.1" in open_line
    line = cli._access_line(Settings.model_construct(tokens=tokens["path"], state_dir=None),
                            "127.0.0.1")
    assert "2 tokens, 2 tenants" in line


def test_cli_sends_irqlab_token(tokens: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """`irqlab library --server` against a real server with tokens: 2 without IRQLAB_TOKEN
    (the 401 is reported), 0 with it."""
    from tests.uvicorn_server import irqlab_server

    with irqlab_server(env={"IRQLAB_TOKENS": str(tokens["path"])}) as base:
        monkeypatch.delenv("IRQLAB_TOKEN", raising=False)
        assert cli.main(["library", "--server", base, "--json"]) == 2
        assert "401" in capsys.readouterr().err
        monkeypatch.setenv("IRQLAB_TOKEN", tokens["a"])
        assert cli.main(["library", "--server", base, "--json"]) == 0
