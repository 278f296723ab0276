"""/healthz latency on a real `irqlab serve` (default settings) while the heaviest scenario
runs the default limits allow are in flight: IRQLAB_WORKERS interrupt storms settling with
the largest budget (each stops at IRQLAB_MAX_RUN_EVENTS), back to back, plus a 400 kB YAML
document. Prints the probe latency percentiles and the runs' outcomes with the load average.

Usage: python bench/healthz_under_runs.py [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.settings import Settings
from tests.api.test_healthz_under_load import STORM, big_yaml
from tests.uvicorn_server import irqlab_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    with irqlab_server() as base:
        stop = threading.Event()
        outcomes: list[tuple[int, float]] = []

        def heavy(body: object) -> None:
            with httpx.Client(base_url=base, timeout=120) as c:
                while not stop.is_set():
                    start = time.perf_counter()
                    if isinstance(body, bytes):
                        r = c.post("/v1/scenarios/run", content=body,
                                   headers={"content-type": "application/yaml"})
                    else:
                        r = c.post("/v1/scenarios/run", json=body)
                    outcomes.append((r.status_code, time.perf_counter() - start))

        threads = [threading.Thread(target=heavy, args=(STORM,))
                   for _ in range(Settings().workers)]
        threads.append(threading.Thread(target=heavy, args=(big_yaml(400_000),)))
        for t in threads:
            t.start()
        latencies: list[float] = []
        with httpx.Client(base_url=base, timeout=5) as c:
            time.sleep(0.5)
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                start = time.perf_counter()
                c.get("/healthz")
                latencies.append(time.perf_counter() - start)
                time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"/healthz: {len(latencies)} probes, p50 {q[49] * 1000:.1f} ms, "
          f"p99 {q[98] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    for status in sorted({s for s, _ in outcomes}):
        times = [t for s, t in outcomes if s == status]
        print(f"runs answered {status}: {len(times)}, median {statistics.median(times):.2f} s")


if __name__ == "__main__":
    main()
