"""One lock per VM: different VMs proceed concurrently, one VM's requests are serialised."""

from __future__ import annotations

import itertools

import anyio
import anyio.to_thread
import httpx
import pytest

from app.api.registry import Registry

from .conftest import client_for, make_app

pytestmark = pytest.mark.anyio


async def _eventually(check: object, timeout: float = 10.0) -> None:
    assert callable(check)
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.01)


async def test_vms_do_not_block_each_other() -> None:
    app = make_app()
    registry: Registry = app.state.registry
    async with client_for(app) as c:
        await c.post("/v1/vms", json={"id": "a"})
        await c.post("/v1/vms", json={"id": "b"})
        results: dict[str, int] = {}

        async def ack_a() -> None:
            results["a"] = (await c.post("/v1/vms/a/vcpus/0/ack")).status_code

        # Hold VM a's lock, as if a long operation were running on it; the lock is released
        # before the task group waits for the request on VM a.
        async with anyio.create_task_group() as tg, registry.locked("default", "a"):
            tg.start_soon(ack_a)
            with anyio.fail_after(10):
                assert (await c.post("/v1/vms/b/vcpus/0/ack")).status_code == 200
                assert (await c.get("/v1/vms/b/state")).status_code == 200
                assert (await c.post("/v1/vms", json={"id": "c"})).status_code == 201
            await anyio.sleep(0.2)
            assert results == {}  # still waiting for VM a's lock
        assert results == {"a": 200}


async def test_same_vm_requests_are_serialised() -> None:
    app = make_app()
    async with client_for(app) as c:
        vm = (await c.post("/v1/vms", json={"vcpus": 4, "irqchip": "split"})).json()["id"]
        await c.put(f"/v1/vms/{vm}/ioapic/pins/3", json={"vector": 0x33})
        first = (await c.get(f"/v1/vms/{vm}/events")).json()["last_seq"]
        responses: list[httpx.Response] = []

        async def pulse() -> None:
            responses.append(await c.post(f"/v1/vms/{vm}/ioapic/pins/3/line",
                                          json={"action": "pulse"}))

        async with anyio.create_task_group() as tg:
            for _ in range(40):
                tg.start_soon(pulse)
        assert len(responses) == 40 and all(r.status_code == 200 for r in responses)
        # Each response's events form one contiguous block, and the blocks tile the log:
        # no operation interleaved with another.
        blocks = sorted((r.json()["events"][0]["seq"], r.json()["events"][-1]["seq"])
                        for r in responses)
        assert blocks[0][0] == first + 1
        for (_, end), (start, _) in itertools.pairwise(blocks):
            assert start == end + 1
        for r in responses:
            seqs = [e["seq"] for e in r.json()["events"]]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        vcpu0 = (await c.get(f"/v1/vms/{vm}/vcpus/0")).json()
        assert vcpu0["irr"]["vectors"] == [0x33]


async def test_delete_waits_for_operation_in_flight() -> None:
    app = make_app()
    registry: Registry = app.state.registry
    async with client_for(app) as c:
        await c.post("/v1/vms", json={"id": "gone"})
        done: list[int] = []

        async def delete() -> None:
            done.append((await c.delete("/v1/vms/gone")).status_code)

        async def unlisted() -> bool:
            return "gone" not in registry.ids("default")

        async with anyio.create_task_group() as tg, registry.locked("default", "gone") as entry:
            tg.start_soon(delete)
            await _eventually(unlisted)  # new requests no longer find it...
            assert (await c.get("/v1/vms/gone")).status_code == 404
            await anyio.sleep(0.1)
            assert done == [] and not entry.deleted  # ...but the delete waits for us
        assert done == [204] and entry.deleted
        assert (await c.post("/v1/vms", json={"id": "gone"})).status_code == 201


async def test_waiting_requests_hold_no_threads() -> None:
    """Requests queued on a busy VM wait in the event loop: even with a 2-thread pool and
    20 requests waiting on VM a, VM b is served."""
    app = make_app()
    registry: Registry = app.state.registry
    limiter = anyio.to_thread.current_default_thread_limiter()
    tokens = limiter.total_tokens
    limiter.total_tokens = 2
    try:
        async with client_for(app) as c:
            await c.post("/v1/vms", json={"id": "a"})
            await c.post("/v1/vms", json={"id": "b"})
            codes: list[int] = []

            async def ack_a() -> None:
                codes.append((await c.post("/v1/vms/a/vcpus/0/ack")).status_code)

            async with anyio.create_task_group() as tg, registry.locked("default", "a"):
                for _ in range(20):
                    tg.start_soon(ack_a)
                await anyio.sleep(0.1)
                with anyio.fail_after(10):
                    assert (await c.post("/v1/vms/b/vcpus/0/ack")).status_code == 200
                assert codes == []
            assert codes == [200] * 20
    finally:
        limiter.total_tokens = tokens
