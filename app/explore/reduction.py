"""Partial-order reduction helpers: persistent sets from actors' future footprints, sleep sets.

Why each is sound with the checker's breadth-first search and its visited set is argued in
`app.explore.checker`'s docstring and in docs/explorer-checker.md; this module only computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from app.explore.model_api import Action, ActorFootprint, Footprint, independent

EMPTY: frozenset[str] = frozenset()


def _conflict(a: Footprint, b: Footprint) -> bool:
    """Footprints a and b do not commute: one writes what the other reads or writes."""
    return bool(a[1] & (b[0] | b[1])) or bool(b[1] & a[0])


def persistent_indices(
    enabled: Sequence[Action],
    actors: Mapping[str, ActorFootprint] | None,
    observed: frozenset[str] | None,
) -> list[int] | None:
    """Indices (into `enabled`, ascending) of a persistent subset of the enabled actions, or None
    when the only one found is the whole enabled set.

    The subset is every enabled action of a set C of actors closed under: if p is in C and the
    `ever` footprint of an actor q conflicts with p's `next` footprint, q is in C. On any path
    from here that avoids the subset, an actor p of C cannot move (its enabled steps are in the
    subset, and no step of an actor outside C writes what decides p's other steps), so every step
    is by an actor q outside C and, by the closure, independent of every step in the subset:
    the subset is persistent. The closure is computed from each enabled actor; the smallest
    (fewest enabled actions; ties: earliest first action) is taken. When `observed` is not
    empty, a proper subset may not contain a visible action (one writing an observed resource);
    None for `observed` makes every action visible, so nothing is reduced.
    """
    if actors is None or observed is None or len(enabled) < 2:
        return None
    by_actor: dict[str, list[int]] = {}
    for i, a in enumerate(enabled):
        by_actor.setdefault(a.actor, []).append(i)
    if len(by_actor) < 2:
        return None
    # Widen each actor's footprints by its enabled actions' own (a model that forgot one of them
    # must not make the reduction unsound).
    nxt: dict[str, Footprint] = {}
    ever: dict[str, Footprint] = {}
    for name, af in actors.items():
        nxt[name], ever[name] = af.next, af.ever
    for name, idxs in by_actor.items():
        if name not in nxt:
            return None  # an enabled actor without declared footprints: unknown
        (nr, nw), (er, ew) = nxt[name], ever[name]
        for i in idxs:
            nr, nw = nr | enabled[i].reads, nw | enabled[i].writes
        nxt[name], ever[name] = (nr, nw), (er | nr, ew | nw)
    names = list(nxt)
    best: list[int] | None = None
    for start in by_actor:
        closure = {start}
        todo = [start]
        while todo:
            p = todo.pop()
            for q in names:
                if q not in closure and _conflict(nxt[p], ever[q]):
                    closure.add(q)
                    todo.append(q)
        if len(closure) == len(names):
            continue
        idxs = sorted(i for name in closure for i in by_actor.get(name, ()))
        if len(idxs) == len(enabled):
            continue
        if observed and any(enabled[i].writes & observed for i in idxs):
            continue
        if best is None or (len(idxs), idxs[0]) < (len(best), best[0]):
            best = idxs
    return best


def child_sleep(
    sleeping: Sequence[Action], done: Sequence[Action], taken: Action
) -> frozenset[str]:
    """The sleep set of the successor by `taken`: the actions asleep here or explored before
    `taken` at this state that are independent of `taken` (so stay enabled and commute)."""
    names = [u.name for u in sleeping if independent(u, taken)]
    names += [u.name for u in done if independent(u, taken)]
    return frozenset(names) if names else EMPTY
