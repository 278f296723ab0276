"""A small model for the distributed-search tests: `procs` processes each add 1 to a shared
counter `rounds` times, either atomically or as a read then a write (the lost update), and the
`finally` property says the counter ends at procs x rounds."""

from __future__ import annotations

import hashlib
import pickle
import time
from typing import Any

from app.explore.model_api import Action

State = tuple[int, tuple[int, ...], tuple[int, ...]]  # counter, pcs, each process's register


class Counter:
    def __init__(self, procs: int, rounds: int, atomic: bool, slow: float = 0.0) -> None:
        self.procs, self.rounds, self.atomic, self.slow = procs, rounds, atomic, slow

    def initial(self) -> State:
        return (0, (0,) * self.procs, (0,) * self.procs)

    def actions(self, s: State) -> list[Action]:
        out = []
        steps = 1 if self.atomic else 2
        for p, pc in enumerate(s[1]):
            if pc >= steps * self.rounds:
                continue
            kind = "inc" if self.atomic else ("read" if pc % 2 == 0 else "write")
            reads = frozenset({"counter"}) if kind in ("inc", "read") else frozenset()
            writes = frozenset({"counter"}) if kind in ("inc", "write") else frozenset()
            out.append(Action(f"p{p} {kind}", f"p{p}", reads, writes, (p, kind)))
        return out

    def step(self, s: State, a: Action) -> State:
        if self.slow:
            time.sleep(self.slow)
        p, kind = a.data
        counter, pcs, regs = s[0], list(s[1]), list(s[2])
        if kind == "inc":
            counter += 1
        elif kind == "read":
            regs[p] = counter
        else:
            counter = regs[p] + 1
        pcs[p] += 1
        return (counter, tuple(pcs), tuple(regs))

    def fingerprint(self, s: State) -> int:
        return int.from_bytes(hashlib.blake2b(repr(s).encode(), digest_size=8).digest(), "big")

    def violation(self, s: State, terminal: bool) -> str | None:
        if terminal and s[0] != self.procs * self.rounds:
            return "no-lost-update"
        return None

    def canonical(self, s: State) -> State:
        return s

    def encode(self, s: State) -> bytes:
        return pickle.dumps(s)

    def decode(self, data: bytes) -> Any:
        return pickle.loads(data)


def build(procs: int, rounds: int, atomic: bool, slow: float = 0.0) -> Counter:
    return Counter(procs, rounds, atomic, slow)


def reference_bfs(m: Counter) -> tuple[str, int, int | None]:
    """(verdict, distinct states, shortest counterexample length) by plain in-process BFS."""
    init = m.initial()
    seen = {m.fingerprint(init)}
    level = [init]
    depth = 0
    while level:
        nxt = []
        for s in level:
            acts = m.actions(s)
            if not acts and m.violation(s, True):
                return "violation", len(seen), depth
            for a in acts:
                t = m.step(s, a)
                fp = m.fingerprint(t)
                if fp not in seen:
                    seen.add(fp)
                    nxt.append(t)
        level = nxt
        depth += 1
    return "verified", len(seen), None
