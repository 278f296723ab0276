"""Brute force: every maximal interleaving, no visited set, no reduction (the tests' oracle).

Depth-first over every action sequence from the initial state. Exponential: for toy models only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.explore.model_api import Model
from app.explore.visited import M64


@dataclass(frozen=True, slots=True)
class BruteResult:
    states: frozenset[int]  # fingerprints of every reachable state
    terminals: frozenset[int]  # fingerprints of every reachable terminal state
    paths: int  # maximal action sequences enumerated
    shortest_violation: int | None  # fewest actions to a violating state, None if none
    violations: frozenset[str]  # every property violated somewhere
    complete: bool  # False when max_paths or max_depth cut the enumeration


def enumerate_all(model: Model[Any], max_depth: int = 64, max_paths: int = 200_000) -> BruteResult:
    """Walk every maximal action sequence (bounded by `max_depth` and `max_paths`)."""
    states: set[int] = set()
    terminals: set[int] = set()
    violations: set[str] = set()
    shortest: int | None = None
    paths = 0
    complete = True
    stack: list[tuple[Any, int]] = [(model.initial(), 0)]
    while stack:
        s, depth = stack.pop()
        fp = model.fingerprint(s) & M64
        states.add(fp)
        enabled = model.actions(s)
        bad = model.violation(s, not enabled)
        if bad is not None:
            violations.add(bad)
            if shortest is None or depth < shortest:
                shortest = depth
        if not enabled:
            terminals.add(fp)
            paths += 1
            if paths >= max_paths:
                complete = False
                break
            continue
        if depth >= max_depth:
            complete = False
            continue
        for a in reversed(enabled):
            stack.append((model.step(s, a), depth + 1))
    return BruteResult(
        frozenset(states), frozenset(terminals), paths, shortest, frozenset(violations), complete
    )
