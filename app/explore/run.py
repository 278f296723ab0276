"""Run one exploration under one profile and shape the answer (CLI and HTTP call this).

`check_model` is the single point where the search is chosen: the generic checker
(app/explore/checker.py, with partial-order reduction, budgets and workers) when it is
present, else the plain breadth-first search of app/explore/simple_bfs.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.engine import flags as F
from app.engine.errors import invalid

from .counterexample import scenario_document, trace_rows
from .document import BUILTIN_PROPERTIES, Exploration, parse
from .irq_model import IrqModel
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


Progress = Callable[[dict[str, Any]], None]


def check_model(model: IrqModel, options: Options,
                progress: Progress | None = None) -> tuple[str, str | None, list[Any],
                                                             list[Any], dict[str, Any]]:
    """(verdict, property, trace actions, trace states, stats) of one search."""
    r = bfs(model, max_states=options.max_states, max_seconds=options.max_seconds,
            progress=progress)
    return r.verdict, r.property, r.trace, r.trace_states, r.stats


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
