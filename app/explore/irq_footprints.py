"""What each actor of the irqlab model may touch next and from here on (persistent sets), and
what the `always` properties read (visibility). The checker's contract is in
`app/explore/model_api.py`; why these sets are sound is argued in docs/explorer-checker.md
("Persistent sets on the irqlab model").

The resources are the ones the model's actions already declare (`IrqModel._build_footprints`):
`vcpuN` (vCPU N's LAPIC, requests, guest mode, handled vectors), `vcpuN.ctl` (its interrupt
flag and running handlers), `ioapic` (lines, IRR, Remote IRR), `ioapic.rte`, `routes`, `ids`,
`counter.NAME`, and `hitN` (the sticky "an EOI went unheard" flag eoi-not-forwarded reads,
one name per vCPU that may set it).

The actors: every program (a device, a VMM, a vCPU's main flow), every vCPU (its entries,
takes, handler steps and pending EOI exit) and the clock (a throttled re-injection).

The one fact that makes actors independent here is quiescence of deliveries: once no vCPU
holds a pending vector (IRR or PIR), no handler runs, no EOI exit or IOAPIC_EOI_EXIT request
is pending, no re-injection is scheduled and every remaining program step is "silent" (cannot
make a vector pending anywhere: lowering a line, TPR writes, leaving guest mode, cli/sti,
counters, GSI routing commits), no vCPU can ever take an interrupt again. From then on a vCPU
can only enter (consume a rescan request: it writes its own state, reads the routes, the APIC
IDs and the RTEs) and the remaining programs touch what their steps name: their moves commute,
and the persistent set holds one actor's moves. Before that, every vCPU may still take any
vector and run its handler, whose steps (an EOI, an RTE write, a line raise) reach the IOAPIC
and every vCPU, so every actor conflicts with every other and nothing is reduced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.engine.state import REQ_IOAPIC_EOI_EXIT

from . import steps as S
from .model_api import ActorFootprint, Footprint

if TYPE_CHECKING:
    from .irq_model import IrqModel, IrqState

EMPTY: frozenset[str] = frozenset()


def silent(st: S.Step) -> bool:
    """A step that cannot make a vector pending on any vCPU, now or through what it enables:
    lowering a line (no delivery, in KVM and QEMU), cli/sti, a counter, a TPR write or leaving
    guest mode (own LAPIC: a lower TPR only unblocks vectors already pending), a GSI routing
    commit (requests rescans, delivers nothing). Anything else may deliver (a raised line, an
    MSI, irq/irqfd), re-deliver (an EOI, a LAPIC EOI write, an RTE write while the line is high)
    or change who receives (LDR, ID, APIC base)."""
    fp = st.fp
    if fp in (S.FP_CTL, S.FP_COUNTER, S.FP_OWN, S.FP_ROUTES):
        return True
    return fp == S.FP_PIN and st.level == 0


def _union(*fps: Footprint) -> Footprint:
    r: frozenset[str] = EMPTY
    w: frozenset[str] = EMPTY
    for fr, fw in fps:
        r, w = r | fr, w | fw
    return r, w


class ActorFootprints:
    """`IrqModel.actor_footprints` and `observed`, with everything per position precomputed:
    a state costs a quiescence test and a few dictionary lookups."""

    def __init__(self, model: IrqModel) -> None:
        self.m = model
        m = model
        n = m.nvcpus
        # The widest footprint of every step (a raised line may deliver: its delivering
        # variant), as the model's actions declare them.
        def step_fp(st: S.Step, vcpu: int) -> Footprint:
            return m._step_fp(st, 1 if st.fp == S.FP_PIN and st.level else 0, vcpu)

        # Programs: per position, (next, ever) and whether every remaining step is silent.
        # Programs: per position, (next, ever), whether every remaining step is silent, and
        # whether the next step touches a resource of the clock's (global) footprint.
        self.programs: list[list[tuple[ActorFootprint, bool, bool]]] = []
        for a, prog in enumerate(m.programs):
            bound = m.bound[a]
            extra: Footprint = (m.r_vc[bound], EMPTY) if bound is not None else (EMPTY, EMPTY)
            rows: list[tuple[ActorFootprint, bool, bool]] = []
            ever: Footprint = (EMPTY, EMPTY)
            quiet = True
            for st in reversed(prog):
                # A bound program's steps are enabled only while its vCPU runs guest code with
                # nothing pending and no handler: they read vcpuN and vcpuN.ctl.
                nxt = _union(step_fp(st, -1 if bound is None else bound), extra)
                ever = _union(ever, nxt)
                quiet = quiet and silent(st)
                coupled = bool((nxt[0] | nxt[1]) & m.r_global)
                rows.append((ActorFootprint(nxt, ever), quiet, coupled))
            rows.reverse()
            self.programs.append(rows)
        self.names = [a.name for a in m.exp.actors]
        # vCPUs: what each of their moves declares.
        def entries(i: int, kinds: tuple[int, ...]) -> Footprint:
            return _union(*[(a.reads, a.writes) for a in (m._enter_action(i, k) for k in kinds)])

        # Every kind of entry (plain, rescan, EOI exit: IOAPIC_EOI_EXIT exists in split only);
        # once quiet, no EOI can happen, so no EOI exit either.
        enter = [entries(i, (0, 1, 2) if m.split else (0, 1)) for i in range(n)]
        enter_quiet = [entries(i, (0, 1)) for i in range(n)]
        self.enter = enter
        take = [(m.r_global, m.r_global) if m.flags.lapic_auto_eoi else (m.r_vc[i], m.r_vc[i])
                for i in range(n)]
        exit_fp: Footprint = (m.r_global, m.r_global)
        # Every handler step on vCPU i, as the model declares it (reads vcpuI and its
        # control state, writes its control state).
        vectors = [*m.handlers.values(), m.default_handler]
        self.handler_step: list[dict[tuple[int, int], Footprint]] = []
        self.ever_busy: list[ActorFootprint] = []
        self.quiet_fp: list[ActorFootprint] = []
        for i in range(n):
            per: dict[tuple[int, int], Footprint] = {}
            for vec, hsteps in [*m.handlers.items(), (-1, m.default_handler)]:
                for pc, st in enumerate(hsteps):
                    r, w = step_fp(st, i)
                    per[(vec, pc)] = (r | m.r_vc[i], w | m.r_c[i])
            self.handler_step.append(per)
            all_handlers = _union(*per.values()) if vectors else (EMPTY, EMPTY)
            busy = _union(enter[i], take[i], all_handlers, exit_fp if m.split else (EMPTY, EMPTY))
            self.ever_busy.append(ActorFootprint(busy, busy))
            self.quiet_fp.append(ActorFootprint(enter_quiet[i], enter_quiet[i]))
        self.take = take
        self.exit_fp = exit_fp
        self.clock = ActorFootprint((m.r_global, m.r_global), (m.r_global, m.r_global))
        self._busy_next: dict[tuple[int, Any], ActorFootprint] = {}
        self.vcpu_names = [f"vcpu{i}" for i in range(n)]

    def quiet(self, s: IrqState) -> bool:
        """No vector can ever become pending again on any vCPU (see the module docstring)."""
        if s.exits or any(s.frames) or s.vm.ioapic.delayed_at is not None:
            return False
        for v in s.vm.vcpus:
            if v.irr or v.pir or v.requests & REQ_IOAPIC_EOI_EXIT:
                return False
        for a, pc in enumerate(s.pcs):
            rows = self.programs[a]
            if pc < len(rows) and not rows[pc][1]:
                return False
        return True

    def of(self, s: IrqState) -> dict[str, ActorFootprint] | None:
        out: dict[str, ActorFootprint] = {}
        if self.quiet(s):
            for a, pc in enumerate(s.pcs):
                rows = self.programs[a]
                if pc < len(rows):
                    out[self.names[a]] = rows[pc][0]
            # No take, no handler, no EOI exit, no re-injection can happen from here on: a
            # vCPU only enters (a plain entry or a rescan: routing commits may still request
            # one); the clock never fires.
            for i, name in enumerate(self.vcpu_names):
                out[name] = self.quiet_fp[i]
            return out
        # Deliveries may still happen, so the clock may fire: its global footprint conflicts
        # with every vCPU's next move (an entry reads vcpuN) and with every program whose next
        # step touches a global resource, and everything anyone may do conflicts with its next
        # move: the closure of any actor is then every actor. Skip the work (None: no
        # persistent set here) unless some program's next step stays clear of it.
        live = [(a, pc) for a, pc in enumerate(s.pcs) if pc < len(self.programs[a])]
        if all(self.programs[a][pc][2] for a, pc in live):
            return None
        for a, pc in live:
            out[self.names[a]] = self.programs[a][pc][0]
        for i, name in enumerate(self.vcpu_names):
            frames = s.frames[i]
            key = (i, frames[-1] if frames else None) if not s.exits >> i & 1 else (i, "x")
            af = self._busy_next.get(key)
            if af is None:
                af = self._busy_next[key] = self._vcpu_busy(i, key[1])
            out[name] = af
        out["clock"] = self.clock
        return out

    def _vcpu_busy(self, i: int, top: Any) -> ActorFootprint:
        """vCPU i while deliveries may still happen: next is every move it could make from its
        position (an entry of any kind, a take of any vector, the running handler's step, or
        only the exit to the VMM while one is pending); ever is everything a vCPU can do."""
        if top == "x":
            nxt = self.exit_fp
        else:
            parts = [self.enter[i], self.take[i]]
            if top is not None:
                vec, pc = top
                parts.append(self.handler_step[i][(vec if vec in self.m.handlers else -1, pc)])
            nxt = _union(*parts)
        busy = self.ever_busy[i].ever
        return ActorFootprint(nxt, _union(busy, nxt))


def observed(model: IrqModel) -> frozenset[str] | None:
    """The resources the `always` properties read; frozenset() with only `finally` ones; None
    when a predicate reads what no action declares (an actor's program counter)."""
    m = model
    all_v = m.r_all_v
    all_c = frozenset().union(*m.r_c) if m.r_c else EMPTY
    whole = all_v | {"ioapic", "ioapic.rte", "routes", "ids"}
    out: set[str] = set()
    for p in m.exp.properties:
        if p.when != "always":
            continue
        if p.builtin:
            if p.name == "eoi-not-forwarded":
                out |= m.r_hit_all
            elif p.name == "delivered-twice":
                out |= all_v | all_c  # running handlers (ctl) and TMR (vcpuN)
            else:  # handled-vector-stale, eoi-will-be-lost: LAPICs, RTEs, routes, the map
                out |= whole
            continue
        reads = predicate_reads(p.predicate, m.nvcpus)
        if reads is None:
            return None
        out |= reads
    return frozenset(out)


def predicate_reads(p: Any, nvcpus: int) -> frozenset[str] | None:
    """The resources a (validated) user predicate reads; None for `actor: done` (a program
    counter is no declared resource)."""
    if "all" in p or "any" in p:
        parts = [predicate_reads(q, nvcpus) for q in (p.get("all") or p.get("any"))]
        if any(x is None for x in parts):
            return None
        return frozenset().union(*[x for x in parts if x is not None])
    if "not" in p:
        return predicate_reads(p["not"], nvcpus)
    if "remote_irr" in p or "pin" in p:
        return frozenset({"ioapic", "ioapic.rte"})
    if "vcpu" in p:  # every vCPU's (the index was validated; no need to parse it again)
        return frozenset(f"vcpu{i}{part}" for i in range(nvcpus) for part in ("", ".ctl"))
    if "counter" in p:
        return frozenset({f"counter.{p['counter']}"})
    return None
