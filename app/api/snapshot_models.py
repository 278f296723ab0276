"""A snapshot (GET …/snapshot) as PUT …/snapshot accepts it: every field typed exactly and
range-checked, as strictly as POST /v1/vms checks a create request, then held to the
invariants a VM reached by operations has (restore_checks). A snapshot that fails either is
a 422 naming the field; the engine only ever sees a VM it could have produced.

Integers follow the one grammar (app/engine/ints.py): JSON integers or "0x…" strings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, StrictBool

from app.engine.errors import EngineError
from app.engine.routing import build_table
from app.engine.rte import NUM_PINS
from app.engine.vm import Vm, config_from_dict

from . import types as T

U256_MAX = (1 << 256) - 1
I63_MAX = (1 << 63) - 1
U64_MAX = (1 << 64) - 1


_V = BeforeValidator(T.int_or_hex)
# A bitmap of 256 vectors; the four KVM requests modelled.
Bitmap = Annotated[int, _V, Strict(), Field(ge=0, le=U256_MAX), T.int_schema(0, U256_MAX)]
U64 = Annotated[int, _V, Strict(), Field(ge=0, le=U64_MAX), T.int_schema(0, U64_MAX)]
U32 = Annotated[int, _V, Strict(), Field(ge=0, le=0xFFFFFFFF), T.int_schema(0, 0xFFFFFFFF)]
U8 = Annotated[int, _V, Strict(), Field(ge=0, le=0xFF), T.int_schema(0, 0xFF)]
U4 = Annotated[int, _V, Strict(), Field(ge=0, le=0xF), T.int_schema(0, 0xF)]
Count = Annotated[int, _V, Strict(), Field(ge=0, le=I63_MAX), T.int_schema(0, I63_MAX)]
Seq = Annotated[int, _V, Strict(), Field(ge=1, le=I63_MAX), T.int_schema(1, I63_MAX)]
Gsi = Annotated[int, _V, Strict(), Field(ge=0, le=4095), T.int_schema(0, 4095)]
VcpuIdx = Annotated[int, _V, Strict(), Field(ge=0, le=4095), T.int_schema(0, 4095)]
Pin = Annotated[int, _V, Strict(), Field(ge=0, le=NUM_PINS - 1), T.int_schema(0, NUM_PINS - 1)]
PinBits = Annotated[int, _V, Strict(), Field(ge=0, le=(1 << NUM_PINS) - 1),
                    T.int_schema(0, (1 << NUM_PINS) - 1)]
Stale = Annotated[int, _V, Strict(), Field(ge=-1, le=255), T.int_schema(-1, 255)]
Requests = Annotated[int, _V, Strict(), Field(ge=0, le=15), T.int_schema(0, 15)]
EoiCount = Annotated[int, _V, Strict(), Field(ge=0, le=10_000), T.int_schema(0, 10_000)]
PerPin = Field(min_length=NUM_PINS, max_length=NUM_PINS)


class _Strict(BaseModel):
    """Closed; integers strict (each type above), so a list may stand for a tuple (JSON has
    no tuples) but nothing is coerced."""

    model_config = ConfigDict(extra="forbid")


class VcpuSnapshot(_Strict):
    """One vCPU's LAPIC registers and KVM's EOI-interception fields (engine state.Vcpu)."""

    apic_base_enabled: StrictBool
    arb_prio: U32
    dfr: U32
    eoi_exitmap: Bitmap
    handled: Bitmap
    highest_stale: Stale
    id_reg: U32
    idx: VcpuIdx
    in_guest: StrictBool
    init_count: Count
    irr: Bitmap
    isr: Bitmap
    ldr: U32
    nmi_count: Count
    pending_ioapic_eoi: U8
    pir: Bitmap
    requests: Requests
    # PV EOI (absent in snapshots made before it was modelled: off, no ISR cache).
    isr_cache: Stale = -1
    pv_eoi: Annotated[int, _V, Strict(), Field(ge=0, le=2), T.int_schema(0, 2)] = 0
    pv_eoi_en: StrictBool = False
    smi_count: Count
    svr: U32
    tmr: Bitmap
    tpr: U8
    x2apic: StrictBool


_RTC_DEST_MAX = (4095 << 8) | 0xFF
RtcDest = Annotated[int, _V, Strict(), Field(ge=0, le=_RTC_DEST_MAX),
                    T.int_schema(0, _RTC_DEST_MAX)]
RtcPending = Annotated[int, _V, Strict(), Field(ge=0, le=4096), T.int_schema(0, 4096)]


class IoapicSnapshot(_Strict):
    """The IOAPIC register file (engine state.IoapicState)."""

    delayed_at: Count | None
    flavour: Literal["kvm", "qemu"]
    id: U4  # bits 27:24 of the ID register
    ioregsel: U8
    irq_eoi: Annotated[list[EoiCount], PerPin]  # IOAPIC_SUCCESSIVE_IRQ_MAX_COUNT
    irq_states: Annotated[list[U64], PerPin]  # asserted IRQ source ids (0..63) per pin
    irr: PinBits
    irr_delivered: PinBits
    redir: Annotated[list[U64], PerPin]
    version: Literal[0x11, 0x20]
    # RTC EOI tracking (kvm_rtc_eoi_tracking): vCPU index << 8 | vector of each LAPIC the RTC
    # interrupt in flight reached, and how many EOIs are still owed. Absent in snapshots
    # made before it was modelled: nothing pending.
    rtc_dest: Annotated[list[RtcDest], Field(max_length=4096)] = []
    rtc_pending_eoi: RtcPending = 0


IrqchipRoute = tuple[Literal["irqchip"], Literal["pic-master", "pic-slave", "ioapic"], Pin]
MsiRoute = tuple[Literal["msi"], U32, U32, U32]


class LogSnapshot(_Strict):
    """The event log; each event's shape is checked by the engine (Vm.restore)."""

    next_seq: Seq
    base: Count
    events: list[list[Any]]


