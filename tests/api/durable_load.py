"""A 16-client load for the durability tests, and the oracle that says what the server may
hold afterwards.

Each client owns one VM (so the order its operations were applied in is the order it sent
them), creates it, then sends a fixed pseudo-random sequence of operations (pin writes, line
changes, ack/EOI, MSIs, KVM_RUN, clock, LAPIC writes, now and then a delete and re-create),
each on a keep-alive connection, until the server goes away or the sequence ends. It keeps
every operation it got a response to (whatever the status: a 4xx is an answer too) and the
one it was waiting for when the connection broke.

The oracle replays those operations on a fresh in-process app: the server's VM after a
restart must be the acknowledged prefix, or the prefix plus the one operation in flight
(the server may have applied it and journaled it just before it died, without the client
reading the answer), state and event log byte for byte (the snapshot document holds both).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from .conftest import client_for, make_app

CLIENTS = 16
Op = tuple[str, str, Any]  # method, path, JSON body or None


def operations(client: int, count: int) -> list[Op]:
    rng = random.Random(client)
    vm = f"/v1/vms/c{client}"
    create: Op = ("POST", "/v1/vms", {"id": f"c{client}", "vcpus": 2,
                                     "irqchip": "split" if client % 2 else "kernel"})
    ops: list[Op] = [create]
    for i in range(count):
        k = rng.randrange(10)
        pin = rng.choice((3, 5, 9))
        if i % 40 == 39:
            ops += [("DELETE", vm, None), create]
        elif k == 0:
            ops.append(("PUT", f"{vm}/ioapic/pins/{pin}", {
                "vector": rng.choice(("0x40", "0x41", "0x52")), "dest": rng.randrange(2),
                "trigger": rng.choice(("edge", "level")), "masked": rng.random() < 0.1}))
        elif k in (1, 2):
            ops.append(("POST", f"{vm}/ioapic/pins/{pin}/line",
                        {"action": rng.choice(("assert", "deassert", "pulse"))}))
        elif k == 3:
            ops.append(("POST", f"{vm}/vcpus/{rng.randrange(2)}/ack", None))
        elif k == 4:
            ops.append(("POST", f"{vm}/vcpus/{rng.randrange(2)}/eoi", None))
        elif k == 5:
            ops.append(("POST", f"{vm}/vcpus/{rng.randrange(2)}/enter", None))
        elif k == 6:
            ops.append(("POST", f"{vm}/msi", {"decoded": {
                "dest": rng.randrange(2), "vector": rng.choice((0x40, 0x60)),
                "trigger": "edge"}}))
        elif k == 7:
            ops.append(("POST", f"{vm}/clock", {"advance_us": rng.randrange(1, 20000)}))
        elif k == 8:
            ops.append(("PATCH", f"{vm}/vcpus/{rng.randrange(2)}/lapic",
                        {"tpr": rng.choice((0, 0x30, 0x50))}))
        else:
            ops.append(("POST", f"{vm}/vcpus/{rng.randrange(2)}/exit", None))
    return ops


@dataclass
class Client:
    n: int
    ops: list[Op]
    acked: list[Op] = field(default_factory=list)
    in_flight: Op | None = None
    error: str | None = None


def drive(base: str, client: Client, stop: threading.Event) -> None:
    with httpx.Client(base_url=base, timeout=30) as http:
        for op in client.ops:
            if stop.is_set():
                return
            method, path, body = op
            client.in_flight = op
            try:
                r = http.request(method, path, json=body)
            except httpx.TransportError as exc:
                client.error = repr(exc)
                return
            assert r.status_code < 500, (op, r.status_code, r.text)
            client.acked.append(op)
            client.in_flight = None


def run_load(base: str, ops_per_client: int, until_acked: int | None,
             deadline_s: float = 60.0) -> tuple[list[Client], list[threading.Thread],
                                                threading.Event]:
    """Start the 16 clients; return once `until_acked` operations were acknowledged in all
    (the caller then kills or stops the server) or, with None, once all have finished."""
    clients = [Client(i, operations(i, ops_per_client)) for i in range(CLIENTS)]
    stop = threading.Event()
    threads = [threading.Thread(target=drive, args=(base, c, stop), daemon=True)
               for c in clients]
    for t in threads:
        t.start()
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if until_acked is not None and sum(len(c.acked) for c in clients) >= until_acked:
            break
        if until_acked is None and not any(t.is_alive() for t in threads):
            break
        time.sleep(0.01)
    return clients, threads, stop


def finish(threads: list[threading.Thread], stop: threading.Event) -> None:
    """Wait for the clients: once the server is gone, each stops at its next request (a
    connection error); `stop` is only the backstop if one has not stopped within 30 s."""
    for t in threads:
        t.join(timeout=30)
    stop.set()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "a load client did not stop"


async def expected_snapshots(client: Client) -> list[dict[str, Any] | None]:
    """What the server may hold for the client's VM: the acknowledged operations replayed
    (None: no VM), then, if one was in flight, that plus the in-flight one."""
    prefixes = [client.acked]
    if client.in_flight is not None:
        prefixes.append([*client.acked, client.in_flight])
    out: list[dict[str, Any] | None] = []
    for ops in prefixes:
        async with client_for(make_app()) as c:
            for method, path, body in ops:
                r = await c.request(method, path, json=body)
                assert r.status_code < 500, r.text
            r = await c.get(f"/v1/vms/c{client.n}/snapshot")
            out.append(r.json() if r.status_code == 200 else None)
    return out


def server_snapshot(base: str, n: int) -> dict[str, Any] | None:
    r = httpx.get(f"{base}/v1/vms/c{n}/snapshot", timeout=30)
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    snap: dict[str, Any] = r.json()
    return snap
