"""The causal event log.

Every state change appends one event: (seq, actor, kind, fields, cause). `cause` is the seq of
the event that led to this one, so a client can follow "EOI -> exit -> remote IRR cleared ->
re-delivered" as a chain. Events are stored as tuples because the log is on the hot path of
every transition; they are turned into dicts only when read.
"""

from __future__ import annotations

from typing import Any

Event = tuple[int, str, str, dict[str, Any], int | None]


class EventLog:
    __slots__ = ("enabled", "events", "next_seq")

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.events: list[Event] = []
        self.next_seq = 1

    def emit(self, actor: str, kind: str, fields: dict[str, Any], cause: int | None) -> int:
        seq = self.next_seq
        self.next_seq = seq + 1
        if self.enabled:
            self.events.append((seq, actor, kind, fields, cause))
        return seq

    def since(self, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Events with seq > after, oldest first (binary search: seqs are increasing)."""
        evs = self.events
        lo, hi = 0, len(evs)
        while lo < hi:
            mid = (lo + hi) // 2
            if evs[mid][0] <= after:
                lo = mid + 1
            else:
                hi = mid
        chosen = evs[lo:] if limit is None else evs[lo : lo + limit]
        return [event_dict(e) for e in chosen]

    def clone(self) -> EventLog:
        log = EventLog(self.enabled)
        log.events = list(self.events)
        log.next_seq = self.next_seq
        return log


def event_dict(e: Event) -> dict[str, Any]:
    seq, actor, kind, fields, cause = e
    return {"seq": seq, "actor": actor, "kind": kind, "fields": dict(fields), "cause": cause}
