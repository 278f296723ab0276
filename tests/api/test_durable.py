"""Durable state in process (IRQLAB_STATE_DIR): journal framing, torn records, compaction,
restore, delete. The app's lifespan (start-up restore, shutdown sync) is run explicitly, as
a server runs it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api.journal import Record, read_records

from .conftest import client_for, make_app

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def served(state: Path, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(state_dir=state, **settings)
    async with app.router.lifespan_context(app), client_for(app) as c:
        yield c


async def drive(c: httpx.AsyncClient, vm: str = "a", rounds: int = 6) -> None:
    r = await c.put(f"/v1/vms/{vm}/ioapic/pins/5",
                    json={"vector": "0x40", "trigger": "level", "dest": 0})
    assert r.status_code == 200, r.text
    for _ in range(rounds):
        assert (await c.post(f"/v1/vms/{vm}/ioapic/pins/5/line",
                             json={"action": "assert"})).status_code == 200
        assert (await c.post(f"/v1/vms/{vm}/vcpus/0/ack")).status_code == 200
        assert (await c.post(f"/v1/vms/{vm}/vcpus/0/eoi")).status_code == 200
        assert (await c.post(f"/v1/vms/{vm}/ioapic/pins/5/line",
                             json={"action": "deassert"})).status_code == 200


async def snapshot(c: httpx.AsyncClient, vm: str = "a") -> dict[str, Any]:
    r = await c.get(f"/v1/vms/{vm}/snapshot")
    assert r.status_code == 200, r.text
    snap: dict[str, Any] = r.json()
    return snap


def journal(state: Path, vm: str = "a", tenant: str = "default") -> Path:
    return state / "vms" / tenant / vm / "journal.log"


def test_record_round_trip_and_torn_tails(tmp_path: Path) -> None:
    path = tmp_path / "j"
    recs = [Record(i + 1, "POST", f"/v1/vms/a/x{i}", "application/json", b'{"k": %d}' % i)
            for i in range(3)]
    data = b"".join(r.encode() for r in recs)
    path.write_bytes(data)
    assert read_records(str(path)).records == recs
    for cut in range(1, len(recs[-1].encode())):  # every torn length of the last record
        path.write_bytes(data[:-cut])
        read = read_records(str(path))
        assert read.records == recs[:2]
        assert read.good_bytes == len(data) - len(recs[-1].encode())
        assert read.torn_bytes == len(recs[-1].encode()) - cut
    damaged = bytearray(data)
    damaged[-1] ^= 0x01  # a flipped bit in the last body: the CRC catches it
    path.write_bytes(bytes(damaged))
    assert read_records(str(path)).records == recs[:2]


async def test_restart_restores_state_and_event_log(tmp_path: Path) -> None:
    async with served(tmp_path) as c:
        assert (await c.post("/v1/vms", json={"id": "a", "vcpus": 2})).status_code == 201
        await drive(c)
        await c.post("/v1/vms/a/vcpus/9/ack")  # a refused operation is journaled too
        before = await snapshot(c)
        events = (await c.get("/v1/vms/a/events")).json()
    async with served(tmp_path) as c:
        assert await snapshot(c) == before
        assert (await c.get("/v1/vms/a/events")).json() == events
        # and it goes on from there: the next operation's events continue the seqs
        r = await c.post("/v1/vms/a/ioapic/pins/5/line", json={"action": "assert"})
        assert r.json()["events"][0]["seq"] == events["last_seq"] + 1


async def test_torn_last_record_is_dropped_at_start_up(tmp_path: Path) -> None:
    async with served(tmp_path) as c:
        assert (await c.post("/v1/vms", json={"id": "a"})).status_code == 201
        await drive(c, rounds=2)
        acknowledged = await snapshot(c)
    path = journal(tmp_path)
    good = path.read_bytes()
    torn = Record(10_000, "POST", "/v1/vms/a/ioapic/pins/5/line", "application/json",
                  b'{"action": "assert"}').encode()
    path.write_bytes(good + torn[:-3])  # the process died inside write(2)
    async with served(tmp_path) as c:
        assert await snapshot(c) == acknowledged
    assert path.read_bytes() == good  # cut back to the whole records
    async with served(tmp_path) as c:  # and still good after another restart
        assert await snapshot(c) == acknowledged


async def test_compaction_bounds_the_journal(tmp_path: Path) -> None:
    async with served(tmp_path, state_snapshot_every=5) as c:
        assert (await c.post("/v1/vms", json={"id": "a"})).status_code == 201
        await drive(c, rounds=3)  # 13 operations: snapshots at 5 and 10, 3 records left
        before = await snapshot(c)
    records = read_records(str(journal(tmp_path))).records
    assert [r.seq for r in records] == [11, 12, 13]
    doc = json.loads((journal(tmp_path).parent / "snapshot.json").read_bytes())
    assert doc["seq"] == 10
    async with served(tmp_path, state_snapshot_every=5) as c:
        assert await snapshot(c) == before


async def test_snapshot_restore_and_delete_are_durable(tmp_path: Path) -> None:
    async with served(tmp_path) as c:
        for vm in ("a", "b"):
            assert (await c.post("/v1/vms", json={"id": vm})).status_code == 201
        await drive(c, "a")
        snap_a = await snapshot(c, "a")
        assert (await c.put("/v1/vms/b/snapshot", json=snap_a)).status_code == 200
        assert (await c.delete("/v1/vms/a")).status_code == 204
    assert not journal(tmp_path, "a").parent.exists()
    async with served(tmp_path) as c:
        assert (await c.get("/v1/vms/a")).status_code == 404
        assert await snapshot(c, "b") == snap_a
        assert [v["id"] for v in (await c.get("/v1/vms")).json()["vms"]] == ["b"]


async def test_leftover_of_an_interrupted_create_is_removed(tmp_path: Path) -> None:
    half = tmp_path / "vms" / "default" / "half"
    half.mkdir(parents=True)
    (half / "journal.log").write_bytes(b"")
    async with served(tmp_path) as c:
        assert (await c.get("/v1/vms")).json() == {"vms": []}
    assert not half.exists()


async def test_a_journal_that_cannot_be_written_is_503(tmp_path: Path) -> None:
    """The operation is not acknowledged when its record cannot be written."""
    import os

    app = make_app(state_dir=tmp_path)
    async with app.router.lifespan_context(app), client_for(app) as c:
        assert (await c.post("/v1/vms", json={"id": "a"})).status_code == 201
        journal_file = app.state.registry._vms[("default", "a")].journal.file
        os.close(journal_file.fd)  # the next write(2) fails with EBADF
        journal_file.fd = os.open(os.devnull, os.O_RDONLY)
        r = await c.post("/v1/vms/a/vcpus/0/ack")
        assert r.status_code == 503, r.text
        assert r.json()["type"] == "/problems/state-unavailable"


async def test_interval_policy_fsyncs_in_the_background(tmp_path: Path) -> None:
    import anyio

    app = make_app(state_dir=tmp_path, state_fsync="interval", state_fsync_interval_ms=20)
    async with app.router.lifespan_context(app), client_for(app) as c:
        assert (await c.post("/v1/vms", json={"id": "a"})).status_code == 201
        journal_ = app.state.registry._vms[("default", "a")].journal
        assert (await c.post("/v1/vms/a/vcpus/0/ack")).status_code == 200
        assert journal_.file.dirty  # answered before its fsync
        for _ in range(100):
            await anyio.sleep(0.02)
            if not journal_.file.dirty:
                break
        assert not journal_.file.dirty and journal_.synced == journal_.seq == 1


async def test_always_policy_shares_fsyncs(tmp_path: Path) -> None:
    """16 concurrent operations on one VM are all durable when answered, and need fewer
    fsyncs than operations (group commit)."""
    import anyio

    app = make_app(state_dir=tmp_path)
    async with app.router.lifespan_context(app), client_for(app) as c:
        assert (await c.post("/v1/vms", json={"id": "a"})).status_code == 201
        journal_ = app.state.registry._vms[("default", "a")].journal
        fsyncs = 0
        sync = journal_.file.sync

        def counted() -> None:
            nonlocal fsyncs
            fsyncs += 1
            sync()

        journal_.file.sync = counted  # type: ignore[method-assign]

        answered = 0

        async def one() -> None:
            nonlocal answered
            r = await c.post("/v1/vms/a/ioapic/pins/5/line", json={"action": "pulse"})
            assert r.status_code == 200
            answered += 1
            # every answered operation's record (seq <= that of the latest) is fsynced
            assert journal_.synced >= answered

        async with anyio.create_task_group() as tg:
            for _ in range(16):
                tg.start_soon(one)
        assert journal_.seq == journal_.synced == 16
        assert 1 <= fsyncs < 16
