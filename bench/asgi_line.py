"""The line route's cost inside the app, without HTTP: POST …/pins/5/line requests (assert
and deassert alternating) fed straight to the ASGI app, so the figure is the app's own time
per request (middleware, routing, engine, rendering), steadier than a loopback load test on
a shared machine. `--watch` keeps a live-dashboard subscriber on the VM, as an open /ui page
does (the registry then tells the hub after each operation).

Usage: python bench/asgi_line.py [--requests N] [--rounds R] [--watch]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from app.engine import ENGINE_BUILD
from app.main import create_app
from app.settings import Settings


async def bench(requests: int, rounds: int, watch: bool) -> list[float]:
    app = create_app(Settings.model_construct())
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def call(method: str, path: str, body: bytes) -> int:
        sent.clear()
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "path": path, "raw_path": path.encode(), "root_path": "",
                 "scheme": "http", "query_string": b"", "server": ("127.0.0.1", 8000),
                 "client": ("127.0.0.1", 1), "headers": [
                     (b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                     (b"content-length", str(len(body)).encode())]}
        done = False

        async def receive() -> Any:
            nonlocal done
            if done:
                return {"type": "http.disconnect"}
            done = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, receive, send)
        status: int = sent[0]["status"]
        return status

    assert await call("POST", "/v1/vms", b'{"id": "bench", "vcpus": 1}') == 201
    assert await call("PUT", "/v1/vms/bench/ioapic/pins/5",
                      b'{"vector": "0x40", "trigger": "edge", "dest": 0}') == 200
    hub = getattr(app.state.registry, "hub", None)
    if watch:
        if hub is None:
            raise SystemExit("--watch: this version has no live hub")
        hub.subscribe()
    bodies = (b'{"action": "assert"}', b'{"action": "deassert"}')
    per_request = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(requests):
            await call("POST", "/v1/vms/bench/ioapic/pins/5/line", bodies[i & 1])
        per_request.append((time.perf_counter() - start) / requests * 1e6)
        assert sent[0]["status"] == 200
    return per_request


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--watch", action="store_true")
    args = ap.parse_args()
    us = asyncio.run(bench(args.requests, args.rounds, args.watch))
    print(f"line route in the app, engine {ENGINE_BUILD}{', watched' if args.watch else ''}: "
          f"median {statistics.median(us):.1f} us/request (min {min(us):.1f}, "
          f"max {max(us):.1f}) over {args.rounds} rounds of {args.requests}")


if __name__ == "__main__":
    main()
