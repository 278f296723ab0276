"""Hostile input from issue 10: each "what was seen" reproduced as a request, each a 4xx
naming the field or the limit (never a 500, never a hang)."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import httpx
import pytest

from tests.api.conftest import assert_problem, client_for, make_app
from tests.work_jobs import wait_dead

pytestmark = pytest.mark.anyio

YAML = {"content-type": "application/yaml"}


def alias_bomb(levels: int = 10, width: int = 9) -> str:
    """Anchors nesting `levels` deep, each a list of `width` aliases of the one below: about
    400 bytes whose value has width**levels elements."""
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]"
              for i in range(1, levels + 1)]
    return "\n".join(lines) + "\nsteps: []\n"


async def test_yaml_alias_bomb_is_refused_at_once(client: httpx.AsyncClient) -> None:
    start = time.monotonic()
    r = await client.post("/v1/scenarios/run", content=alias_bomb(), headers=YAML)
    body = assert_problem(r, 422, "body", "validation-error")
    assert body["limit"] == "IRQLAB_MAX_DOCUMENT_NODES"
    assert time.monotonic() - start < 10  # includes starting a worker process


async def test_self_referencing_alias_is_422(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/scenarios/run", content="steps: &s [*s]\n", headers=YAML)
    body = assert_problem(r, 422, "body")
    assert "recursive" in body["detail"]


@pytest.mark.parametrize("media", ["application/json", "application/yaml"])
async def test_deep_documents_are_refused(client: httpx.AsyncClient, media: str) -> None:
    deep = "[" * 5000 + "]" * 5000
    r = await client.post("/v1/scenarios/run", content=f'{{"steps": {deep}}}',
                          headers={"content-type": media})
    body = assert_problem(r, 422, "body")
    assert body["limit"] == "IRQLAB_MAX_DOCUMENT_DEPTH"


async def test_commits_null_is_a_result(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/scenarios/run", json={"commits": None, "steps": []})
    assert r.status_code == 200, r.text
    assert r.json()["commits"] == []


@pytest.mark.parametrize("field", ["name", "description"])
async def test_document_strings_are_typed(client: httpx.AsyncClient, field: str) -> None:
    r = await client.post("/v1/scenarios/run", json={field: 5, "steps": []})
    assert_problem(r, 422, field)


@pytest.mark.parametrize("text", ["64", "0b1000000", "6_4", "0o100", " 64", "1e1", "٦٤"])
async def test_scenarios_take_the_rest_api_integer_grammar(
        client: httpx.AsyncClient, make_vm: Any, text: str) -> None:
    doc = {"steps": [{"op": "write_rte", "pin": 3, "entry": {"vector": text}}]}
    r = await client.post("/v1/scenarios/run", json=doc)
    assert_problem(r, 422, "steps[0].entry.vector")
    vm = await make_vm()
    r = await client.patch(f"/v1/vms/{vm}/ioapic/pins/3", json={"vector": text})
    assert_problem(r, 422, "vector")


@pytest.mark.parametrize("scalar", ["0b1000000", "6_4", "0o100", "1:04"])
async def test_yaml_plain_scalars_follow_the_grammar(client: httpx.AsyncClient,
                                                     scalar: str) -> None:
    doc = f"steps:\n  - {{op: write_rte, pin: 3, entry: {{vector: {scalar}}}}}\n"
    r = await client.post("/v1/scenarios/run", content=doc, headers=YAML)
    assert_problem(r, 422, "steps[0].entry.vector")


async def test_yaml_hex_and_decimal_plain_scalars_are_integers(
        client: httpx.AsyncClient) -> None:
    doc = ("steps:\n  - {op: write_rte, pin: 3, entry: {vector: 0x41}}\n"
           "  - {op: expect, pins: {3: {vector: 65}}}\n")
    r = await client.post("/v1/scenarios/run", content=doc, headers=YAML)
    assert r.status_code == 200, r.text
    assert r.json()["passed"] is True


async def test_422_messages_quote_the_value(client: httpx.AsyncClient, make_vm: Any) -> None:
    vm = await make_vm()
    r = await client.patch(f"/v1/vms/{vm}/ioapic/pins/3", json={"vector": "zz"})
    body = assert_problem(r, 422, "vector")
    assert "{value" not in body["detail"] and "'zz'" in body["detail"]
    r = await client.post("/v1/vms", json={"profile": "nope"})
    body = assert_problem(r, 422, "profile")
    assert "{value" not in body["detail"] and "'nope'" in body["detail"]


async def test_405_allows_every_method_of_the_path(client: httpx.AsyncClient,
                                                   make_vm: Any) -> None:
    vm = await make_vm()
    r = await client.put(f"/v1/vms/{vm}")
    assert_problem(r, 405)
    assert set(r.headers["allow"].split(", ")) == {"GET", "DELETE"}


async def test_malformed_json_is_the_body_fault(client: httpx.AsyncClient,
                                               make_vm: Any) -> None:
    vm = await make_vm()
    r = await client.post(f"/v1/vms/{vm}/msi", content=b"{bad",
                          headers={"content-type": "application/json"})
    assert_problem(r, 422, "body")


def test_openapi_documents_the_middleware_problems() -> None:
    from app.main import create_app

    spec = create_app().openapi()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if "requestBody" in op:
                assert {"400", "413"} <= set(op["responses"]), (method, path)


# ---- snapshots: validated as strictly as a create request, restored VMs reachable


def _set(path: str, value: Any) -> Any:
    def mutate(snap: dict[str, Any]) -> None:
        node: Any = snap
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return mutate


@pytest.mark.parametrize(("path", "value"), [
    *((f"vcpus.0.{f}", -1) for f in ("irr", "isr", "tmr", "pir", "handled", "eoi_exitmap")),
    ("vcpus.0.irr", 1 << 256), ("vcpus.0.requests", 2**300), ("vcpus.0.requests", 16),
    ("vcpus.0.tpr", 256), ("vcpus.0.pending_ioapic_eoi", -1), ("vcpus.0.highest_stale", -2),
    ("vcpus.0.in_guest", 1), ("vcpus.0.irr", 1.0), ("vcpus.0.irr", "64"), ("vcpus.0.irr", True),
    ("ioapic.irr", -5), ("ioapic.irr", 1 << 24), ("ioapic.ioregsel", 256), ("ioapic.id", 16),
    ("ioapic.redir.3", -1), ("ioapic.irq_eoi.0", -1), ("ioapic.delayed_at", -1),
    ("ioapic.version", 0x20), ("ioapic.flavour", "qemu"), ("time", -1), ("time", 2**300),
    ("vcpus.0.idx", 1), ("vcpus.0.x2apic", True),
])
async def test_hostile_snapshot_is_422_naming_the_field(
        client: httpx.AsyncClient, make_vm: Any, path: str, value: Any) -> None:
    vm = await make_vm()
    snap = (await client.get(f"/v1/vms/{vm}/snapshot")).json()
    before = (await client.get(f"/v1/vms/{vm}/state")).json()
    if path == "vcpus.0.x2apic":
        snap["vcpus"][0]["apic_base_enabled"] = False
    _set(path, value)(snap)
    with anyio.fail_after(10):
        r = await client.put(f"/v1/vms/{vm}/snapshot", json=snap)
    field = path.replace(".0.", "[0].").replace(".3", "[3]").replace("irq_eoi.0", "irq_eoi[0]")
    assert_problem(r, 422, field.replace("[0]", "[0]", 1))
    assert (await client.get(f"/v1/vms/{vm}/state")).json() == before
    r = await client.post(f"/v1/vms/{vm}/vcpus/0/eoi")
    assert r.status_code == 200, r.text


async def test_snapshot_integers_take_the_one_grammar(client: httpx.AsyncClient,
                                                      make_vm: Any) -> None:
    vm = await make_vm()
    await client.post(f"/v1/vms/{vm}/msi", json={"address_lo": "0xfee00000", "data": "0x41"})
    snap = (await client.get(f"/v1/vms/{vm}/snapshot")).json()
    snap["vcpus"][0]["irr"] = hex(snap["vcpus"][0]["irr"])
    r = await client.put(f"/v1/vms/{vm}/snapshot", json=snap)
    assert r.status_code == 200, r.text
    assert (await client.get(f"/v1/vms/{vm}/vcpus/0")).json()["irr"]["vectors"] == [0x41]


def test_bit_iterator_refuses_negative_numbers() -> None:
    from app.engine.bitmap import vectors

    with pytest.raises(ValueError):
        vectors(-1)
    assert vectors((1 << 255) | 1) == [0, 255]


# ---- runs have ceilings

STORM = {"handlers": {"0x41": [{"op": "msi", "data": "0x41"}, {"op": "eoi"}]},
         "steps": [{"op": "msi", "data": "0x41"}, {"op": "settle", "budget": 100_000}]}


@pytest.mark.parametrize(("settings", "limit", "field"), [
    ({"max_run_events": 5_000}, "IRQLAB_MAX_RUN_EVENTS", None),
    ({"max_run_steps": 1_000}, "IRQLAB_MAX_RUN_STEPS", None),
    ({"max_response_bytes": 4096}, "IRQLAB_MAX_RESPONSE_BYTES",
     "body"),
    ({"max_run_cpu_seconds": 0.5, "max_run_events": 10**8, "max_run_steps": 10**8},
     "IRQLAB_MAX_RUN_CPU_SECONDS", "body"),
])
async def test_a_storm_stops_at_its_budget(settings: dict[str, Any], limit: str,
                                           field: str | None) -> None:
    doc = STORM
    if limit == "IRQLAB_MAX_RESPONSE_BYTES":
        doc = {**STORM, "steps": [STORM["steps"][0], {"op": "settle", "budget": 100}]}
    async with client_for(make_app(max_settle_budget=100_000, **settings)) as c:
        with anyio.fail_after(60):
            r = await c.post("/v1/scenarios/run", json=doc)
    body = assert_problem(r, 422, field, "validation-error")
    assert body["limit"] == limit
    if field is None:  # the step that was running when the budget ran out
        assert body["field"].startswith(("steps[1]", "handlers.0x41[")), body


async def test_library_run_without_body_is_bounded() -> None:
    """kut-level-coalesce on split kvm-pvm took 26 s and 2.8 GB: now a budget ends it."""
    async with client_for(make_app()) as c:
        start = time.monotonic()
        r = await c.post("/v1/scenarios/kut-level-coalesce/run",
                         params={"profile": "kvm-pvm", "irqchip": "split"})
        assert time.monotonic() - start < 20
    body = assert_problem(r, 422)
    assert body["limit"].startswith("IRQLAB_MAX_RUN_")


async def test_matrix_size_is_limited() -> None:
    async with client_for(make_app(max_matrix_variants=3)) as c:
        r = await c.post("/v1/scenarios/run", json={"steps": [], "matrix": [{}] * 4})
    body = assert_problem(r, 422, "matrix")
    assert body["limit"] == "IRQLAB_MAX_MATRIX_VARIANTS" and body["max"] == 3


async def test_a_client_that_disconnects_cancels_its_run() -> None:
    """Driven at the ASGI level: the body arrives, then the client goes away; the worker
    running the document is killed."""
    app = make_app(max_run_events=10**8, max_run_steps=10**8, max_settle_budget=10**6,
                   max_run_cpu_seconds=60, max_run_seconds=60)
    body = json.dumps({**STORM, "steps": [STORM["steps"][0],
                                          {"op": "settle", "budget": 10**6}]}).encode()
    gone = anyio.Event()
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/scenarios/run", "raw_path":
             b"/v1/scenarios/run", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("irqlab.test", 80), "state": {}}
    async with anyio.create_task_group() as tg:
        tg.start_soon(app, scope, receive, send)
        with anyio.fail_after(30):
            while not getattr(app.state, "work_pool", None) or not app.state.work_pool.pids():
                await anyio.sleep(0.01)
            victim = app.state.work_pool.pids()[0]
            await anyio.sleep(0.2)
            gone.set()
            await wait_dead(victim)
    app.state.work_pool.close()

