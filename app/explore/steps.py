"""Actor and handler steps compiled once per model: each becomes a `Step` holding a bound engine
call, so the search pays for one Vm method per transition and never re-parses a document.

The vocabulary is the scenarios' (app/engine/scenario.py) minus what the explorer chooses
itself: `enter`, `ack` and `take` are the hardware's moves, `settle` and `expect` have no
meaning inside a program, `when`/`advance`/`resampler` belong in setup.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.engine import rte as R
from app.engine.errors import invalid
from app.engine.scenario import (
    _order,
    entry_from,
    msi_from_decoded,
    parse_int,
    patch_fields,
    route_entries,
)
from app.engine.scenario import _require as _need
from app.engine.vm import Vm

# Steps that run as guest code on a vCPU (a program bound to one, or a handler).
VCPU_OPS = ("write_rte", "patch_rte", "mmio", "lapic", "eoi", "exit", "sti", "cli")
DEVICE_OPS = ("line", "irq", "msi", "routes", "irqfd", "count")
PROGRAM_OPS = DEVICE_OPS + VCPU_OPS
CHOSEN_BY_EXPLORER = ("enter", "vmm_eoi_exit", "ack", "take", "settle")
SETUP_ONLY = ("expect", "when", "advance", "resampler")

# What a step does to the model's own bookkeeping besides the engine call.
KIND_ENGINE = 0
KIND_STI = 1
KIND_CLI = 2
KIND_COUNT = 3

# Footprint classes (see irq_model.footprint).
FP_PIN = 0  # a device line: IOAPIC only when lowering or masked, else everything
FP_VCPUS = 1  # an MSI: every vCPU's LAPIC
FP_GLOBAL = 2  # the IOAPIC, the routes, the VMM and every vCPU
FP_OWN = 3  # only the executing vCPU's LAPIC
FP_EOI = 4  # own LAPIC in split mode (the EOI exit is a request), global in-kernel
FP_CTL = 5  # the vCPU's interrupt flag only
FP_COUNTER = 6  # one counter
FP_ROUTES = 7  # the routing table (and in split mode every vCPU's requests)


@dataclass(frozen=True, slots=True)
class Step:
    """One atomic step of a program or handler."""

    op: str
    doc: dict[str, Any]  # the document's step (for counterexamples and traces)
    kind: int
    fp: int
    run: Callable[[Vm, int], Any] | None  # (vm, vcpu) -> engine result
    pin: int = -1  # FP_PIN: which pin; -1 otherwise
    level: int = 1  # FP_PIN: the level driven (0 lowers: never delivers)
    counter: int = -1  # KIND_COUNT: index into the state's counters

    def text(self, vcpu: int | None) -> str:
        parts = [self.op]
        for k, v in self.doc.items():
            if k in ("op", "label"):
                continue
            if isinstance(v, int) and not isinstance(v, bool) and k in ("vector",):
                v = f"{v:#x}"
            parts.append(f"{k}={_compact(v)}")
        if vcpu is not None and "vcpu" not in self.doc and self.op in VCPU_OPS:
            parts.append(f"vcpu={vcpu}")
        return " ".join(parts)


def _compact(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_compact(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ",".join(_compact(x) for x in v) + "]"
    return str(v)


def compile_step(step: Any, where: str, *, bound_vcpu: int | None, in_handler: bool,
                 x2apic_format: bool, nvcpus: int, counters: dict[str, int]) -> Step:
    """Validate one step and bind its engine call. `bound_vcpu` is the program's vCPU (None
    for a device/VMM program; handlers run on whichever vCPU takes the vector)."""
    if not isinstance(step, dict):
        raise invalid("a step is an object with an 'op'", where)
    op = step.get("op")
    if op in CHOSEN_BY_EXPLORER:
        raise invalid(f"{op} is the explorer's choice, not a program step: it tries every "
                      "point at which a vCPU enters the guest or takes an interrupt", f"{where}.op")
    if op in SETUP_ONLY:
        raise invalid(f"{op} is allowed in setup only", f"{where}.op")
    if op not in PROGRAM_OPS:
        raise invalid(f"op must be one of {', '.join(PROGRAM_OPS)}", f"{where}.op")
    on_vcpu = in_handler or bound_vcpu is not None
    if op in VCPU_OPS:
        if not on_vcpu:
            raise invalid(f"{op} runs on a vCPU: give the actor a vcpu, or put the step in a "
                          "handler", f"{where}.op")
        if "vcpu" in step:
            n = parse_int(step["vcpu"], f"{where}.vcpu", 0, nvcpus - 1)
            if in_handler or n != bound_vcpu:
                raise invalid("a step runs on its program's vCPU (a handler's on the vCPU "
                              "that took the interrupt)", f"{where}.vcpu")
    allowed = _KEYS[op]
    for k in step:
        if k not in allowed and k not in ("op", "label", "vcpu", "save"):
            raise invalid(f"unknown field {k!r} for {op}", f"{where}.{k}")
    doc = dict(step)

    def engine(run: Callable[[Vm, int], Any], fp: int, **kw: Any) -> Step:
        return Step(op, doc, KIND_ENGINE, fp, run, **kw)

    if op == "line":
        pin = parse_int(_need(step, "pin", where), f"{where}.pin", 0, R.NUM_PINS - 1)
        source = parse_int(step.get("source", 0), f"{where}.source", 0, 63)
        if "action" in step:
            action = step["action"]
            if action not in ("assert", "deassert", "pulse"):
                raise invalid("action must be assert, deassert or pulse", f"{where}.action")
            return engine(lambda vm, n: vm.set_line(pin, action=action, source=source), FP_PIN,
                          pin=pin, level=0 if action == "deassert" else 1)
        level = parse_int(_need(step, "level", where), f"{where}.level", 0, 1)
        return engine(lambda vm, n: vm.set_line(pin, level=level, source=source), FP_PIN,
                      pin=pin, level=level)
    if op == "irq":
        gsi = parse_int(_need(step, "gsi", where), f"{where}.gsi", 0, 4095)
        level = parse_int(_need(step, "level", where), f"{where}.level", 0, 1)
        source = parse_int(step.get("source", 0), f"{where}.source", 0, 63)
        return engine(lambda vm, n: vm.irq_line(gsi, level, source), FP_GLOBAL)
    if op == "msi":
        if "decoded" in step:
            lo, hi, data = msi_from_decoded(step["decoded"], f"{where}.decoded", x2apic_format)
        else:
            lo = parse_int(step.get("address_lo", 0xFEE00000), f"{where}.address_lo",
                           0, 0xFFFFFFFF)
            hi = parse_int(step.get("address_hi", 0), f"{where}.address_hi", 0, 0xFFFFFFFF)
            data = parse_int(_need(step, "data", where), f"{where}.data", 0, 0xFFFFFFFF)
        return engine(lambda vm, n: vm.signal_msi(lo, hi, data), FP_VCPUS)
    if op == "routes":
        entries = route_entries(_need(step, "entries", where), f"{where}.entries",
                                x2apic_format)
        return engine(lambda vm, n: vm.set_routes(entries), FP_ROUTES)
    if op == "irqfd":
        gsi = parse_int(_need(step, "gsi", where), f"{where}.gsi", 0, 4095)
        return engine(lambda vm, n: vm.irqfd_assert(gsi), FP_GLOBAL)
    if op == "count":
        name = _need(step, "name", where)
        if not isinstance(name, str):
            raise invalid("counter names are strings", f"{where}.name")
        idx = counters.setdefault(name, len(counters))
        return Step(op, doc, KIND_COUNT, FP_COUNTER, None, counter=idx)
    if op == "write_rte":
        pin = parse_int(_need(step, "pin", where), f"{where}.pin", 0, R.NUM_PINS - 1)
        entry = entry_from(_need(step, "entry", where), f"{where}.entry")
        halves = R.entry_halves(_order(step, where))
        return engine(lambda vm, n: vm.write_rte(n, pin, entry, halves), FP_GLOBAL)
    if op == "patch_rte":
        pin = parse_int(_need(step, "pin", where), f"{where}.pin", 0, R.NUM_PINS - 1)
        fields = patch_fields(step, where)
        order = _order(step, where)
        return engine(lambda vm, n: vm.patch_rte(n, pin, fields, order), FP_GLOBAL)
    if op == "mmio":
        access = step.get("access", "read")
        if access not in ("read", "write"):
            raise invalid("access must be read or write", f"{where}.access")
        offset = parse_int(_need(step, "offset", where), f"{where}.offset", 0, 0xFF)
        size = parse_int(step.get("size", 4), f"{where}.size", 1, 8)
        value = parse_int(step.get("value", 0), f"{where}.value")
        return engine(lambda vm, n: vm.mmio(n, access, offset, size, value), FP_GLOBAL)
    if op == "lapic":
        regs = [(k, parse_int(v, f"{where}.{k}", 0, 2**64 - 1)) for k, v in step.items()
                if k not in ("op", "vcpu", "label", "save")]
        if not regs:
            raise invalid("name at least one register", where)

        def write_regs(vm: Vm, n: int) -> Any:
            return [vm.lapic_write(n, reg, val) for reg, val in regs]

        own = all(reg == "tpr" for reg, _ in regs)
        return engine(write_regs, FP_OWN if own else FP_GLOBAL)
    if op == "eoi":
        return engine(lambda vm, n: vm.eoi(n), FP_EOI)
    if op == "exit":
        return engine(lambda vm, n: vm.exit_guest(n), FP_OWN)
    if op == "sti":
        return Step(op, doc, KIND_STI, FP_CTL, None)
    assert op == "cli"
    return Step(op, doc, KIND_CLI, FP_CTL, None)


_KEYS: dict[str, tuple[str, ...]] = {
    "line": ("pin", "level", "action", "source"),
    "irq": ("gsi", "level", "source"),
    "msi": ("decoded", "address_lo", "address_hi", "data"),
    "routes": ("entries",),
    "irqfd": ("gsi",),
    "count": ("name",),
    "write_rte": ("pin", "entry", "order"),
    "patch_rte": ("pin", "fields", "order"),
    "mmio": ("access", "offset", "size", "value"),
    "lapic": ("tpr", "eoi", "ldr", "dfr", "id", "svr", "apic_base"),
    "eoi": (),
    "exit": (),
    "sti": (),
    "cli": (),
}
