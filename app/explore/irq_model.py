"""The irqlab model: an exploration document as a `model_api.Model` over the engine's `Vm`.

A state is the VM, each actor's program counter, each vCPU's stack of running handlers
(vector, next step), the vCPUs' interrupt flags, the counters and which event-read property
the transition into it violated. The actions are the actors' next steps and the hardware's
moves, which no program orders:

  vcpuN enter      KVM_RUN: consume pending requests (a SCAN_IOAPIC rescan, a PIR sync);
                   enabled while requests are pending or the vCPU is outside guest mode. In
                   split mode an IOAPIC_EOI_EXIT request makes KVM_RUN return to userspace
                   with KVM_EXIT_IOAPIC_EOI: the entry stops there, the exit pending
  vcpuN exit to the VMM
                   the VMM (QEMU, on that vCPU's thread) handles the pending
                   KVM_EXIT_IOAPIC_EOI: ioapic_eoi_broadcast. Until then that vCPU runs no
                   guest code and does not re-enter; other vCPUs and devices run meanwhile
  vcpuN take V     with IF=1, in guest mode with nothing pending: acknowledge the highest
                   deliverable vector and start its handler (IF=0 until the handler returns)
  vcpuN V[i] step  the i-th step of the running handler (the last one also returns)
  clock            logical time reaches a throttled re-injection (interrupt storms)

A step that runs as guest code (a handler's, or a program bound to a vCPU) waits while its
vCPU has requests pending or is outside guest mode: the vCPU enters first, as real hardware
does, and that entry is its own action. A vCPU's own program is suspended while a handler
runs on it.

Each transition is clone() + one engine call (+ the log's events when a property reads
them); fingerprints hash a canonical encoding of Vm.key() and the bookkeeping with xxh3.
"""

from __future__ import annotations

import contextlib
import marshal
import os
from hashlib import blake2b
from typing import Any

from xxhash import xxh3_64_intdigest

from app.engine import invariants
from app.engine import rte as R
from app.engine.errors import EngineError, invalid
from app.engine.keyparts import key_parts, successor_key_parts, vm_from_key_parts
from app.engine.scenario import Runner
from app.engine.state import (
    REQ_IOAPIC_EOI_EXIT,
    REQ_SCAN_IOAPIC,
    Vcpu,
)
from app.engine.vm import Vm, config_from_dict

from . import irq_footprints as FP
from . import steps as S
from . import symmetry as SYM
from .document import Exploration
from .model_api import Action, ActorFootprint
from .predicates import compile_predicate

MAX_HANDLER_DEPTH = 8
EOI_EVENT_KINDS = frozenset({"eoi", "auto-eoi", "eoi-exit-dropped"})  # what event_findings reads
HIT_EOI_NOT_FORWARDED = 1


class IrqState:
    """One node of the search. Never mutated once built."""

    __slots__ = ("counters", "exits", "fp", "frames", "hit", "iflags", "parts", "pcs",
                 "routes_digest", "vm")

    def __init__(self, vm: Vm, pcs: tuple[int, ...], frames: tuple[tuple[tuple[int, int], ...],
                 ...], iflags: int, counters: tuple[int, ...], hit: int,
                 routes_digest: bytes | None = None, exits: int = 0,
                 parts: list[bytes] | None = None) -> None:
        self.vm = vm
        # The marshal bytes of the IOAPIC's key and of each vCPU's (what fingerprints hash),
        # None until asked for: a step reuses its parent's bytes for the parts it left as they
        # were (most steps change one vCPU), which halves a fingerprint's cost.
        self.parts = parts
        self.fp = -1  # the fingerprint, once computed
        # Bit n: vCPU n's KVM_RUN returned KVM_EXIT_IOAPIC_EOI (for the vector in its
        # pending_ioapic_eoi) and the VMM has not handled it yet.
        self.exits = exits
        self.pcs = pcs
        self.frames = frames
        self.iflags = iflags
        self.counters = counters
        self.hit = hit
        # The routing table changes only on route commits, but is the bulk of Vm.key(): its
        # digest is computed when a step installed a new table, else inherited.
        self.routes_digest = routes_digest if routes_digest is not None else routes_digest_of(vm)

    def key(self) -> tuple[Any, ...]:
        return (self.vm.key(), self.pcs, self.frames, self.iflags, self.counters, self.hit,
                self.exits)

    def fast_key(self) -> tuple[Any, ...]:
        """Vm.key() without its routes part (see routes_digest), plus the bookkeeping."""
        vm = self.vm
        return (vm.ioapic.key(), tuple([v.key() for v in vm.vcpus]),
                tuple(sorted(vm.resamplers.items())) if vm.resamplers else (), vm.time,
                self.pcs, self.frames, self.iflags, self.counters, self.hit, self.exits)


