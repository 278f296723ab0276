"""Small models with known answers: the checker's tests and bench/explore.py run on them.

Each is a set of sequential processes ("actors") over shared integer variables, written as
programs of atomic operations; the state is a tuple (program counters, locals, shared variables)
so it is its own stable fingerprint source. They also show how a model declares footprints,
`actor_footprints` (for persistent sets) and `observed` (the resources `always` properties read).

- `ProgramModel(...)`: any program, from a list of op lists (the hypothesis tests generate them).
- `counters(n, k)`: n independent processes counting to k: (k+1)**n states, no bug.
- `lost_update(n)`: n processes doing `tmp = x; x = tmp + 1`; finally x == n fails (shortest
  counterexample 2n steps: every process reads before any writes... at least two do).
- `spin_and_set()`: a process toggling a flag forever and one setting y = 1 once, with
  `always y == 0`: persistent sets without the cycle proviso would miss the violation.
"""

from __future__ import annotations

import hashlib
import marshal
import random
from dataclasses import dataclass
from typing import Any

from app.explore.model_api import Action, ActorFootprint, Footprint

# An op is a tuple: ("add", var, c): var += c   ("copy", dst, src): dst = src
#   ("load", var): local = var   ("store", var, c): var = local + c
#   ("await", var, c): blocks until var == c   ("mul", var, c, m): var = var * c % m
#   ("goto", pc): jump (a loop; reads and writes nothing shared)
Op = tuple[Any, ...]

State = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # pcs, locals, vars


def _op_footprint(op: Op) -> Footprint:
    kind = op[0]
    if kind == "add" or kind == "mul":
        return frozenset({op[1]}), frozenset({op[1]})
    if kind == "copy":
        return frozenset({op[2]}), frozenset({op[1]})
    if kind == "load" or kind == "await":
        return frozenset({op[1]}), frozenset()
    if kind == "store":
        return frozenset(), frozenset({op[1]})
    return frozenset(), frozenset()


@dataclass(frozen=True)
class Pred:
    """`var op c` over shared variables, combined by `all_` (and) / any (or)."""

    terms: tuple[tuple[str, str, int], ...]
    all_: bool = True

    def holds(self, env: dict[str, int]) -> bool:
        results = (_cmp(env[v], o, c) for v, o, c in self.terms)
        return all(results) if self.all_ else any(results)

    @property
    def reads(self) -> frozenset[str]:
        return frozenset(v for v, _, _ in self.terms)


def _cmp(a: int, op: str, b: int) -> bool:
    return {"==": a == b, "!=": a != b, "<=": a <= b, ">=": a >= b}[op]


