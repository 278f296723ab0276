"""HTTP load on loopback: the line-assert and bitmaps routes against a no-op route, on one
uvicorn worker started as production starts it (`irqlab serve`, default settings), all in the
same run. Load comes from wrk (Debian package) with one thread so the server keeps its core.

Each route's rate is compared with the no-op route's (GET /healthz); the target is >= 80 %.
Rounds alternate the routes so that drift on a shared machine hits all of them alike.

Usage: python bench/api_load.py [--seconds S] [--connections C] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_server(port: int, extra_env: dict[str, str] | None = None
                 ) -> subprocess.Popen[bytes]:
    irqlab = Path(sys.executable).with_name("irqlab")
    env = {**os.environ, "IRQLAB_HOST": HOST, "IRQLAB_PORT": str(port), **(extra_env or {})}
    proc = subprocess.Popen([str(irqlab), "serve"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://{HOST}:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("server did not come up within 30 s")


def setup_vm(base: str) -> None:
    """One vCPU, pin 5 edge-triggered vector 0x40 to vCPU0."""
    r = httpx.post(f"{base}/v1/vms", json={"id": "bench", "vcpus": 1})
    r.raise_for_status()
    r = httpx.put(f"{base}/v1/vms/bench/ioapic/pins/5",
                  json={"vector": "0x40", "trigger": "edge", "dest": 0})
    r.raise_for_status()


LINE_LUA = (
    # Alternate assert and deassert so that every request changes the line: an assert
    # delivers vector 0x40 to vCPU0 (edge: latched, delivered, TMR cleared), a deassert
    # clears the latched irr. Each connection keeps its own parity.
    'local n = 0\n'
    'request = function()\n'
    '  n = n + 1\n'
    '  local body = (n % 2 == 1) and \'{"action": "assert"}\' '
    'or \'{"action": "deassert"}\'\n'
    '  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)\n'
    'end\n')


def wrk(url: str, seconds: int, connections: int, lua: Path | None) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if lua is not None:
        cmd += ["-s", str(lua)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    if re.search(r"Non-2xx or 3xx responses", out):
        raise SystemExit(f"non-2xx responses from {url}:\n{out}")

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
        return float(m.group(1)) * scale

    return {"rate": rate, "p50_ms": pct("50"), "p99_ms": pct("99")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    port = free_port()
    base = f"http://{HOST}:{port}"
    proc = start_server(port)
    try:
        setup_vm(base)
        engine = httpx.get(f"{base}/readyz").json().get("engine", "?")
        with tempfile.TemporaryDirectory() as tmp:
            lua = Path(tmp) / "line.lua"
            lua.write_text(LINE_LUA)
            routes = {
                "no-op GET /healthz": (f"{base}/healthz", None),
                "POST …/pins/5/line assert/deassert": (
                    f"{base}/v1/vms/bench/ioapic/pins/5/line", lua),
                "GET …/bitmaps": (f"{base}/v1/vms/bench/bitmaps", None),
            }
            runs: dict[str, list[dict[str, float]]] = {k: [] for k in routes}
            for _ in range(args.rounds):
                for name, (url, script) in routes.items():
                    runs[name].append(wrk(url, args.seconds, args.connections, script))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    noop = statistics.median(r["rate"] for r in runs["no-op GET /healthz"])
    print(f"one uvicorn worker, wrk -t1 -c{args.connections}, {args.rounds} rounds x "
          f"{args.seconds} s per route, medians; engine: {engine}")
    print(f"{'route':38} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs no-op':>9}")
    for name, rs in runs.items():
        rate = statistics.median(r["rate"] for r in rs)
        p50 = statistics.median(r["p50_ms"] for r in rs)
        p99 = statistics.median(r["p99_ms"] for r in rs)
        print(f"{name:38} {rate:9.0f} {p50:8.2f} {p99:8.2f} {rate / noop:8.0%}")


if __name__ == "__main__":
    main()
