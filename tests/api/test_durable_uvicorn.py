"""Durable state against a real `irqlab serve`: SIGKILL and SIGTERM under a 16-client load,
then a restart on the same IRQLAB_STATE_DIR (127.0.0.1 only, bounded loops)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.uvicorn_server import free_port, irqlab_process

from .durable_load import CLIENTS, Client, expected_snapshots, finish, run_load, server_snapshot

pytestmark = pytest.mark.anyio


def _env(state: Path, fsync: str) -> dict[str, str]:
    # Small snapshot interval: compaction happens many times during the load.
    return {"IRQLAB_STATE_DIR": str(state), "IRQLAB_STATE_FSYNC": fsync,
            "IRQLAB_STATE_SNAPSHOT_EVERY": "40", "IRQLAB_SHUTDOWN_TIMEOUT": "5"}


async def _check_restart(state: Path, fsync: str, clients: list[Client]) -> None:
    with irqlab_process(env=_env(state, fsync)) as (base, _):
        listed = {v["id"] for v in httpx.get(f"{base}/v1/vms").json()["vms"]}
        for client in clients:
            got = server_snapshot(base, client.n)
            allowed = await expected_snapshots(client)
            assert got in allowed, (
                f"client {client.n}: VM after restart is neither the {len(client.acked)} "
                f"acknowledged operations nor those plus the one in flight "
                f"({client.in_flight}); exists={got is not None}")
            assert (f"c{client.n}" in listed) == (got is not None)
        assert listed <= {f"c{c.n}" for c in clients}


@pytest.mark.parametrize("fsync", ["always", "never"])
async def test_sigkill_under_load_loses_nothing_acknowledged(tmp_path: Path,
                                                             fsync: str) -> None:
    """SIGKILL while 16 clients drive their VMs: after a restart every VM is exactly what
    its client was acknowledged (plus, at most, the operation it was waiting for), state and
    event log alike; `never` shows that a killed process needs no fsync."""
    state = tmp_path / "state"
    with irqlab_process(env=_env(state, fsync)) as (base, proc):
        clients, threads, stop = run_load(base, ops_per_client=3000, until_acked=1500)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        finish(threads, stop)
    assert sum(len(c.acked) for c in clients) >= 1500
    assert all(c.error is not None for c in clients), "every client saw the server die"
    await _check_restart(state, fsync, clients)


async def test_sigterm_under_load_answers_or_refuses_and_loses_nothing(tmp_path: Path) -> None:
    """SIGTERM while 16 clients drive their VMs: the server stops within its shutdown
    timeout; every request it read was answered (a client sees a response or a refused or
    closed connection without an answer, which the server never applied), and after a
    restart every VM is exactly what its client was acknowledged."""
    state = tmp_path / "state"
    with irqlab_process(env=_env(state, "always")) as (base, proc):
        clients, threads, stop = run_load(base, ops_per_client=3000, until_acked=1500)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=5 + 10)
        except subprocess.TimeoutExpired:
            pytest.fail("irqlab serve did not stop within its shutdown timeout")
        took = time.monotonic() - sent
        finish(threads, stop)
    assert code in (0, -signal.SIGTERM), code  # uvicorn re-raises the signal it handled
    assert took < 5 + 5, took
    # Every request the server read was answered: a client's last request either got its
    # answer (then its next connection was refused) or was refused a connection; none was
    # reset on an open connection (uvicorn's own shutdown closes idle keep-alive
    # connections under a request already sent, see app/serve.py).
    errors = [c.error or "" for c in clients]
    assert all(e.startswith("ConnectError") for e in errors), errors
    # Graceful: nothing in flight was applied without its answer.
    restart = _env(state, "always")
    with irqlab_process(env=restart) as (base, _):
        for client in clients:
            got = server_snapshot(base, client.n)
            expected = (await expected_snapshots(client))[0]
            assert got == expected, (
                f"client {client.n}: after SIGTERM the VM is not its {len(client.acked)} "
                f"acknowledged operations (in flight: {client.in_flight}, {client.error})")


async def test_restart_port_is_reused(tmp_path: Path) -> None:
    """The same state directory served twice in a row on one port (the container restart
    case): the second server finds the VMs the first one made."""
    state = tmp_path / "state"
    port = free_port()
    with irqlab_process(env=_env(state, "interval"), port=port) as (base, _):
        assert httpx.post(f"{base}/v1/vms", json={"id": "keep"}).status_code == 201
    with irqlab_process(env=_env(state, "interval"), port=port) as (base, _):
        assert httpx.get(f"{base}/v1/vms/keep").status_code == 200
    assert CLIENTS == 16