class Snapshot(_Strict):
    """A whole snapshot; `config` is checked as POST /v1/vms checks it (ops.restore)."""

    version: Literal[1]
    config: dict[str, Any]  # checked by ops.restore as POST /v1/vms checks a body
    ioapic: IoapicSnapshot
    vcpus: Annotated[list[VcpuSnapshot], Field(min_length=1, max_length=4096)]
    routes: list[tuple[Gsi, list[IrqchipRoute | MsiRoute]]]
    resamplers: list[tuple[Gsi, Count]]
    time: Count
    log: LogSnapshot

    def engine_dict(self) -> dict[str, Any]:
        """The snapshot with every integer parsed, as Vm.restore takes it."""
        out = self.model_dump()
        out["routes"] = [[g, [list(r) for r in es]] for g, es in self.routes]
        out["resamplers"] = [list(x) for x in self.resamplers]
        return out



def _refuse(field: tuple[str | int, ...], message: str) -> RequestValidationError:
    return RequestValidationError([{"type": "snapshot_invariant", "loc": ("body", *field),
                                    "msg": message, "input": None}])


def restored_vm(snap: Snapshot) -> Vm:
    """The VM a type-checked snapshot describes, if operations could have reached it, else a
    422 naming the field: the IOAPIC its irqchip mode builds, one vCPU per index, x2APIC only
    while the APIC is enabled, a routing table KVM_SET_GSI_ROUTING could have installed; then
    every view renders and a trial run of operations on a copy (each vCPU enters, acks and
    EOIs, each pin pulses, time advances to any throttled re-injection) completes without an
    error that is not the modelled kernel's own refusal."""
    try:
        # `backend` was checked (model) by ops.restore; a VM's config does not keep it
        config = config_from_dict({k: v for k, v in snap.config.items() if k != "backend"})
    except TypeError as exc:  # a key POST /v1/vms takes but a VM's config has not (id)
        raise _refuse(("config",), f"not a VM configuration: {exc}") from None
    fresh = Vm(config)
    io = snap.ioapic
    if io.flavour != fresh.ioapic.flavour:
        raise _refuse(("ioapic", "flavour"), f"a {fresh.config.irqchip} irqchip has the "
                      f"{fresh.ioapic.flavour} IOAPIC")
    if io.version != fresh.ioapic.version:
        raise _refuse(("ioapic", "version"), f"this config's IOAPIC has version "
                      f"{fresh.ioapic.version:#x}")
    if len(snap.vcpus) != fresh.config.vcpus:
        raise _refuse(("vcpus",), f"config.vcpus is {fresh.config.vcpus}; the snapshot has "
                      f"{len(snap.vcpus)}")
    for i, v in enumerate(snap.vcpus):
        if v.idx != i:
            raise _refuse(("vcpus", i, "idx"), f"must be {i}")
        if v.x2apic and not v.apic_base_enabled:
            raise _refuse(("vcpus", i, "x2apic"), "x2APIC mode needs the APIC enabled "
                          "(IA32_APIC_BASE bit 11)")
        if v.isr_cache >= 0 and not v.isr >> v.isr_cache & 1:
            raise _refuse(("vcpus", i, "isr_cache"), "highest_isr_cache is -1 or a vector "
                          "in ISR")
        if v.pv_eoi and not (v.pv_eoi_en and v.in_guest and v.isr and not fresh.apic_virt):
            raise _refuse(("vcpus", i, "pv_eoi"), "PV EOI is armed only in guest mode, with "
                          "PV EOI enabled, a vector in service and no APICv/AVIC")
    vm = Vm.restore(snap.engine_dict())
    entries = [(gsi, *route) for gsi, routes in sorted(vm.routes.items()) for route in routes]
    try:
        table = build_table(entries, vm.config.irqchip == "split", vm.config.x2apic_format)
    except EngineError as exc:
        raise _refuse(("routes",), exc.detail) from None
    if table != vm.routes:
        raise _refuse(("routes",), "not a table KVM_SET_GSI_ROUTING installs")
    trial = vm.clone()
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("rendering the state", trial.state), ("reading the log", lambda: trial.log.since(0, 1))]
    for n in range(len(trial.vcpus)):
        steps += [(f"vCPU {n} enter", lambda n=n: trial.enter(n)),  # type: ignore[misc]
                  (f"vCPU {n} ack", lambda n=n: trial.ack(n)),  # type: ignore[misc]
                  (f"vCPU {n} EOI", lambda n=n: trial.eoi(n))]  # type: ignore[misc]
    steps += [(f"pulsing pin {p}", lambda p=p: trial.set_line(p, action="pulse"))  # type: ignore[misc]
              for p in range(NUM_PINS)]
    steps += [("advancing time", lambda: trial.advance_time(
                  max(0, (trial.ioapic.delayed_at or trial.time) - trial.time))),
              ("rendering the state", trial.state)]
    for what, op in steps:
        try:
            op()
        except EngineError:
            pass  # the modelled kernel's refusal is behaviour, not a broken state
        except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as exc:
            raise _refuse(("snapshot",), f"not a state operations can reach: {what} fails "
                          f"({type(exc).__name__})") from None
    return vm
