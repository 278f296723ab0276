"""What the journal (IRQLAB_STATE_DIR) costs on the line route: the line-assert/deassert
route of bench/api_load.py on a server without a state directory and on one with each fsync
policy (always, interval, never), one uvicorn worker each (`irqlab serve`), wrk with one
thread. Rounds alternate the configurations so that drift on a shared machine hits all alike.

The state directory is a temporary directory on the file system of --dir (default: the
system's temporary directory); fsync cost depends entirely on that device.

Usage: python bench/journal_cost.py [--seconds S] [--connections C] [--rounds R] [--dir D]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import httpx
from api_load import HOST, LINE_LUA, free_port, setup_vm, start_server, wrk

CONFIGS: dict[str, dict[str, str]] = {
    "no state dir": {},
    "fsync always": {"IRQLAB_STATE_FSYNC": "always"},
    "fsync interval (100 ms)": {"IRQLAB_STATE_FSYNC": "interval"},
    "fsync never": {"IRQLAB_STATE_FSYNC": "never"},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where the state directories are made")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in CONFIGS}
    engine = "?"
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        lua = Path(tmp) / "line.lua"
        lua.write_text(LINE_LUA)
        for rnd in range(args.rounds):
            for name, env in CONFIGS.items():
                extra = dict(env)
                if env:
                    extra["IRQLAB_STATE_DIR"] = os.path.join(tmp, f"state-{rnd}-{len(runs)}"
                                                             f"-{name.split()[1]}")
                port = free_port()
                base = f"http://{HOST}:{port}"
                proc = start_server(port, extra)
                try:
                    setup_vm(base)
                    engine = httpx.get(f"{base}/readyz").json().get("engine", "?")
                    runs[name].append(wrk(f"{base}/v1/vms/bench/ioapic/pins/5/line",
                                          args.seconds, args.connections, lua))
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
    base_rate = statistics.median(r["rate"] for r in runs["no state dir"])
    print(f"POST …/pins/5/line, one VM, one uvicorn worker, wrk -t1 -c{args.connections}, "
          f"{args.rounds} rounds x {args.seconds} s, medians (min-max of rates); "
          f"engine: {engine}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'configuration':26} {'req/s':>7} {'min-max':>13} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'vs none':>8}")
    for name, rs in runs.items():
        rates = [r["rate"] for r in rs]
        rate = statistics.median(rates)
        print(f"{name:26} {rate:7.0f} {min(rates):6.0f}-{max(rates):<6.0f} "
              f"{statistics.median(r['p50_ms'] for r in rs):7.2f} "
              f"{statistics.median(r['p99_ms'] for r in rs):7.2f} {rate / base_rate:7.0%}")


if __name__ == "__main__":
    main()
