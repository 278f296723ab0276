"""The causal event log.

Every state change appends one event: seq, actor, kind, fields, cause. `cause` is the seq of
the event that led to this one, so a client can follow "EOI -> exit -> remote IRR cleared ->
re-delivered" as a chain.

Events sit on the hot path of every transition, so they are stored as flat tuples
(seq, actor, kind, cause, k1, v1, k2, v2, ...) holding only atomic values: CPython's GC stops
tracking such tuples after one pass, whereas a tuple that holds a dict is re-walked by every
collection for as long as the log lives. They become dicts only when read.
"""

from __future__ import annotations

from typing import Any, Final

from .bitmap import vectors

Event = tuple[Any, ...]


UNLIMITED: Final = 1 << 62


class EventLog:
    __slots__ = ("base", "enabled", "events", "limit", "next_seq")

    def __init__(self, enabled: bool = True, limit: int | None = None) -> None:
        self.enabled = enabled
        self.events: list[Event] = []
        self.base = 1  # seq of events[0]; raised when old events are dropped
        self.next_seq = 1
        # Most events kept: past it the oldest half is dropped (seqs keep counting), so a
        # long-lived VM's log stays bounded at an amortized cost of one comparison per event.
        self.limit = UNLIMITED if limit is None else max(2, limit)

    def emit(self, actor: str, kind: str, cause: int | None, *fields: Any) -> int:
        """Append an event; `fields` alternate name, value."""
        seq = self.next_seq
        self.next_seq = seq + 1
        if self.enabled:
            # Concatenation, not (..., *fields): one C-level tuple concat when compiled.
            self.events.append((seq, actor, kind, cause) + fields)  # noqa: RUF005
            if seq - self.base >= self.limit:
                self._drop_oldest()
        return seq

    def _drop_oldest(self) -> None:
        keep = self.limit // 2
        del self.events[: len(self.events) - keep]
        self.base = self.events[0][0] if self.events else self.next_seq

    def reserve(self) -> int:
        """Take the next seq for an event whose fields are known only after its effects (the
        root event of an operation); fill() writes it in place, keeping the log in order."""
        seq = self.next_seq
        self.next_seq = seq + 1
        if self.enabled:
            self.events.append((seq, "", "", None))
            if seq - self.base >= self.limit:
                self._drop_oldest()
        return seq

    def fill(self, seq: int, actor: str, kind: str, cause: int | None, *fields: Any) -> None:
        if self.enabled:
            i = seq - self.base
            if 0 <= i < len(self.events):
                self.events[i] = (seq, actor, kind, cause) + fields  # noqa: RUF005

    def truncate(self) -> None:
        """Drop stored events (seqs keep counting)."""
        self.events = []
        self.base = self.next_seq

    def since(self, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Events with seq > after, oldest first."""
        start = max(0, after + 1 - self.base)
        chosen = self.events[start:] if limit is None else self.events[start : start + limit]
        return [event_dict(e) for e in chosen]

    def clone(self) -> EventLog:
        log = EventLog(self.enabled)
        log.limit = self.limit
        log.events = list(self.events)
        log.base = self.base
        log.next_seq = self.next_seq
        return log


# Fields that hold 256-bit vector sets; stored as ints, read as sorted vector lists.
BITMAP_FIELDS = frozenset({"handled", "was", "vectors"})


def event_fields(e: Event) -> dict[str, Any]:
    # Every operation's response renders its events through here: one pass, no zip/slices.
    out: dict[str, Any] = {}
    n = len(e)
    i = 4
    while i < n:
        k: str = e[i]
        v = e[i + 1]
        if k in BITMAP_FIELDS and type(v) is int:
            v = vectors(v)
        out[k] = v
        i += 2
    if i != n:
        raise ValueError(f"event {e[0]} has an odd number of field items")
    return out


def event_dict(e: Event) -> dict[str, Any]:
    return {"seq": e[0], "actor": e[1], "kind": e[2], "fields": event_fields(e), "cause": e[3]}


VCPU_NAMES: Final = tuple(f"vcpu{i}" for i in range(4096))  # actor names, built once
