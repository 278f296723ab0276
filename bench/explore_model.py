"""The irqlab model's cost per transition under the explorer: distinct states/s of a plain
breadth-first search (app/explore/simple_bfs.py, no reductions, one process) over library
explorations and a bigger bench program, and where the time goes (clone + engine call,
fingerprint, enabled actions, properties).

Rates are given per wall-clock second and per CPU second of this process (time.process_time):
on a loaded machine the second is the one that says what a core does. The engine copy in use
(compiled by mypyc or pure Python) is printed first; run once with each (IRQLAB_ENGINE=python
forces the pure one). The machine's load average is printed too: on a shared machine,
figures move with it.

Usage: python bench/explore_model.py [--profile P] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import explorations  # noqa: E402
from app.engine import ENGINE_BUILD  # noqa: E402
from app.explore.irq_model import IrqModel  # noqa: E402
from app.explore.simple_bfs import bfs  # noqa: E402

BENCH_DOC = Path(__file__).with_name("explore_irqbalance_3vcpu.yaml")


class Timed:
    """Wraps a model, timing each protocol method."""

    def __init__(self, model: IrqModel) -> None:
        self.m = model
        self.t: dict[str, float] = {"actions": 0.0, "step": 0.0, "fingerprint": 0.0,
                                    "violation": 0.0, "canonical": 0.0}

    def _timed(self, name: str, f: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        out = f(*args)
        self.t[name] += time.perf_counter() - t0
        return out

    def initial(self) -> Any:
        return self.m.initial()

    def actions(self, s: Any) -> Any:
        return self._timed("actions", self.m.actions, s)

    def step(self, s: Any, a: Any) -> Any:
        return self._timed("step", self.m.step, s, a)

    def fingerprint(self, s: Any) -> int:
        out: int = self._timed("fingerprint", self.m.fingerprint, s)
        return out

    def violation(self, s: Any, terminal: bool) -> Any:
        return self._timed("violation", self.m.violation, s, terminal)

    def canonical(self, s: Any) -> Any:
        return self._timed("canonical", self.m.canonical, s)


def measure(doc: dict[str, Any], profile: str, repeat: int) -> dict[str, Any]:
    rates = []
    cpu_rates = []
    timed = None
    r = None
    for _ in range(repeat):
        # Rates from the bare model: the timing wrapper's own calls would count as its cost.
        model = IrqModel(doc, profile)
        t0 = time.perf_counter()
        c0 = time.process_time()
        r = bfs(model)
        secs = time.perf_counter() - t0
        cpu = time.process_time() - c0
        rates.append(r.stats["states"] / secs)
        cpu_rates.append(r.stats["states"] / cpu)
    timed = Timed(IrqModel(doc, profile))  # one instrumented run: where the time goes
    bfs(timed)  # type: ignore[arg-type]
    assert r is not None
    total = sum(timed.t.values())
    return {"name": doc["name"], "verdict": r.verdict, "states": r.stats["states"],
            "transitions": r.stats["transitions"], "rate_median": statistics.median(rates),
            "rate_range": (min(rates), max(rates)),
            "cpu_rate_median": statistics.median(cpu_rates),
            "cpu_rate_range": (min(cpu_rates), max(cpu_rates)),
            "split": {k: v / total for k, v in timed.t.items()},
            "us_per_transition": 1e6 * (timed.t["step"] + timed.t["fingerprint"])
            / max(1, r.stats["transitions"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--profile", default="linux-latest")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"engine: {ENGINE_BUILD}; load average {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs; profile {args.profile}")
    sym = explorations.get("broadcast-level-split")
    assert sym is not None
    plain = {**{k: v for k, v in sym.items() if k != "symmetry"},
             "name": "broadcast-level-split (symmetry off)"}
    # The last two: states with and without the declared vCPU symmetry.
    docs = [explorations.get("seed-race-split"), explorations.get("lowest-priority-3vcpu"),
            yaml.safe_load(BENCH_DOC.read_text()), sym, plain]
    for doc in docs:
        assert doc is not None
        m = measure(doc, args.profile, args.repeat)
        lo, hi = m["rate_range"]
        clo, chi = m["cpu_rate_range"]
        split = ", ".join(f"{k} {v:.0%}" for k, v in m["split"].items())
        print(f"{m['name']}: {m['verdict']}, {m['states']} states, {m['transitions']} "
              f"transitions; {m['rate_median']:,.0f} distinct states/s wall (range {lo:,.0f}-"
              f"{hi:,.0f}), {m['cpu_rate_median']:,.0f} per CPU second (range {clo:,.0f}-"
              f"{chi:,.0f}); {m['us_per_transition']:.1f} us per transition (step + "
              f"fingerprint, wall); time: {split}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