def routes_key(vm: Vm) -> tuple[Any, ...]:
    """The routes part of Vm.key() (tests check that Vm.key() is exactly these parts)."""
    return tuple((g, tuple(es)) for g, es in sorted(vm.routes.items()))


def routes_digest_of(vm: Vm) -> bytes:
    return blake2b(marshal.dumps(routes_key(vm), 2), digest_size=16).digest()


class IrqModel:
    """`model_api.Model[IrqState]` for one exploration under one profile."""

    def __init__(self, doc: Exploration | dict[str, Any], profile: str | None = None) -> None:
        from .document import parse

        self.exp = doc if isinstance(doc, Exploration) else parse(doc)
        exp = self.exp
        self.profile = profile or exp.vm.get("profile", "linux-latest")
        self.vm_cfg = exp.vm_config(profile)
        try:  # the vm block first: everything else is checked against it
            probe = Vm(config_from_dict(self.vm_cfg))
        except TypeError as exc:
            raise invalid(f"unknown vm field: {exc}", "vm") from None
        except EngineError as exc:
            raise invalid(exc.detail, f"vm.{exc.field}" if exc.field else "vm") from None
        self.nvcpus = len(probe.vcpus)
        fmt = bool(exp.vm.get("x2apic_format", False))
        self.counter_names: dict[str, int] = {}
        # Programs and handlers first: their errors name the document's own keys.
        self.programs: list[list[S.Step]] = []
        self.bound: list[int | None] = []
        for a in exp.actors:
            self.programs.append([
                S.compile_step(s, f"actors.{a.name}.steps[{i}]", bound_vcpu=a.vcpu,
                               in_handler=False, x2apic_format=fmt, nvcpus=self.nvcpus,
                               counters=self.counter_names)
                for i, s in enumerate(a.steps)])
            self.bound.append(a.vcpu)
        self.handlers: dict[int, list[S.Step]] = {}
        for vec, hsteps in exp.handlers.items():
            self.handlers[vec] = [
                S.compile_step(s, f"{exp.handler_paths[vec]}[{i}]", bound_vcpu=None,
                               in_handler=True, x2apic_format=fmt, nvcpus=self.nvcpus,
                               counters=self.counter_names)
                for i, s in enumerate(hsteps)]
        self.default_handler = [S.compile_step({"op": "eoi"}, "handlers.default", bound_vcpu=None,
                                               in_handler=True, x2apic_format=fmt,
                                               nvcpus=self.nvcpus, counters=self.counter_names)]
        runner = Runner({"handlers": exp.raw.get("handlers") or {}}, self.vm_cfg, {})
        for i, step in enumerate(exp.setup):
            runner.step_index = i
            try:
                runner.run_step(step, f"setup[{i}]")
            except EngineError as exc:
                # A setup the modelled kernel refuses cannot start a search: name the step.
                if not (exc.field or "").startswith(("setup", "handlers")):
                    exc.field = f"setup[{i}]" + (f".{exc.field}" if exc.field else "")
                raise
        vm = runner.vm
        self.split = vm.config.irqchip == "split"
        self.flags = vm.flags
        for name in sorted(runner.counters):
            self.counter_names.setdefault(name, len(self.counter_names))
        actor_index = {a.name: (i, len(a.steps)) for i, a in enumerate(exp.actors)}
        self.always: list[tuple[str, Any]] = []
        self.finally_: list[tuple[str, Any]] = []
        self.want_events = False
        for i, p in enumerate(exp.properties):
            if p.builtin:
                check = _BUILTIN_CHECKS[p.name]
                if p.name == "eoi-not-forwarded":
                    self.want_events = True
            else:
                check = compile_predicate(p.predicate, f"properties[{i}].{p.when}",
                                          nvcpus=self.nvcpus, actors=actor_index,
                                          counters=self.counter_names)
                check = _negate(check)  # a violation is a state where it does not hold
            (self.always if p.when == "always" else self.finally_).append((p.name, check))
        counters = [0] * len(self.counter_names)
        for name, value in runner.counters.items():
            counters[self.counter_names[name]] = value
        vm.log.truncate()
        # Only eoi-not-forwarded reads events: without it the engine's log stays off.
        vm.log.enabled = self.want_events
        iflags = sum(1 << n for n, f in enumerate(runner.if_flag) if f)
        self._initial = IrqState(vm, (0,) * len(self.programs), ((),) * self.nvcpus, iflags,
                                 tuple(counters), 0)
        # vCPU symmetry (app/explore/symmetry.py): the declared interchangeable vCPUs.
        self.symmetry = SYM.parse_group(exp.symmetry, self.nvcpus)
        self.slot_ids = [v.id_reg for v in vm.vcpus]
        self.symmetry_ids = frozenset(vm.vcpus[n].id_reg >> 24 for n in self.symmetry)
        self.symmetry_gsis: set[Any] = set()  # GSIs that irq/irqfd steps inject on
        self.symmetry_checked: set[tuple[Any, ...]] = set()  # (RTEs, routes digest) seen
        if self.symmetry:
            SYM.check_document(self, self.symmetry)
            SYM.check_state(self, self._initial, self.symmetry_ids)
        # encode/decode: routing tables by digest (a handful per search).
        self._routes_out: dict[bytes, bytes] = {}
        self._routes_in: dict[bytes, dict[int, list[Any]]] = {}
        self._parts_in: dict[bytes, Any] = {}  # decoded IOAPIC and vCPU parts
        self._tokens: dict[int, tuple[int, object]] = {}  # id(derived table) -> (token, table)
        self._next_token = 0
        self._tables_in: dict[tuple[int, int], Any] = {}  # (sender pid, token) -> table
        self._build_footprints()

    # ---- footprints ----

    def _build_footprints(self) -> None:
        n = self.nvcpus
        self.r_v = [frozenset({f"vcpu{i}"}) for i in range(n)]
        self.r_c = [frozenset({f"vcpu{i}.ctl"}) for i in range(n)]
        self.r_vc = [self.r_v[i] | self.r_c[i] for i in range(n)]
        all_v = frozenset(f"vcpu{i}" for i in range(n))
        self.r_all_v = all_v
        # "ioapic.rte": the redirection entries' programming (what a rescan reads in-kernel);
        # "ioapic": input lines, IRR, Remote IRR, IOREGSEL. Only guest RTE writes, MMIO and
        # (conservatively) every global step write the former; a line step the latter.
        # "hitN": the sticky flag eoi-not-forwarded reads, set when vCPU N retires a level
        # vector no IOAPIC hears of (an EOI, an auto-EOI at the ack, a dropped EOI exit);
        # every global step may set it too. The checker needs it to tell visible steps. One
        # name per vCPU: no step's effect depends on the flag and setting it is an OR, so two
        # vCPUs setting it commute; the state still holds one bit.
        self.r_hit = [frozenset({f"hit{i}"}) if self.want_events else frozenset()
                      for i in range(n)]
        self.r_hit_all: frozenset[str] = frozenset().union(*self.r_hit)
        self.r_global = all_v | {"ioapic", "ioapic.rte", "routes", "ids"} | self.r_hit_all
        self.r_io = frozenset({"ioapic"})
        self.r_io_hit = self.r_io if self.want_events else frozenset()
        self.r_routes_split = frozenset({"routes"}) | (all_v if self.split else frozenset())
        # vcpu_scan_ioapic: in-kernel the RTEs (trigger, destination, vector; not Remote IRR),
        # in split mode the MSI routes; both through the APIC map (ids) and the vCPU's own
        # pending vectors.
        scanned = {"ioapic.rte"} if not self.split else set()
        self.r_scan = [frozenset({"routes", "ids", f"vcpu{i}", *scanned}) for i in range(n)]
        self.r_counter = [frozenset({f"counter.{c}"}) for c in self.counter_names]
        self.empty: frozenset[str] = frozenset()
        self._actions: dict[tuple[Any, ...], Action] = {}  # actions are immutable: built once
        self._actor_fps = FP.ActorFootprints(self)
        self._observed = FP.observed(self)

    def _variant(self, st: S.Step, vm: Vm) -> int:
        """Which footprint a step has in this state: a raised line that may deliver (1), or
        one that touches the IOAPIC only (0): lowered, masked, or level with Remote IRR set
        (ioapic_service delivers nothing then, in KVM and in QEMU)."""
        if st.fp != S.FP_PIN or not st.level:
            return 0
        e = vm.ioapic.redir[st.pin]
        if e & R.MASK_BIT or (e & R.TRIGGER_BIT and e & R.REMOTE_IRR_BIT):
            return 0  # masked, or a level pin still awaiting its EOI: no delivery now
        return 1

    def _step_fp(self, st: S.Step, variant: int,
                 n: int) -> tuple[frozenset[str], frozenset[str]]:
        """(reads, writes) of a step run on vCPU n (-1: a device program)."""
        fp = st.fp
        if fp == S.FP_PIN:
            if not variant:
                return self.r_io, self.r_io
            return self.r_global, self.r_global
        if fp == S.FP_VCPUS:
            return self.r_all_v | {"ids"}, self.r_all_v
        if fp == S.FP_OWN:
            return self.r_v[n], self.r_v[n]
        if fp == S.FP_EOI:
            if self.split and not self.flags.lapic_auto_eoi:
                # Own LAPIC (the EOI exit is a request on this vCPU); whether the EOI goes
                # unheard is read against the IOAPIC's Remote IRR (eoi-not-forwarded).
                return self.r_v[n] | self.r_io_hit, self.r_v[n] | self.r_hit[n]
            return self.r_global, self.r_global
        if fp == S.FP_CTL:
            return self.r_c[n], self.r_c[n]
        if fp == S.FP_COUNTER:
            c = self.r_counter[st.counter]
            return c, c
        if fp == S.FP_ROUTES:
            return self.r_routes_split, self.r_routes_split
        return self.r_global, self.r_global

    # ---- persistent sets (app/explore/irq_footprints.py) ----

    def actor_footprints(self, state: IrqState) -> dict[str, ActorFootprint] | None:
        """What every actor may touch next and from here on (model_api.HasActorFootprints)."""
        return self._actor_fps.of(state)

    def observed(self) -> frozenset[str] | None:
        """The resources the `always` properties read (model_api.HasObserved)."""
        return self._observed

    # ---- the Model protocol ----

    def initial(self) -> IrqState:
        return self._initial

    def actions(self, state: IrqState) -> list[Action]:
        out: list[Action] = []
        vm = state.vm
        vcpus = vm.vcpus
        cache = self._actions
        for a, prog in enumerate(self.programs):
            pc = state.pcs[a]
            if pc >= len(prog):
                continue
            n = self.bound[a]
            st = prog[pc]
            if n is not None:
                v = vcpus[n]
                if state.frames[n] or v.requests or not v.in_guest:
                    continue
            variant = self._variant(st, vm)
            key: tuple[Any, ...] = ("p", a, pc, variant)
            act = cache.get(key)
            if act is None:
                act = cache[key] = self._program_action(a, pc, st, n, variant)
            out.append(act)
        exits = state.exits
        for n in range(self.nvcpus):
            v = vcpus[n]
            if exits >> n & 1:
                key = ("x", n)
                act = cache.get(key)
                if act is None:
                    act = cache[key] = Action(f"vcpu{n} exit to the VMM: ioapic_eoi_broadcast",
                                              f"vcpu{n}", self.r_global, self.r_global, ("x", n))
                out.append(act)
                continue  # the vCPU's thread is in userspace: no entry, no guest code
            if v.requests or not v.in_guest:
                req = v.requests
                kind = 2 if req & REQ_IOAPIC_EOI_EXIT else 1 if req & REQ_SCAN_IOAPIC else 0
                key = ("e", n, kind)
                act = cache.get(key)
                if act is None:
                    act = cache[key] = self._enter_action(n, kind)
                out.append(act)
                continue  # guest code (take, handler steps) waits for the entry
            frames = state.frames[n]
            if state.iflags >> n & 1 and len(frames) < MAX_HANDLER_DEPTH:
                vec = _deliverable(vm, v)
                if vec >= 0:
                    key = ("t", n, vec)
                    act = cache.get(key)
                    if act is None:
                        rw = self.r_global if self.flags.lapic_auto_eoi else self.r_vc[n]
                        act = cache[key] = Action(f"vcpu{n} take {vec:#x}", f"vcpu{n}", rw, rw,
                                                  ("t", n))
                    out.append(act)
            if frames:
                vec, pc = frames[-1]
                st = self.handlers.get(vec, self.default_handler)[pc]
                variant = self._variant(st, vm)
                key = ("h", n, vec, pc, variant)
                act = cache.get(key)
                if act is None:
                    r, w = self._step_fp(st, variant, n)
                    act = cache[key] = Action(
                        f"vcpu{n} handler {vec:#x}[{pc}]: {st.text(n)}", f"vcpu{n}",
                        r | self.r_vc[n], w | self.r_c[n], ("h", n))
                out.append(act)
        if vm.ioapic.delayed_at is not None:
            rw = self.r_global
            out.append(Action("clock: throttled re-injection", "clock", rw, rw, ("c",)))
        return out

    def _program_action(self, a: int, pc: int, st: S.Step, n: int | None,
                        variant: int) -> Action:
        name = self.exp.actors[a].name
        r, w = self._step_fp(st, variant, -1 if n is None else n)
        if n is not None:
            r = r | self.r_vc[n]  # enabled only with no handler running and nothing pending
        return Action(f"{name}: {st.text(n)}", name, r, w, ("p", a, pc))

    def _enter_action(self, n: int, kind: int) -> Action:
        actor = f"vcpu{n}"
        if kind == 2:
            # Consumes IOAPIC_EOI_EXIT: returns to userspace with the exit pending (vcpuN), or
            # drops it and goes on (the rescan's reads; a dropped EOI is read against the
            # IOAPIC's Remote IRR by eoi-not-forwarded).
            reads = self.r_scan[n] | (self.r_io if self.want_events else self.empty)
            if not self.split:
                reads = reads | self.r_global
            return Action(f"vcpu{n} enter (EOI exit)", actor, reads,
                          self.r_v[n] | self.r_hit[n], ("e", n))
        if kind == 1:
            return Action(f"vcpu{n} enter (rescan)", actor, self.r_scan[n], self.r_v[n],
                          ("e", n))
        return Action(f"vcpu{n} enter", actor, self.r_v[n], self.r_v[n], ("e", n))

    def step(self, state: IrqState, action: Action) -> IrqState:
        data = action.data
        kind = data[0]
        src = state.vm
        # Derived tables: built once on the parent (a decoded state has none, a step that
        # changed their inputs dropped them) and shared by its successors, rather than rebuilt
        # by each successor that needs one.
        if src._scan is None:
            src.scan_table()  # the APIC map too
        if src._vec_pins is None:
            src.pins_with_vector(0)
        vm = src.clone()
        # The parent's derived tables (APIC map, scan targets, pins by vector) hold for the
        # clone until a step changes what they derive from, and every such change drops them
        # on the VM it changes (what the engine's own caching relies on). Parent states are
        # never mutated, so the clone may start from them instead of rebuilding each one: a
        # rescan or a delivery then costs a lookup, not a table build.
        vm._map = src._map
        vm._scan = src._scan
        vm._vec_pins = src._vec_pins
        seq = vm.log.next_seq
        pcs = state.pcs
        frames = state.frames
        iflags = state.iflags
        counters = state.counters
        exits = state.exits
        if kind == "e":
            n = data[1]
            if vm.enter(n, self.split)["exits"]:
                exits |= 1 << n  # KVM_RUN returned KVM_EXIT_IOAPIC_EOI; the VMM handles it next
        elif kind == "x":
            n = data[1]
            vm.vmm_eoi_exit(n)
            exits &= ~(1 << n)
        elif kind == "t":
            n = data[1]
            vec = vm.ack(n)["vector"]
            assert vec is not None
            iflags &= ~(1 << n)
            if self.handlers.get(vec, self.default_handler):
                frames = _replace(frames, n, (*frames[n], (vec, 0)))
            else:
                iflags |= 1 << n  # an empty handler returns at once
        elif kind == "p":
            a, pc = data[1], data[2]
            st = self.programs[a][pc]
            n = self.bound[a]
            iflags, counters = self._run(st, vm, -1 if n is None else n, iflags, counters)
            pcs = (*pcs[:a], pc + 1, *pcs[a + 1:])
        elif kind == "h":
            n = data[1]
            vec, pc = frames[n][-1]
            hsteps = self.handlers.get(vec, self.default_handler)
            iflags, counters = self._run(hsteps[pc], vm, n, iflags, counters)
            if pc + 1 < len(hsteps):
                frames = _replace(frames, n, (*frames[n][:-1], (vec, pc + 1)))
            else:
                frames = _replace(frames, n, frames[n][:-1])
                iflags |= 1 << n  # the return restores IF (interrupt gate semantics)
        else:
            io = vm.ioapic
            assert io.delayed_at is not None
            vm.advance_time(io.delayed_at - vm.time)
        hit = state.hit  # sticky: "an EOI went unheard" stays true of every later state
        if self.want_events and not hit:
            for e in vm.log.events:
                if e[2] in EOI_EVENT_KINDS:
                    if invariants.event_findings(vm, seq - 1):
                        hit |= HIT_EOI_NOT_FORWARDED
                    break
        vm.log.truncate()
        # A routing table is replaced whole, never edited (Vm.clone shares it): the same
        # object means the same table, and its digest carries over.
        digest = state.routes_digest if vm.routes is state.vm.routes else None
        # The key's parts this step left as they were keep their parent's bytes.
        old = state.parts
        if old is None:
            old = state.parts = key_parts(src)
        parts = successor_key_parts(vm, src, old)
        return IrqState(vm, pcs, frames, iflags, counters, hit, digest, exits, parts)

    def _run(self, st: S.Step, vm: Vm, n: int, iflags: int,
             counters: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        k = st.kind
        if k == S.KIND_ENGINE:
            assert st.run is not None
            # The modelled kernel may refuse (e.g. -EINVAL): a result, the state as it left it.
            with contextlib.suppress(EngineError):
                st.run(vm, n)
        elif k == S.KIND_STI:
            iflags |= 1 << n
        elif k == S.KIND_CLI:
            iflags &= ~(1 << n)
        else:
            c = st.counter
            counters = (*counters[:c], counters[c] + 1, *counters[c + 1:])
        return iflags, counters

    def fingerprint(self, state: IrqState) -> int:
        # marshal version 2 encodes by value only (no references, no interning marks), so
        # equal keys give equal bytes in every process; Python's hash() of str is salted.
        # The IOAPIC's and the vCPUs' keys come as the state's parts (marshal bytes, mostly
        # inherited from the parent, see step), then fast_key()'s other parts, the routes
        # digest among them, in one marshal call. Each marshal encoding delimits itself, so
        # the concatenation is unambiguous. xxh3 (64-bit, not cryptographic: no adversary
        # chooses the states) hashes a kilobyte in 0.1 us where blake2b took 1.3.
        fp = state.fp
        if fp >= 0:
            return fp
        parts = state.parts
        if parts is None:
            parts = state.parts = key_parts(state.vm)
        vm = state.vm
        rest = (sorted(vm.resamplers.items()) if vm.resamplers else None, vm.time, state.pcs,
                state.frames, state.iflags, state.counters, state.hit, state.exits,
                state.routes_digest)
        fp = state.fp = xxh3_64_intdigest(b"".join(parts) + marshal.dumps(rest, 2))
        return fp

    def violation(self, state: IrqState, terminal: bool) -> str | None:
        for name, check in self.always:
            if check(self, state):
                return name
        if terminal:
            for name, check in self.finally_:
                if check(self, state):
                    return name
        return None

    def canonical(self, state: IrqState) -> IrqState:
        """The representative of state's class under the declared vCPU symmetry (identity
        without one)."""
        if not self.symmetry:
            return state
        return SYM.canonical(self, state)

    def encode(self, state: IrqState) -> bytes:
        """What decode needs (everything Vm.key() holds, and the bookkeeping) as marshal
        bytes: the state's key parts as they are (see step), the routing table's encoding
        computed once per table. A few microseconds, where a snapshot would build dicts."""
        vm = state.vm
        parts = state.parts
        if parts is None:
            parts = state.parts = key_parts(vm)
        digest = state.routes_digest
        routes = self._routes_out.get(digest)
        if routes is None:
            routes = self._routes_out[digest] = marshal.dumps(routes_key(vm), 2)
        pid = os.getpid()
        return marshal.dumps((parts, tuple(sorted(vm.resamplers.items())), vm.time, state.pcs,
                              state.frames, state.iflags, state.counters, state.hit,
                              state.exits, digest, routes, pid, self._token(vm._map),
                              self._token(vm._scan), self._token(vm._vec_pins)), 2)

    def _token(self, table: object) -> int:
        """A number for one of a VM's derived tables (0: not built), unique in this process.
        The VMs that share a table object have equal inputs to it (the engine drops a table
        on the VM whose inputs change), so a receiver may build the table once per token and
        share it, as a single process does along its parent links. The registry keeps each
        table alive so that its id() is not reused while it names a token."""
        if table is None:
            return 0
        got = self._tokens.get(id(table))
        if got is None:
            if len(self._tokens) > 200_000:
                self._tokens.clear()  # a table seen again gets a new token: built once more
            self._next_token += 1
            got = self._tokens[id(table)] = (self._next_token, table)
        return got[0]

    def decode(self, data: bytes) -> IrqState:
        (parts, resamplers, time, pcs, frames, iflags, counters, hit, exits, digest, routes, pid,
         map_token, scan_token, pins_token) = marshal.loads(data)
        # One table object per routing table, shared by the states that have it (as Vm.clone
        # shares it): decoded once, and step() carries its digest over by identity.
        table = self._routes_in.get(digest)
        if table is None:
            table = self._routes_in[digest] = {g: list(es) for g, es in marshal.loads(routes)}
        memo = self._parts_in
        if len(memo) > 100_000:  # bounded, at a few hundred bytes an entry
            memo.clear()
        vm = vm_from_key_parts(self._initial.vm, parts, table, dict(resamplers), time, memo)
        tables = self._tables_in
        if len(tables) > 200_000:
            tables.clear()
        if map_token:
            vm._map = tables.get((pid, map_token))
            if vm._map is None:
                tables[pid, map_token] = vm.apic_map()
        if scan_token:
            vm._scan = tables.get((pid, scan_token))
            if vm._scan is None:
                tables[pid, scan_token] = vm.scan_table()
        if pins_token:
            vm._vec_pins = tables.get((pid, pins_token))
            if vm._vec_pins is None:
                vm.pins_with_vector(0)
                tables[pid, pins_token] = vm._vec_pins
        return IrqState(vm, pcs, frames, iflags, counters, hit, digest, exits, parts)

    # ---- traces ----

    def scenario_step(self, state: IrqState, action: Action) -> dict[str, Any]:
        """The scenario step that replays `action` from `state` (app.engine.scenario)."""
        data = action.data
        kind = data[0]
        if kind == "e":
            if self.split and state.vm.vcpus[data[1]].requests & REQ_IOAPIC_EOI_EXIT:
                return {"op": "enter", "vcpu": data[1], "until_exit": True}
            return {"op": "enter", "vcpu": data[1]}
        if kind == "x":
            return {"op": "vmm_eoi_exit", "vcpu": data[1]}
        if kind == "t":
            return {"op": "ack", "vcpu": data[1]}
        if kind == "c":
            io = state.vm.ioapic
            assert io.delayed_at is not None
            return {"op": "advance", "us": io.delayed_at - state.vm.time}
        if kind == "p":
            st = self.programs[data[1]][data[2]]
            n = self.bound[data[1]]
        else:
            n = data[1]
            vec, pc = state.frames[n][-1]
            st = self.handlers.get(vec, self.default_handler)[pc]
        out = {k: v for k, v in st.doc.items() if k != "label"}
        if n is not None and st.op in S.VCPU_OPS:
            out["vcpu"] = n
        return out


def _replace(frames: tuple[tuple[tuple[int, int], ...], ...], n: int,
             new: tuple[tuple[int, int], ...]) -> tuple[tuple[tuple[int, int], ...], ...]:
    return (*frames[:n], new, *frames[n + 1:])


def _deliverable(vm: Vm, v: Vcpu) -> int:
    """The vector `acknowledge` would take now, or -1 (same test, without side effects)."""
    irr = v.irr | v.pir if vm.config.apicv else v.irr
    if not irr or not v.apic_base_enabled or not v.svr & 0x100:
        return -1
    vec = irr.bit_length() - 1
    isrv = v.isr.bit_length() - 1
    tpr = v.tpr
    cur_ppr = tpr & 0xFF if (tpr & 0xF0) >= (isrv & 0xF0) or isrv < 0 else isrv & 0xF0
    if (vec & 0xF0) <= cur_ppr:
        return -1
    return vec


def _negate(check: Any) -> Any:
    return lambda model, s: not check(s)


# ---- built-in properties: (model, state) -> violated ----


def _remote_irr_stuck(model: IrqModel, s: IrqState) -> bool:
    vm = s.vm
    for e in vm.ioapic.redir:
        if e & R.REMOTE_IRR_BIT and e & R.TRIGGER_BIT:
            vec = e & 0xFF
            bit = 1 << vec
            held = False
            for v in vm.vcpus:
                if (v.irr | v.isr | v.pir) & bit or (
                        (v.requests & REQ_IOAPIC_EOI_EXIT or s.exits >> v.idx & 1)
                        and v.pending_ioapic_eoi == vec):
                    held = True
                    break
            if not held:
                return True
    return False


def _eoi_not_forwarded(model: IrqModel, s: IrqState) -> bool:
    return bool(s.hit & HIT_EOI_NOT_FORWARDED)


def _finding(kind: str) -> Any:
    def check(model: IrqModel, s: IrqState) -> bool:
        return any(f["kind"] == kind for f in invariants.state_findings(s.vm))
    return check


def _will_be_lost(model: IrqModel, s: IrqState) -> bool:
    vm = s.vm
    if not vm.flags.eoi_exit_bitmap:
        return False
    for e in vm.ioapic.redir:
        if e & R.REMOTE_IRR_BIT and e & R.TRIGGER_BIT:
            vec = e & 0xFF
            for v in vm.vcpus:
                if ((v.irr | v.isr | v.pir) >> vec & 1 and v.tmr >> vec & 1
                        and not v.handled >> vec & 1
                        and not v.requests & (REQ_SCAN_IOAPIC | REQ_IOAPIC_EOI_EXIT)):
                    return True
    return False


def _interrupt_lost(model: IrqModel, s: IrqState) -> bool:
    """Checked at quiescence, where no handler is running (a running handler's next step or
    its vCPU's entry would be enabled): a level line still high on an unmasked pin asked for
    service that no handler will ever give (pending in an IRR nobody takes, or blocked)."""
    io = s.vm.ioapic
    for pin, e in enumerate(io.redir):
        if io.irq_states[pin] and not e & R.MASK_BIT and e & R.TRIGGER_BIT:
            return True
    return False


def _delivered_twice(model: IrqModel, s: IrqState) -> bool:
    seen = 0
    for n, f in enumerate(s.frames):
        tmr = s.vm.vcpus[n].tmr
        for vec, _ in f:
            bit = 1 << vec
            if tmr & bit:
                if seen & bit:
                    return True
                seen |= bit
    return False


_BUILTIN_CHECKS: dict[str, Any] = {
    "remote-irr-stuck": _remote_irr_stuck,
    "eoi-not-forwarded": _eoi_not_forwarded,
    "eoi-will-be-lost": _will_be_lost,
    "handled-vector-stale": _finding("handled-vector-stale"),
    "interrupt-lost": _interrupt_lost,
    "delivered-twice": _delivered_twice,
}


def build_model(doc: dict[str, Any], profile: str | None) -> IrqModel:
    """Module-level factory (model_api.ModelFactory) for worker processes."""
    return IrqModel(doc, profile)
