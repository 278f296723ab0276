"""vCPU symmetry for the irqlab model: `symmetry: [i, j, ...]` declares vCPUs interchangeable.

A permutation of the declared vCPUs moves everything a vCPU *holds* (its LAPIC registers and
bitmaps, requests, guest mode, running handlers, interrupt flag, pending EOI exit) between
vCPU slots, while what a slot *is* stays (its index and its APIC ID, which KVM set from the
vcpu_id at reset). Two states that differ by such a move have the same future up to renaming
the vCPUs, and the same verdicts, provided nothing refers to one of those vCPUs in particular:

- the model checks statically that no actor is bound to one of them, no user property names
  one of them, the VM is not in x2APIC mode (an x2APIC ID and its logical ID derive from the
  slot), and no program or handler step sends an MSI, writes the IOAPIC by raw MMIO or writes
  an APIC ID or APIC base;
- and on every state it canonicalises, that no programmed RTE and no MSI route (but a masked
  pin's edge route, which QEMU rewrites on unmask, unless an irq or irqfd step uses it)
  targets one of them by physical APIC ID or uses lowest-priority delivery (KVM's arbitration
  breaks ties by vCPU order). A state that breaks this stops the search with an error naming
  the pin or GSI (a declaration the program contradicts is the user's mistake, not a verdict).

Logical (flat or cluster) destinations are fine: the LDR travels with the vCPU's registers.
What the model cannot check is the user's obligation: that the setup does not rely on one
vCPU being first in some order the engine walks (it walks vCPUs in index order only to log).

The representative of a class sorts the declared slots by what they hold (a total order on
the tuples below), so permuted states get equal representatives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.engine import rte as R
from app.engine.errors import invalid
from app.engine.msi import msi_to_irq
from app.engine.state import Vcpu

if TYPE_CHECKING:
    from .irq_model import IrqModel, IrqState

RESET_RTE = R.MASK_BIT  # what an IOAPIC pin holds after reset: masked, edge, vector 0
FORBIDDEN_OPS = ("msi", "mmio")
FORBIDDEN_LAPIC = ("id", "apic_base")


def parse_group(value: Any, nvcpus: int) -> tuple[int, ...]:
    """The document's `symmetry`: a list of at least two distinct vCPU indices."""
    if value is None:
        return ()
    if (not isinstance(value, list) or len(value) < 2
            or any(type(n) is not int or not 0 <= n < nvcpus for n in value)
            or len(set(value)) != len(value)):
        raise invalid(f"symmetry is a list of at least two distinct vCPU indices "
                      f"(0..{nvcpus - 1})", "symmetry")
    return tuple(sorted(value))


def check_document(model: IrqModel, group: tuple[int, ...]) -> None:
    """What the model can check before the search (see the module docstring)."""
    exp = model.exp
    members = set(group)
    for a in exp.actors:
        if a.vcpu in members:
            raise invalid(f"actor {a.name} is bound to vcpu{a.vcpu}, which symmetry declares "
                          "interchangeable", "symmetry")
    for i, p in enumerate(exp.properties):
        if not p.builtin and _names_vcpu(p.predicate, members):
            raise invalid(f"property {p.name} names a vCPU that symmetry declares "
                          "interchangeable", f"properties[{i}]")
    if exp.vm.get("x2apic"):
        raise invalid("symmetry needs xAPIC mode (an x2APIC ID is the vCPU's index)",
                      "symmetry")
    programs = [(f"actors.{a.name}.steps", a.steps) for a in exp.actors]
    programs += [(exp.handler_paths[v], s) for v, s in exp.handlers.items()]
    model.symmetry_gsis = set()
    for where, steps in programs:
        for i, st in enumerate(steps):
            op = st.get("op") if isinstance(st, dict) else None
            if op in ("irq", "irqfd"):
                model.symmetry_gsis.add(st.get("gsi"))
            if op in FORBIDDEN_OPS or (
                    op == "lapic" and any(k in st for k in FORBIDDEN_LAPIC)):
                raise invalid(f"{op} steps may target one vCPU in particular: not allowed "
                              "with symmetry", f"{where}[{i}]")
    if any(model.initial().vm.vcpus[n].x2apic for n in group):
        raise invalid("symmetry needs xAPIC mode (an x2APIC ID is the vCPU's index)",
                      "symmetry")


