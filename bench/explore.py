"""The checker's throughput: distinct states per second per core, 1 vs N workers, with and
without each reduction, and its own cost per state and memory per state.

Any model can be measured: `--model module:function` names a module-level function returning
a `Model` (called with the `--args` JSON list), which is also how worker processes rebuild it.
Defaults to the toy `app.explore.toys:wide` (5 processes of 8 steps, a shared variable every
third step). `--exploration NAME|FILE` measures the irqlab model instead: a library exploration
or an exploration document (`bench/explore_irqbalance_3vcpu.yaml`, 82,250 states under
linux-latest, is the big one), under `--profile`.

Per configuration the run is repeated (`--runs`) and min / median / max are printed for
states/s of wall time (process start-up included) and states/s of CPU time (the search's CPU
time in the coordinator and every worker, `stats.cpu_seconds`: "per core" figures that do not
depend on how busy the machine is), with the load average before and after.

"CPU-bound speedup" is the first worker count's critical-path CPU time (the busiest process's
CPU time, `stats.critical_cpu_seconds`) over this one's: the speedup the work division allows
on an idle machine, without process start-up and barrier waits (the wall figures include
those, and on a loaded machine they mostly measure the load).

`--overhead` measures the checker's own cost per state on `toys:ring` (whose model calls cost
almost nothing: the model's time, measured by driving it without the checker, is subtracted)
and the visited-set bytes per state (exact buffer sizes, and tracemalloc's peak for everything
the search allocates).

`--exploration NAME|FILE [--profile P]` measures the irqlab model on a library exploration or
a document (its footprints give persistent sets; see docs/explorer-checker.md).

Usage:
    python bench/explore.py [--model app.explore.toys:wide --args '[5, 8]'] [--runs 5]
        [--exploration seed-race-split --profile linux-latest]
        [--workers 1,2] [--reductions none,sleep,persistent,both,symmetry] [--overhead]
    python bench/explore.py --exploration bench/explore_irqbalance_3vcpu.yaml --workers 1,2
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import time
import tracemalloc
from typing import Any

import yaml

from app import explorations
from app.engine import ENGINE_BUILD
from app.explore.checker import CheckOptions, CheckResult, check
from app.explore.irq_model import build_model
from app.explore.model_api import ModelFactory
from app.explore.toys import ring

REDUCTIONS = {
    "none": {"sleep_sets": False, "persistent_sets": False},
    "sleep": {"sleep_sets": True, "persistent_sets": False},
    "persistent": {"sleep_sets": False, "persistent_sets": True},
    "both": {"sleep_sets": True, "persistent_sets": True},
    "symmetry": {"sleep_sets": False, "persistent_sets": True, "symmetry": True},
}


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _spread(xs: list[float]) -> str:
    return f"{min(xs):>9,.0f} {statistics.median(xs):>9,.0f} {max(xs):>9,.0f}"


def run_matrix(factory: ModelFactory[Any], name: str, args: argparse.Namespace) -> None:
    print(f"model {name}  runs={args.runs}  engine: {ENGINE_BUILD}  {os.cpu_count()} CPUs"
          f"  load avg {_load()}")
    print(
        f"{'reduction':<11} {'workers':>7} {'verdict':<9} {'states':>9} {'transitions':>11}"
        f" | states/s wall: min / median / max | states/s per core (CPU): min / median / max"
        f" | CPU-bound speedup"
    )
    base: dict[str, float] = {}
    for red in args.reductions.split(","):
        for workers in (int(w) for w in args.workers.split(",")):
            opts = CheckOptions(workers=workers, max_seconds=args.max_seconds, **REDUCTIONS[red])
            wall: list[float] = []
            cpu: list[float] = []
            critical: list[float] = []
            result: CheckResult | None = None
            for _ in range(args.runs):
                t0 = time.perf_counter()
                result = check(factory, opts)
                dt, dc = time.perf_counter() - t0, result.stats.cpu_seconds
                wall.append(result.stats.states / dt)
                cpu.append(result.stats.states / dc if dc > 0 else 0.0)
                critical.append(result.stats.critical_cpu_seconds)
            assert result is not None
            crit = statistics.median(critical)
            base.setdefault(red, crit)
            print(
                f"{red:<11} {workers:>7} {result.verdict:<9} {result.stats.states:>9,}"
                f" {result.stats.transitions:>11,} | {_spread(wall)} | {_spread(cpu)}"
                f" | {base[red] / crit if crit > 0 else 0.0:.2f}x"
            )
    print(f"load avg after {_load()}")


def overhead(n: int) -> None:
    model = ring(n)
    for name, opts in (
        ("no reductions", CheckOptions(sleep_sets=False, persistent_sets=False)),
        ("sleep sets", CheckOptions()),
    ):
        c0 = time.process_time()
        r = check(model, opts)
        dc = time.process_time() - c0
        # The same model calls without the checker around them.
        m0 = time.process_time()
        for s in range(1, n):
            acts = model.actions(s)
            model.violation(s, not acts)
            for a in acts:
                model.fingerprint(model.step(s, a))
        dm = time.process_time() - m0
        per = (dc - dm) / r.stats.states * 1e6
        print(
            f"ring({n:,}) {name}: {r.stats.states:,} states, {dc / r.stats.states * 1e6:.2f} µs"
            f" CPU/state in all, model {dm / r.stats.states * 1e6:.2f}, checker {per:.2f} µs/state"
        )
    r = check(model, CheckOptions(sleep_sets=False))
    print(f"visited set + parent arrays: {r.stats.visited_bytes / r.stats.states:.1f} bytes/state")
    tracemalloc.start()
    r = check(model, CheckOptions(sleep_sets=False))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"tracemalloc peak for the whole search (frontier included): "
        f"{peak / r.stats.states:.1f} bytes/state over {r.stats.states:,} states"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="app.explore.toys:wide")
    ap.add_argument("--args", type=json.loads, default=[5, 8])
    ap.add_argument("--exploration", help="a library exploration's name or a document's path")
    ap.add_argument("--profile", default="linux-latest", help="with --exploration")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--reductions", default="none,sleep,persistent,both")
    ap.add_argument("--max-seconds", type=float, default=None)
    ap.add_argument("--overhead", action="store_true", help="measure the checker's own cost")
    ap.add_argument("--ring", type=int, default=300_000, help="states of the overhead model")
    args = ap.parse_args()
    if args.overhead:
        overhead(args.ring)
        return
    factory: ModelFactory[Any]
    if args.exploration:
        factory = ModelFactory(build_model, (_exploration(args.exploration), args.profile))
        name = f"{args.exploration} ({args.profile})"
    else:
        module, _, func = args.model.partition(":")
        factory = ModelFactory(getattr(importlib.import_module(module), func), tuple(args.args))
        name = f"{args.model}{tuple(args.args)}"
    run_matrix(factory, name, args)


def _exploration(name: str) -> dict[str, Any]:
    if os.path.exists(name):
        with open(name) as f:
            doc: dict[str, Any] = yaml.safe_load(f)
        return doc
    found = explorations.get(name)
    if found is None:
        raise SystemExit(f"no exploration {name!r} (neither a file nor a library name)")
    return found


if __name__ == "__main__":
    main()
