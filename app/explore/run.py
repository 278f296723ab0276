"""Run one exploration under one profile and shape the answer (CLI and HTTP call this).

`check_model` is the single point where the search is chosen: the generic checker
(app.explore.checker: partial-order reduction, budgets, workers) when the installation has
it, else the plain breadth-first search of app/explore/simple_bfs.py (no reductions, one
process).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.engine import flags as F
from app.engine.errors import invalid

from .counterexample import scenario_document, trace_rows
from .document import BUILTIN_PROPERTIES, Exploration, parse
from .irq_model import IrqModel, build_model
from .model_api import ModelFactory
from .simple_bfs import bfs

EXIT_VERIFIED = 0
EXIT_VIOLATION = 1
EXIT_ERROR = 2
EXIT_BOUNDED = 3


@dataclass(frozen=True)
class Options:
    max_states: int = 1_000_000
    max_seconds: float = 600.0
    workers: int = 1
    # On a Ray cluster (the 'ray' extra): "auto", "local" or an address; None in process.
    ray: str | None = None
    # With `ray`: 0 for the distributed BFS over `workers` partitions, N > 0 for a swarm of N
    # randomized depth-first searches (verdict violation or bounded, never verified).
    swarm: int = 0


Progress = Callable[[dict[str, Any]], None]


def check_model(model: IrqModel, options: Options,
                progress: Progress | None = None) -> tuple[str, str | None, list[Any],
                                                             list[Any], dict[str, Any]]:
    """(verdict, property, trace actions, trace states, stats) of one search: the generic
    checker when this installation has it, else the plain breadth-first search; with
    `options.ray`, the distributed search of app.explore.on_ray."""
    if options.ray is not None:
        return _on_ray(model, options, progress)
    try:
        checker: Any = importlib.import_module("app.explore.checker")
    except ModuleNotFoundError:
        r = bfs(model, max_states=options.max_states, max_seconds=options.max_seconds,
                progress=progress)
        return r.verdict, r.property, r.trace, r.trace_states, r.stats
    return _with_checker(checker, model, options, progress)


def _with_checker(checker: Any, model: IrqModel, options: Options,
                  progress: Progress | None) -> tuple[str, str | None, list[Any], list[Any],
                                                      dict[str, Any]]:
    """app.explore.checker.check, its Progress and CheckStats turned into this module's
    dicts; workers > 1 get a ModelFactory (each worker process builds the same model)."""
    extra: dict[str, Any] = {}
    if model.symmetry and "symmetry" in {f.name for f in dataclasses.fields(checker.CheckOptions)}:
        extra["symmetry"] = True  # the document declares interchangeable vCPUs
    # Persistent sets only for documents whose properties are all `finally`: with an `always`
    # property the checker needs the cycle proviso, gives up sleep sets and keeps the
    # counterexample shortest only in the reduced graph, and on this model that costs far more
    # transitions than the few states persistent sets save (README, "Cost of the model").
    extra["persistent_sets"] = model.observed() == frozenset()
    opts = checker.CheckOptions(max_states=options.max_states,
                                max_seconds=options.max_seconds, workers=options.workers,
                                **extra)
    target: Any = model
    if options.workers > 1:
        target = ModelFactory(build_model, (model.exp.raw, model.profile))

    def report(p: Any) -> None:
        if progress is not None:
            progress({"states": p.states, "transitions": p.transitions, "frontier": p.frontier,
                      "max_depth": p.depth, "states_per_s": round(p.states_per_second),
                      "seconds": round(p.seconds, 3)})

    r = checker.check(target, opts, progress=report)
    stats = dataclasses.asdict(r.stats)
    stats["states_per_s"] = round(stats.get("states_per_second", 0))
    stats["reductions"] = list(r.reductions)
    if r.bound is not None:
        stats["bound"] = r.bound
    trace = list(r.counterexample)
    states = [model.initial()]
    for a in trace:
        states.append(model.step(states[-1], a))
    return r.verdict, r.property, trace, states, stats


def _on_ray(model: IrqModel, options: Options,
            progress: Progress | None) -> tuple[str, str | None, list[Any], list[Any],
                                                dict[str, Any]]:
    """The search on a Ray cluster (app.explore.on_ray): the unreduced graph, partitioned over
    `options.workers` actors, or a swarm. A run that loses an actor is an error, not a
    verdict."""
    try:
        from . import on_ray
    except ImportError:
        raise invalid("a Ray search needs the 'ray' extra (pip install -e '.[ray]')",
                      "ray") from None
    on_ray.connect(options.ray or "auto")
    factory: ModelFactory[Any] = ModelFactory(build_model, (model.exp.raw, model.profile))

    def report(p: dict[str, Any]) -> None:
        if progress is not None:
            progress({"states": p["states"], "frontier": p["frontier"],
                      "max_depth": p["depth"], "per_worker": p["per_worker"],
                      "seconds": round(p["seconds"], 3)})

    if options.swarm > 0:
        r = on_ray.swarm_on_ray(factory, members=options.swarm,
                                max_states_each=max(1, options.max_states // options.swarm))
    else:
        r = on_ray.bfs_on_ray(factory, parts=max(1, options.workers),
                              budget=on_ray.Budget(max_states=options.max_states,
                                                   max_seconds=options.max_seconds),
                              progress=report)
    if r.verdict == "error":
        raise RuntimeError(r.error or "the Ray search failed")
    states = [model.initial()]
    for a in r.counterexample:
        states.append(model.step(states[-1], a))
    stats = dict(r.stats, reductions=[])
    stats["states_per_s"] = stats.get("states_per_second", 0)
    return r.verdict, r.property, list(r.counterexample), states, stats


def profiles_arg(value: str | None, exp: Exploration) -> list[str]:
    """--profile: one name, a comma list, or `all` (every preset); default the document's."""
    if value is None:
        return [exp.vm.get("profile", "linux-latest")]
    if value == "all":
        return list(F.PRESETS)
    names = [p.strip() for p in value.split(",") if p.strip()]
    for p in names:
        if p not in F.PRESETS:
            raise invalid(f"unknown profile {p!r}; known: {', '.join(F.PRESETS)}", "profile")
    if not names:
        raise invalid("name at least one profile", "profile")
    return names


def explore(doc: dict[str, Any] | Exploration, profile: str | None, options: Options,
            progress: Progress | None = None) -> dict[str, Any]:
    exp = doc if isinstance(doc, Exploration) else parse(doc)
    model = IrqModel(exp, profile)
    verdict, prop, trace, states, stats = check_model(model, options, progress)
    result: dict[str, Any] = {
        "exploration": exp.name,
        "profile": model.profile,
        "verdict": verdict,
        "property": prop,
        "property_description": (BUILTIN_PROPERTIES[prop][1]
                                 if prop in BUILTIN_PROPERTIES else None),
        "expected": exp.expect.get(model.profile),
        "stats": stats,
        "counterexample": None,
    }
    if verdict == "violation" and prop is not None:
        result["counterexample"] = {
            "length": len(trace),
            "steps": trace_rows(trace),
            "scenario": scenario_document(model, trace, states, prop),
        }
    return result


def exit_code(verdicts: list[str]) -> int:
    if "violation" in verdicts:
        return EXIT_VIOLATION
    if "bounded" in verdicts:
        return EXIT_BOUNDED
    return EXIT_VERIFIED
