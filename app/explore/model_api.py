"""The contract between a model and the checker, in the shape of stateright's: initial state,
enabled actions, next state, properties.

The checker never looks inside a state: it asks the model for the enabled actions (in one
deterministic order), for the successor under an action (a new state; the argument is never
mutated), for a fingerprint (equal fingerprints <=> same future behaviour and same property
verdicts), and for the property each state or terminal state violates.

Partial-order reduction is derived from each action's footprint: two actions are independent in
a state when they belong to different actors and neither writes a resource the other reads or
writes. A model must declare footprints that over-approximate what the step really touches in
that state, including what it enables or disables (an action whose enabling depends on a resource
reads it); the checker's tests compare reduced against unreduced search to catch footprints that
are too optimistic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Action:
    """One atomic step that is enabled in a state.

    `name` is stable and human-readable ("vcpu0 take", "device line 5=1"): counterexamples and
    traces print it, and the search order is the order `Model.actions` returns. Names are unique
    among a state's enabled actions, and sleep sets recognise an action across states by its
    name: an action that stays enabled after an independent step keeps its name. `actor` names the
    sequential process the step belongs to: two steps of one actor are never independent.
    `reads`/`writes` are abstract resource names ("ioapic.pin5", "vcpu1.lapic", "routes").
    `data` is the model's own payload (what `Model.step` needs); the checker never reads it.
    """

    name: str
    actor: str
    reads: frozenset[str] = field(default_factory=frozenset)
    writes: frozenset[str] = field(default_factory=frozenset)
    data: Any = None


def independent(a: Action, b: Action) -> bool:
    """True when a and b commute and neither enables nor disables the other (by footprint)."""
    if a.actor == b.actor:
        return False
    if a.writes & (b.reads | b.writes):
        return False
    return not (b.writes & a.reads)


class Model(Protocol[S]):
    """What the checker needs from a model. Every method is deterministic."""

    def initial(self) -> S:
        """The single initial state (after the document's setup)."""
        ...

    def actions(self, state: S) -> list[Action]:
        """The enabled actions, in a deterministic order; empty means terminal."""
        ...

    def step(self, state: S, action: Action) -> S:
        """The successor state; `state` is left unchanged."""
        ...

    def fingerprint(self, state: S) -> int:
        """A 64-bit fingerprint of everything that determines the future (stable across runs and
        processes: no salted `hash()` of strings)."""
        ...

    def violation(self, state: S, terminal: bool) -> str | None:
        """The name of the first property `state` violates (`always` properties in every state,
        `finally` ones only when `terminal`), or None."""
        ...

    def canonical(self, state: S) -> S:
        """The representative of `state`'s symmetry class (identity when symmetry is off)."""
        ...

    def encode(self, state: S) -> bytes:
        """Bytes `decode` turns back into an equal state (for worker processes)."""
        ...

    def decode(self, data: bytes) -> S: ...


@dataclass(frozen=True, slots=True)
class ModelFactory(Generic[S]):
    """How a worker process builds the same model: a module-level callable and its (picklable)
    arguments, e.g. the exploration document and the profile."""

    build: Any
    args: tuple[Any, ...] = ()

    def __call__(self) -> Model[S]:
        model: Model[S] = self.build(*self.args)
        return model


# Optional methods a model may add (the checker looks them up with getattr; a model without them
# is checked with sleep sets and symmetry only). They let the checker compute persistent sets.

Footprint = tuple[frozenset[str], frozenset[str]]
"""(reads, writes) over resource names, as on `Action`."""


@dataclass(frozen=True, slots=True)
class ActorFootprint:
    """What one actor may touch, seen from a state (over-approximations are always safe).

    `next`: the union of the footprints of EVERY step the actor could take from its current
    position, enabled or not, including every resource deciding whether such a step is enabled
    (for a program: its current instruction; for a vCPU: enter, take each vector, ...).
    `ever`: the union over every step it could take from here on, after any steps of any actors
    (a superset of `next`).
    """

    next: Footprint
    ever: Footprint


S_contra = TypeVar("S_contra", contravariant=True)


class HasActorFootprints(Protocol[S_contra]):
    def actor_footprints(self, state: S_contra) -> dict[str, ActorFootprint] | None:
        """One entry for EVERY actor that may still take a step from `state`, now or later
        (include actors with nothing enabled yet, e.g. a handler that runs only once an interrupt
        is taken). None means "unknown here" (no persistent set at this state)."""
        ...


class HasObserved(Protocol):
    def observed(self) -> frozenset[str] | None:
        """The resources the `always` properties read (a step writing one is "visible").
        frozenset() when the model has only `finally` (terminal-state) properties; None when
        unknown (every step is visible, so persistent sets cannot reduce)."""
        ...