def _names_vcpu(p: Any, members: set[int]) -> bool:
    if isinstance(p, dict):
        if "vcpu" in p and p["vcpu"] in members:
            return True
        return any(_names_vcpu(v, members) for v in p.values())
    if isinstance(p, list):
        return any(_names_vcpu(v, members) for v in p)
    return False


def check_state(model: IrqModel, state: IrqState, ids: frozenset[int]) -> None:
    """No RTE or MSI route picks out one of the interchangeable vCPUs (see above)."""
    vm = state.vm
    for n in model.symmetry:
        v = vm.vcpus[n]
        if v.x2apic or v.id_reg != model.slot_ids[n]:
            raise invalid(f"vcpu{n}'s APIC ID or mode changed, which tells the symmetric "
                          "vCPUs apart", "symmetry")
    # The RTEs and the routing table change far more rarely than states are reached: each
    # combination is checked once.
    memo = (tuple(vm.ioapic.redir), state.routes_digest)
    if memo in model.symmetry_checked:
        return
    for pin, e in enumerate(vm.ioapic.redir):
        if e == RESET_RTE:
            continue
        if R.delivery_mode(e) == 1:
            raise invalid(f"pin {pin} uses lowest-priority delivery, whose arbitration "
                          "tells the symmetric vCPUs apart", "symmetry")
        if not R.is_logical(e) and R.dest(e) in ids:
            raise invalid(f"pin {pin} targets APIC ID {R.dest(e)} physically, which tells "
                          "the symmetric vCPUs apart", "symmetry")
    fmt = vm.config.x2apic_format
    redir = vm.ioapic.redir
    for gsi, entries in vm.routes.items():
        for en in entries:
            if en[0] != "msi":
                continue
            irq = msi_to_irq(en[1], en[2], en[3], fmt)
            if (gsi < len(redir) and redir[gsi] & R.MASK_BIT and not irq.level_trig
                    and gsi not in model.symmetry_gsis):
                # A masked pin's stale edge route: QEMU rewrites it from the RTE when the
                # pin is unmasked, no rescan reads an edge route, and no step injects there.
                continue
            if irq.lowest_prio:
                raise invalid(f"GSI {gsi} uses lowest-priority delivery, whose arbitration "
                              "tells the symmetric vCPUs apart", "symmetry")
            if not irq.logical and irq.dest in ids:
                raise invalid(f"GSI {gsi} targets APIC ID {irq.dest} physically, which "
                              "tells the symmetric vCPUs apart", "symmetry")
    model.symmetry_checked.add(memo)


def _held(v: Vcpu) -> tuple[Any, ...]:
    """What moves with a vCPU: its key without the slot's own index and APIC ID."""
    return (v.apic_base_enabled, v.arb_prio, v.dfr, v.eoi_exitmap, v.handled, v.highest_stale,
            v.in_guest, v.init_count, v.irr, v.isr, v.ldr, v.nmi_count, v.pending_ioapic_eoi,
            v.pir, v.requests, v.smi_count, v.svr, v.tmr, v.tpr)


def _move(src: Vcpu, slot: Vcpu) -> Vcpu:
    """src's contents in slot's place (slot's index and APIC ID)."""
    c = src.clone()
    c.idx = slot.idx
    c.id_reg = slot.id_reg
    c.x2apic = slot.x2apic
    return c


def canonical(model: IrqModel, state: IrqState) -> IrqState:
    from .irq_model import IrqState

    check_state(model, state, model.symmetry_ids)
    group = model.symmetry
    vcpus = state.vm.vcpus
    frames, iflags, exits = state.frames, state.iflags, state.exits
    sig = [(_held(vcpus[n]), frames[n], iflags >> n & 1, exits >> n & 1) for n in group]
    order = sorted(range(len(group)), key=sig.__getitem__)
    if order == list(range(len(group))):
        return state
    vm = state.vm.clone()
    vm._map = None  # clone() starts without derived tables; keep it so after the move
    vm._scan = None
    new_frames = list(frames)
    for k, j in enumerate(order):
        dst, src = group[k], group[j]
        vm.vcpus[dst] = _move(vcpus[src], vcpus[dst])
        new_frames[dst] = frames[src]
        bit = 1 << dst
        iflags = iflags & ~bit | (state.iflags >> src & 1) << dst
        exits = exits & ~bit | (state.exits >> src & 1) << dst
    return IrqState(vm, state.pcs, tuple(new_frames), iflags, state.counters, state.hit,
                    state.routes_digest, exits)
