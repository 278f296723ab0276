"""Distributed exploration on a local Ray cluster against in-process search, on one model.

Measures, on this machine: distinct states/s of the in-process BFS (the reference), of
`bfs_on_ray` with 1 and 2 partition actors, a batch-size sweep, and the per-call overhead of
the successor exchange (an empty level: every actor expands nothing and sends nothing).
Prints min / median / max over --runs and the load average before and after.

Usage: python bench/explore_ray.py [--runs N] [--exploration NAME [--profile P]]
                                   [--model MODULE:FUNCTION] [--args JSON]
The default model is the test-suite's counter model (tests/ray/toy_model.py: run from the
repository's root); any function returning an app.explore.model_api.Model with JSON
arguments can be measured the same way.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the default model's tests/

from app.explore.model_api import ModelFactory


def _load(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def in_process(model: Any) -> tuple[int, float]:
    """The in-process checker on the graph bfs_on_ray explores (no partial-order reduction;
    symmetry, as bfs_on_ray always canonicalises): (states, seconds)."""
    from app.explore.checker import CheckOptions, check

    r = check(model, CheckOptions(sleep_sets=False, persistent_sets=False, symmetry=True))
    return r.stats.states, r.stats.seconds


def fmt(xs: list[float]) -> str:
    return f"median {statistics.median(xs):,.0f}  min {min(xs):,.0f}  max {max(xs):,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--model", default="tests.ray.toy_model:build")
    ap.add_argument("--args", default="[5, 2, true]", help="JSON list of the model's arguments")
    ap.add_argument("--batches", default="100,1000,5000")
    ap.add_argument("--exploration", metavar="NAME",
                    help="a library exploration instead of --model (with --profile)")
    ap.add_argument("--profile", default="linux-latest")
    args = ap.parse_args()
    if args.exploration:  # the irqlab model of a library exploration
        from app import explorations

        doc = explorations.get(args.exploration)
        if doc is None:
            raise SystemExit(f"no exploration {args.exploration!r}")
        args.model = "app.explore.irq_model:build_model"
        args.args = json.dumps([doc, args.profile])

    import ray

    from app.explore.on_ray import bfs_on_ray

    build = _load(args.model)
    margs = tuple(json.loads(args.args))
    factory: ModelFactory[Any] = ModelFactory(build, margs)
    label = args.exploration and f"{args.exploration} under {args.profile}"
    print(f"model {label or f'{args.model}{margs}'}; load average before: {os.getloadavg()}")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    rates = []
    for _ in range(args.runs):
        n, secs = in_process(factory())
        rates.append(n / secs)
    print(f"in process        {n} states: {fmt(rates)} states/s")
    for parts in (1, 2):
        for batch in (int(b) for b in args.batches.split(",")):
            rates = []
            for _ in range(args.runs):
                r = bfs_on_ray(factory, parts=parts, batch=batch)
                rates.append(r.stats["states"] / r.stats["seconds"])
            print(f"ray {parts} actor(s), batch {batch:>5}: {fmt(rates)} states/s "
                  f"({r.stats['states']} states, depth {r.stats['max_depth']})")
    # Per-level overhead: the counter model with one process and one step has two levels.
    toy = _load("tests.ray.toy_model:build")
    overhead = []
    for _ in range(args.runs):
        r = bfs_on_ray(ModelFactory(toy, (1, 1, True)), parts=2)
        overhead.append(r.stats["seconds"] * 1000 / max(1, r.stats["max_depth"] + 1))
    print(f"per-level round trip (2 actors, near-empty levels): "
          f"median {statistics.median(overhead):.1f} ms  min {min(overhead):.1f}  "
          f"max {max(overhead):.1f}")
    ray.shutdown()
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