class ProgramModel:
    """A `Model[State]` over programs of `Op`s; optional symmetry among identical processes."""

    def __init__(
        self,
        programs: list[list[Op]],
        variables: dict[str, int],
        always: Pred | None = None,
        finally_: Pred | None = None,
        symmetric: bool = False,
        declare_futures: bool = True,
        modulus: int | None = None,
    ) -> None:
        self.modulus = modulus  # when set, every write is reduced mod it (loops stay finite)
        self.programs = [list(p) for p in programs]
        self.names = sorted(variables)
        self.index = {v: i for i, v in enumerate(self.names)}
        self.init_vars = tuple(variables[v] for v in self.names)
        self.always = always
        self.finally_ = finally_
        self.symmetric = symmetric
        if not declare_futures:
            self.actor_footprints = None  # type: ignore[assignment]  # no persistent sets
        # Per program and pc: the future footprint of that actor from pc on.
        self._future: list[list[Footprint]] = []
        for prog in self.programs:
            loops = any(op[0] == "goto" for op in prog)
            fut: list[Footprint] = []
            r: frozenset[str] = frozenset()
            w: frozenset[str] = frozenset()
            for op in reversed(prog):
                opr, opw = _op_footprint(op)
                r, w = r | opr, w | opw
                fut.append((r, w))
            fut.reverse()
            if loops:  # a loop may reach any op again
                fut = [(r, w)] * len(prog)
            self._future.append(fut)

    # -- the Model protocol --
    def initial(self) -> State:
        n = len(self.programs)
        return (0,) * n, (0,) * n, self.init_vars

    def actions(self, state: State) -> list[Action]:
        pcs, _, vars_ = state
        out = []
        for i, pc in enumerate(pcs):
            prog = self.programs[i]
            if pc >= len(prog):
                continue
            op = prog[pc]
            if op[0] == "await" and vars_[self.index[op[1]]] != op[2]:
                continue
            r, w = _op_footprint(op)
            out.append(Action(f"p{i}@{pc}:{op[0]}", f"p{i}", r, w, (i, op)))
        return out

    def step(self, state: State, action: Action) -> State:
        i, op = action.data
        pcs, locs, vars_ = list(state[0]), list(state[1]), list(state[2])
        kind = op[0]
        pcs[i] += 1
        if kind == "add":
            vars_[self.index[op[1]]] += op[2]
        elif kind == "mul":
            k = self.index[op[1]]
            vars_[k] = vars_[k] * op[2] % op[3]
        elif kind == "copy":
            vars_[self.index[op[1]]] = vars_[self.index[op[2]]]
        elif kind == "load":
            locs[i] = vars_[self.index[op[1]]]
        elif kind == "store":
            vars_[self.index[op[1]]] = locs[i] + op[2]
        elif kind == "goto":
            pcs[i] = op[1]
        if self.modulus is not None:
            vars_ = [v % self.modulus for v in vars_]
        return tuple(pcs), tuple(locs), tuple(vars_)

    def fingerprint(self, state: State) -> int:
        digest = hashlib.blake2b(repr(state).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little")

    def violation(self, state: State, terminal: bool) -> str | None:
        env = dict(zip(self.names, state[2], strict=True))
        if self.always is not None and not self.always.holds(env):
            return "always"
        if terminal and self.finally_ is not None and not self.finally_.holds(env):
            return "finally"
        return None

    def canonical(self, state: State) -> State:
        if not self.symmetric:
            return state
        pairs = sorted(zip(state[0], state[1], strict=True))
        return tuple(p for p, _ in pairs), tuple(q for _, q in pairs), state[2]

    def encode(self, state: State) -> bytes:
        return marshal.dumps(state)

    def decode(self, data: bytes) -> State:
        state: State = marshal.loads(data)
        return state

    # -- optional hints for persistent sets --
    def actor_footprints(self, state: State) -> dict[str, ActorFootprint] | None:
        out = {}
        for i, pc in enumerate(state[0]):
            if pc < len(self.programs[i]):
                out[f"p{i}"] = ActorFootprint(
                    _op_footprint(self.programs[i][pc]), self._future[i][pc]
                )
        return out

    def observed(self) -> frozenset[str] | None:
        return self.always.reads if self.always is not None else frozenset()


def counters(n: int = 3, k: int = 4) -> ProgramModel:
    """n processes, each adding 1 to its own variable k times."""
    return ProgramModel(
        [[("add", f"c{i}", 1)] * k for i in range(n)], {f"c{i}": 0 for i in range(n)}
    )


def lost_update(n: int = 2, symmetric: bool = False) -> ProgramModel:
    """n processes each doing tmp = x; x = tmp + 1; finally x == n (violated: lost update)."""
    return ProgramModel(
        [[("load", "x"), ("store", "x", 1)] for _ in range(n)],
        {"x": 0},
        finally_=Pred((("x", "==", n),)),
        symmetric=symmetric,
    )


def spin_and_set() -> ProgramModel:
    """p0 toggles t forever; p1 sets y = 1 once; always y == 0."""
    return ProgramModel(
        [[("add", "t", 1), ("add", "t", -1), ("goto", 0)], [("add", "y", 1)]],
        {"t": 0, "y": 0},
        always=Pred((("y", "==", 0),)),
    )


def wide(n: int = 4, k: int = 6, shared_every: int = 3) -> ProgramModel:
    """The bench's model: n processes of k steps over private counters, every `shared_every`-th
    step also touching one shared variable, so reductions have something to do but not all."""
    programs = []
    for i in range(n):
        prog: list[Op] = []
        for j in range(k):
            prog.append(("add", "s", 1) if (j + 1) % shared_every == 0 else ("add", f"c{i}", 1))
        programs.append(prog)
    variables = {f"c{i}": 0 for i in range(n)} | {"s": 0}
    return ProgramModel(programs, variables, finally_=Pred((("s", ">=", 0),)))


def random_program(
    seed: int, n: int = 3, length: int = 3, loops: bool = False, properties: bool = True
) -> ProgramModel:
    """A random program of n processes over x, y, z (deterministic in `seed`); with `loops`,
    some processes jump back, and writes are reduced mod 4 so the state space stays finite."""
    rng = random.Random(seed)
    variables = ("x", "y", "z")

    def op() -> Op:
        var = rng.choice(variables)
        return rng.choice(
            [
                ("add", var, rng.randint(1, 2)),
                ("copy", var, rng.choice(variables)),
                ("load", var),
                ("store", var, rng.randint(0, 1)),
                ("await", var, rng.randint(0, 2)),
                ("mul", var, 2, 3),
            ]
        )

    programs = []
    for _ in range(n):
        prog = [op() for _ in range(rng.randint(1, length))]
        if loops and rng.random() < 0.5:
            prog.append(("goto", rng.randrange(len(prog))))
        programs.append(prog)

    def pred() -> Pred | None:
        if not properties or rng.random() < 0.4:
            return None
        terms = tuple(
            (rng.choice(variables), rng.choice(["==", "!=", "<=", ">="]), rng.randint(0, 3))
            for _ in range(rng.randint(1, 2))
        )
        return Pred(terms, all_=rng.random() < 0.5)

    init = {v: rng.randint(0, 2) for v in variables}
    return ProgramModel(
        programs, init, always=pred(), finally_=pred(), modulus=4 if loops else None
    )


class Ring:
    """The cheapest model there is (states are ints below n, fingerprints are the ints): the
    bench measures the checker's own cost per state on it."""

    def __init__(self, n: int = 200_000) -> None:
        self.n = n
        self.inc = Action("inc", "a", frozenset({"v"}), frozenset({"v"}))
        self.dbl = Action("dbl", "a", frozenset({"v"}), frozenset({"v"}))
        self.both = [self.inc, self.dbl]
        self.one = [self.inc]

    def initial(self) -> int:
        return 1

    def actions(self, state: int) -> list[Action]:
        if state + 1 >= self.n:
            return []
        return self.both if 2 * state < self.n else self.one

    def step(self, state: int, action: Action) -> int:
        return state + 1 if action is self.inc else 2 * state

    def fingerprint(self, state: int) -> int:
        return state

    def violation(self, state: int, terminal: bool) -> str | None:
        return None

    def canonical(self, state: int) -> int:
        return state

    def encode(self, state: int) -> bytes:
        return state.to_bytes(8, "little")

    def decode(self, data: bytes) -> int:
        return int.from_bytes(data, "little")


def ring(n: int = 200_000) -> Ring:
    return Ring(n)


def random_program_observed(seed: int, n: int = 3, length: int = 3) -> ProgramModel:
    """`random_program` with loops whose `always` property never fails but still reads some
    variables: the search runs to the end in the mode where persistent sets need visibility and
    the cycle proviso."""
    m = random_program(seed, n, length, loops=True, properties=False)
    reads = sorted({"x", "y", "z"} - {random.Random(seed).choice(["x", "y", "z"])})
    m.always = Pred(tuple((v, ">=", 0) for v in reads))
    return m
