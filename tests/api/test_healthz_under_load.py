"""A real uvicorn server (issue 10): /healthz stays fast (p99 < 50 ms) while the heaviest
requests the default limits allow are in flight: IRQLAB_WORKERS interrupt storms, each
settling with the largest budget until IRQLAB_MAX_RUN_EVENTS stops it, back to back, plus a
large YAML document. Before the worker pool, one such run stalled /healthz for 15 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx

from app.settings import Settings
from tests.uvicorn_server import ROOT, free_port, irqlab_server

STORM = {"handlers": {"0x41": [{"op": "msi", "data": "0x41"}, {"op": "eoi"}]},
         "steps": [{"op": "msi", "data": "0x41"},
                   {"op": "settle", "budget": Settings().max_settle_budget}]}


def big_yaml(target: int) -> bytes:
    """A valid document of about `target` bytes: many steps, under the document limits."""
    step = "  - {op: line, pin: 3, level: 0}\n"
    n = min(target // len(step), Settings().max_scenario_steps)
    return ("steps:\n" + step * n).encode()


def test_healthz_p99_under_budget_maximal_runs() -> None:
    with irqlab_server() as base:
        stop = threading.Event()
        outcomes: list[int] = []

        def heavy(body: object) -> None:
            with httpx.Client(base_url=base, timeout=120) as c:
                while not stop.is_set():
                    if isinstance(body, bytes):
                        r = c.post("/v1/scenarios/run", content=body,
                                   headers={"content-type": "application/yaml"})
                    else:
                        r = c.post("/v1/scenarios/run", json=body)
                    outcomes.append(r.status_code)

        threads = [threading.Thread(target=heavy, args=(STORM,)) for _ in range(
            Settings().workers)]
        threads.append(threading.Thread(target=heavy, args=(big_yaml(400_000),)))
        for t in threads:
            t.start()
        latencies: list[float] = []
        try:
            with httpx.Client(base_url=base, timeout=5) as c:
                time.sleep(0.5)  # the runs have started
                end = time.monotonic() + 6
                while time.monotonic() < end:
                    start = time.perf_counter()
                    assert c.get("/healthz").status_code == 200
                    latencies.append(time.perf_counter() - start)
                    time.sleep(0.01)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=120)
        assert outcomes and set(outcomes) <= {200, 422}, outcomes
        assert 422 in outcomes  # the storms ran into their budget while we probed
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99)]
        assert p99 < 0.050, f"p99 {p99 * 1000:.1f} ms over {len(latencies)} probes"


def test_sigterm_stops_the_server_at_once_whatever_runs() -> None:
    """A run that would take a minute is in flight; SIGTERM: its worker is killed, the
    request answers 503, and the server exits within seconds (not after the run)."""
    port = free_port()
    env = {**os.environ, "IRQLAB_HOST": "127.0.0.1", "IRQLAB_PORT": str(port),
           "IRQLAB_LOG_LEVEL": "warning", "IRQLAB_MAX_SETTLE_BUDGET": "10000000",
           "IRQLAB_MAX_RUN_EVENTS": "1000000000", "IRQLAB_MAX_RUN_STEPS": "1000000000",
           "IRQLAB_MAX_RUN_CPU_SECONDS": "120", "IRQLAB_MAX_RUN_SECONDS": "120"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        doc = {**STORM, "steps": [STORM["steps"][0], {"op": "settle", "budget": 10_000_000}]}
        answer: list[object] = []

        def run() -> None:
            try:
                answer.append(httpx.post(f"{base}/v1/scenarios/run", json=doc,
                                         timeout=120).status_code)
            except httpx.TransportError as exc:
                answer.append(exc)

        t = threading.Thread(target=run)
        t.start()
        time.sleep(2)  # the run is under way in a worker
        assert not answer
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert time.monotonic() - start < 10
        t.join(timeout=15)
        assert answer == [503], answer
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
