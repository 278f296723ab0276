"""Pydantic models of the scenario language (app/engine/scenario.py) and of its results.

The document models describe what `run_scenario` accepts: every op of STEP_OPS as one member
of a union discriminated on `op`, the expect keys, the matrix and the handlers. They are the
source of the published JSON Schema (openapi/scenario.schema.json, written by
scripts/export_scenario_schema.py) and of the request body schema in the OpenAPI document.
The service does not validate requests with them: the raw document goes to the engine, which
reports engine-style paths (`steps[3].pin`). Tests validate every library scenario against
them, so the schema and the engine's language cannot drift apart.

Where the engine compares an expectation with `==` without parsing it, the model asks for a
plain JSON value (`highest_stale_pending_ioapic_eoi: 64`, not `"0x40"`); where the engine parses
integers, "0x…" strings are accepted as in the REST API. Object keys that are numbers (pins,
vCPUs, vectors, GSIs) are decimal or "0x…" strings in JSON (YAML may also give integers).
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import models_json_schema
from pydantic_core import PydanticCustomError

from app.engine.ints import KEY_PATTERN, int_from_text

from . import models as M
from . import types as T

# ---------------------------------------------------------------- field types


def _schema(lo: int, hi: int) -> WithJsonSchema:
    """A JSON integer lo..hi or a "0x…" string, as in the REST API (types.py)."""
    integer: dict[str, Any] = {"type": "integer", "minimum": lo}
    if hi < 1 << 53:
        integer["maximum"] = hi
    else:
        integer["description"] = f"at most 2**{hi.bit_length()} - 1"
    return WithJsonSchema({"anyOf": [integer, {"type": "string", "pattern": T.HEX_PATTERN}]})




def _key_int(value: Any) -> Any:
    """Before-validator of numeric object keys: "5" or "0x40" (JSON), 5 (YAML)."""
    if isinstance(value, bool):
        raise PydanticCustomError("int_not_bool", "booleans are not accepted as integers")
    if isinstance(value, str):
        n = int_from_text(value, key=True)
        if n is None:
            raise PydanticCustomError("int_key", "{value} is not an integer",
                                      {"value": T.shown(value)})
        return n
    return value


_V = BeforeValidator(T.int_or_hex)
_K = BeforeValidator(_key_int)
_KEY_SCHEMA = WithJsonSchema({"type": "string", "pattern": KEY_PATTERN})
U64_MAX = (1 << 64) - 1

U64 = Annotated[int, _V, Field(ge=0, le=U64_MAX), _schema(0, U64_MAX)]
U32 = Annotated[int, _V, Field(ge=0, le=0xFFFFFFFF), _schema(0, 0xFFFFFFFF)]
Vector = Annotated[int, _V, Field(ge=0, le=0xFF), _schema(0, 0xFF)]
Pin = Annotated[int, _V, Field(ge=0, le=23), _schema(0, 23)]
Gsi = Annotated[int, _V, Field(ge=0, le=4095), _schema(0, 4095)]
VcpuIdx = Annotated[int, _V, Field(ge=0, le=4095), _schema(0, 4095)]
Source = Annotated[int, _V, Field(ge=0, le=63), _schema(0, 63)]
Level = Annotated[int, _V, Field(ge=0, le=1), _schema(0, 1)]
Budget = Annotated[int, _V, Field(ge=1, le=10_000_000), _schema(1, 10_000_000)]
Micros = Annotated[int, _V, Field(ge=0, le=10**12), _schema(0, 10**12)]
PinKey = Annotated[int, _K, Field(ge=0, le=23), _KEY_SCHEMA]
VectorKey = Annotated[int, _K, Field(ge=0, le=0xFF), _KEY_SCHEMA]
VcpuKey = Annotated[int, _K, Field(ge=0, le=4095), _KEY_SCHEMA]
GsiKey = Annotated[int, _K, Field(ge=0, le=4095), _KEY_SCHEMA]
Count = Annotated[StrictInt, Field(ge=0)]
RawMode = Annotated[StrictInt, Field(ge=0, le=7)]
DeliveryModeName = Literal["fixed", "lowest", "smi", "nmi", "init", "extint"]
Order = Literal["low-first", "high-first"]
FINDING_KINDS = ("remote-irr-stuck", "eoi-will-be-lost", "eoi-not-forwarded",
                 "handled-vector-stale")


def _absent(description: str | None = None, alias: str | None = None) -> Any:
    """An optional key that may not be null: omitted, the engine uses its default (the
    schema shows no default when it depends on the context, e.g. a handler's vCPU)."""
    return Field(None, description=description, alias=alias)


class DocModel(BaseModel):
    """Strict (no coercion) and closed (unknown keys refused, catching typos)."""

    model_config = ConfigDict(strict=True, extra="forbid")


def _conflict(message: str, field: str) -> PydanticCustomError:
    """A model-level error reported at `field` (the problem handler reads ctx['field'])."""
    return PydanticCustomError("field_conflict", message, {"field": field})


def _one_of(*groups: tuple[str, ...]) -> dict[str, Any]:
    """JSON Schema for "exactly one of these keys (or key groups) is present"."""
    return {"oneOf": [{"required": list(g)} for g in groups]}


# ---------------------------------------------------------------- pieces of steps


class ScenarioRteFields(DocModel):
    """Redirection-table entry fields; omitted ones keep their value (patch_rte) or are zero
    (write_rte: fixed, physical, edge, active-high, unmasked, dest 0)."""

    vector: Vector = _absent()
    delivery_mode: DeliveryModeName | RawMode = _absent(
        "fixed, lowest, smi, nmi, init, extint, or the raw 3-bit value.")
    dest_mode: Literal["physical", "logical"] = _absent()
    dest: Vector = _absent("8-bit destination (RTE bits 63:56).")
    extended_dest: Vector = _absent("RTE bits 55:48 (QEMU's extended destination id).")
    trigger: Literal["edge", "level"] = _absent()
    polarity: Literal["high", "low"] = _absent()
    masked: StrictBool = _absent()
    remote_irr: StrictBool = _absent(
        "Read-only bit; a guest may write it, the IOAPIC decides whether it sticks.")
    delivery_status: StrictBool = _absent("Read-only bit, as remote_irr.")


class ScenarioRteEntry(ScenarioRteFields):
    """A whole entry: `raw` alone, or fields."""

    model_config = ConfigDict(json_schema_extra={
        "if": {"required": ["raw"]}, "then": {"maxProperties": 1}})

    raw: U64 = _absent("The 64-bit entry.")

    @model_validator(mode="after")
    def _raw_alone(self) -> ScenarioRteEntry:
        if self.raw is not None and len(self.model_fields_set) > 1:
            raise _conflict("give either raw or the entry's fields, not both", "raw")
        return self


class ScenarioDecodedMsi(DocModel):
    """An MSI by meaning, encoded as the x86 MSI format (irq_to_msi)."""

    dest: U32 = Field(
        0, description="APIC id / logical destination (above 255 needs x2apic_format).")
    dest_mode: Literal["physical", "logical"] = "physical"
    vector: Vector
    trigger: Literal["edge", "level"] = "edge"
    delivery_mode: DeliveryModeName | RawMode = Field(
        "fixed", description="A name or the raw 3-bit value.")
    redirection_hint: StrictBool = False


class ScenarioRouteIrqchip(DocModel):
    chip: Literal["pic-master", "pic-slave", "ioapic"] = "ioapic"
    pin: Vector


class ScenarioRouteMsi(DocModel):
    address_lo: U32 = 0
    address_hi: U32 = 0
    data: U32 = 0


class ScenarioRoute(DocModel):
    """One kvm_irq_routing_entry: exactly one of `irqchip`, `msi`, `decoded`."""

    model_config = ConfigDict(json_schema_extra=_one_of(("irqchip",), ("msi",), ("decoded",)))

    gsi: Gsi
    irqchip: ScenarioRouteIrqchip = _absent()
    msi: ScenarioRouteMsi = _absent()
    decoded: ScenarioDecodedMsi = _absent()

    @model_validator(mode="after")
    def _one(self) -> ScenarioRoute:
        given = [k for k in ("irqchip", "msi", "decoded") if k in self.model_fields_set]
        if len(given) != 1:
            raise _conflict("give exactly one of irqchip, msi and decoded",
                            given[1] if given else "msi")
        return self


# ---------------------------------------------------------------- expectations

_VCPU_BITMAP = "Vectors (ascending or not; compared as a sorted list)."


class PinExpectation(DocModel):
    """Fields of GET …/ioapic/pins/{pin}; each given one is compared with the pin's view."""

    pin: StrictInt = _absent()
    vector: Vector = _absent()
    delivery_mode: str = _absent("The mode's name (fixed, lowest, ...).")
    dest_mode: Literal["physical", "logical"] = _absent()
    dest: Vector = _absent()
    extended_dest: StrictInt = _absent()
    trigger: Literal["edge", "level"] = _absent()
    polarity: Literal["high", "low"] = _absent()
    masked: StrictBool = _absent()
    remote_irr: StrictBool = _absent()
    delivery_status: StrictBool = _absent()
    line: StrictInt = _absent("Input level (OR of all IRQ sources).")
    raw: Annotated[str, Field(pattern=r"^0x[0-9a-f]{16}$")] = _absent(
        "The 64-bit entry as 0x + 16 lower-case hex digits.")
    sources: list[StrictInt] = _absent("IRQ source ids holding the line high.")
    irr: StrictBool = _absent("The IOAPIC's internal IRR bit of this pin.")
    eoi_count: StrictInt = _absent("Successive re-deliveries at EOI.")


class VcpuExpectation(DocModel):
    """Fields of GET …/vcpus/{n} (bitmaps as vector lists) and the scenario's interrupt flag
    `if`; each given one is compared with the vCPU's view."""

    irr: list[Vector] = _absent(_VCPU_BITMAP)
    isr: list[Vector] = _absent(_VCPU_BITMAP)
    tmr: list[Vector] = _absent(_VCPU_BITMAP)
    pir: list[Vector] = _absent(_VCPU_BITMAP)
    handled_vectors: list[Vector] = _absent(
        "ioapic_handled_vectors (the EOI-exit bitmap KVM computed).")
    eoi_exit_bitmap: list[Vector] = _absent("The copy loaded into the VMCS (APICv).")
    pending_requests: list[str] = _absent(
        "KVM requests pending, e.g. SCAN_IOAPIC, IOAPIC_EOI_EXIT, EVENT (compared as a sorted "
        "list).")
    if_: StrictBool = _absent("The vCPU's interrupt flag.", alias="if")
    vcpu: StrictInt = _absent()
    apic_id: StrictInt = _absent()
    x2apic: StrictBool = _absent()
    enabled: StrictBool = _absent()
    sw_enabled: StrictBool = _absent()
    ldr: StrictInt = _absent()
    dfr: StrictInt = _absent()
    tpr: StrictInt = _absent()
    ppr: StrictInt = _absent()
    svr: StrictInt = _absent()
    lvr: StrictInt = _absent()
    pending_ioapic_eoi: StrictInt = _absent()
    highest_stale_pending_ioapic_eoi: StrictInt = _absent()
    highest_isr_cache: StrictInt = _absent()
    pv_eoi_enabled: StrictBool = _absent()
    pv_eoi: Literal["off", "armed", "guest-eoi-pending-sync"] = _absent(
        "PV EOI state: armed (the guest's flag is set), guest-eoi-pending-sync (the guest "
        "EOIed by clearing it; KVM retires the vector at the next exit).")
    in_guest: StrictBool = _absent()
    arb_prio: StrictInt = _absent()
    nmi_count: StrictInt = _absent()
    smi_count: StrictInt = _absent()
    init_count: StrictInt = _absent()


class EventPattern(DocModel):
    """Matches the first logged event with this kind and actor whose fields include these."""

    kind: str = _absent("Event kind, e.g. exit-ioapic-eoi.")
    actor: str = _absent("device, kvm, vmm, ioapic, clock or vcpuN.")
    fields: dict[str, Any] = _absent("A subset of the event's fields.")


class IoapicExpectation(DocModel):
    id: U64 = _absent()
    version: U64 = _absent()
    ioregsel: U64 = _absent()
    irr: U64 = _absent("The internal IRR as a bitmap.")
    flavour: Literal["kvm", "qemu"] = _absent("kvm (in-kernel) or qemu (split).")


class CountAtLeast(DocModel):
    """A lower bound on a counter, for guest checks such as `report(counter, ...)`."""

    at_least: U64 = Field(description="The counter must be at least this.")


class Expectations(DocModel):
    """What must hold at this point. Each check is reported with path, expected, actual."""

    remote_irr: list[Pin] = _absent("Exactly the pins with Remote IRR set.")
    pins: dict[PinKey, PinExpectation] = _absent("Pin -> fields.")
    vcpus: dict[VcpuKey, VcpuExpectation] = _absent("vCPU index -> fields.")
    counters: dict[str, Count | CountAtLeast] = _absent(
        "Counter -> value (`count` steps; `unhandled:0x..` counts vectors taken without a "
        "handler), or {at_least: n}. An absent counter is 0.")
    events: list[EventPattern] = _absent("Each pattern matches some event.")
    no_events: list[EventPattern] = _absent("No event matches any pattern.")
    event_counts: dict[str, Count] = _absent("Event kind -> how many were logged so far.")
    findings: list[str] = _absent(
        "Exactly the kinds of invariant findings so far (any order): "
        + ", ".join(FINDING_KINDS) + ".")
    saved: dict[str, Any] = _absent(
        "Name -> value kept by `save` (\"0x…\" strings are read as integers).")
    ioapic: IoapicExpectation = _absent("IOAPIC registers.")
    resamplers: dict[GsiKey, Count | None] = _absent(
        "GSI -> times its resamplefd was signalled (null: no resampler).")


# ---------------------------------------------------------------- steps

_VCPU_DESC = ("The vCPU whose guest code does this (default: the vCPU running the handler, "
              "else 0).")


class _Labelled(DocModel):
    label: str | None = _absent(
        "Names the step in the results; an expect step's label is what matrix[].expect uses.")


class _Step(_Labelled):
    save: str | None = _absent(
        "Keep this step's result under a name (an MMIO read keeps its value) for `saved` "
        "expectations.")


class _OnVcpu(_Step):
    vcpu: VcpuIdx = _absent(_VCPU_DESC)


class StepLine(_Step):
    """A device drives IOAPIC input `pin`: `level` 0/1, or `action`."""

    model_config = ConfigDict(json_schema_extra=_one_of(("level",), ("action",)))

    op: Literal["line"]
    pin: Pin
    level: Level = _absent()
    action: Literal["assert", "deassert", "pulse"] = _absent()
    source: Source = Field(0, description="IRQ source id (in-kernel: levels of all sources "
                                          "of a pin are ORed).")

    @model_validator(mode="after")
    def _one(self) -> StepLine:
        if ("level" in self.model_fields_set) == ("action" in self.model_fields_set):
            raise _conflict("give exactly one of level and action", "level")
        return self


class StepIrq(_Step):
    """KVM_IRQ_LINE on a GSI."""

    op: Literal["irq"]
    gsi: Gsi
    level: Level
    source: Source = 0


class StepMsi(_Step):
    """KVM_SIGNAL_MSI: `data` (with address_lo/address_hi), or `decoded`."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["data"]},
        {"required": ["decoded"],
         "not": {"anyOf": [{"required": ["address_lo"]}, {"required": ["address_hi"]}]}},
    ]})

    op: Literal["msi"]
    address_lo: U64 = 0xFEE00000
    address_hi: U64 = 0
    data: U64 = _absent()
    decoded: ScenarioDecodedMsi = _absent()

    @model_validator(mode="after")
    def _one(self) -> StepMsi:
        fields = self.model_fields_set
        if "decoded" in fields:
            if fields & {"data", "address_lo", "address_hi"}:
                raise _conflict("give address_lo/data or decoded, not both", "decoded")
        elif "data" not in fields:
            raise _conflict("give data (and address_lo), or decoded", "data")
        return self


class StepRoutes(_Step):
    """KVM_SET_GSI_ROUTING: the whole new table."""

    op: Literal["routes"]
    entries: list[ScenarioRoute]


class StepWriteRte(_OnVcpu):
    """The guest writes a whole redirection-table entry (IOREGSEL/IOWIN, a dword at a time)."""

    op: Literal["write_rte"]
    pin: Pin
    entry: U64 | ScenarioRteEntry = Field(
        description="The 64-bit entry, or {raw} or fields.")
    order: Order = Field("low-first", description="Dword order of the writes (high-first is "
                                                  "what Linux's ioapic_write_entry does).")


class StepPatchRte(_OnVcpu):
    """The guest changes some fields; only the dwords holding them are written."""

    op: Literal["patch_rte"]
    pin: Pin
    fields: ScenarioRteFields
    order: Order = "low-first"


class StepMmio(_OnVcpu):
    """A raw guest access to the IOAPIC page."""

    op: Literal["mmio"]
    access: Literal["read", "write"] = "read"
    offset: Vector = Field(description="0x00 IOREGSEL, 0x10 IOWIN, 0x40 EOI (QEMU, version "
                                       "0x20).")
    size: T.AccessSize = 4
    value: U64 = Field(0, description="Value written (ignored for reads).")


LAPIC_REGS = ("apic_base", "id", "dfr", "ldr", "tpr", "svr", "eoi")


class StepLapic(_OnVcpu):
    """Guest writes to LAPIC registers, in the order given."""

    model_config = ConfigDict(json_schema_extra={
        "anyOf": [{"required": [r]} for r in LAPIC_REGS]})

    op: Literal["lapic"]
    apic_base: U64 = _absent("IA32_APIC_BASE (bit 11 enable, bit 10 x2APIC).")
    id: U64 = _absent("APIC ID register (xAPIC only).")
    dfr: U64 = _absent("Destination format (xAPIC only).")
    ldr: U64 = _absent("Logical destination (xAPIC only).")
    tpr: U64 = _absent("Task priority.")
    svr: U64 = _absent("Spurious vector (bit 8 enable, bit 12 directed EOI).")
    eoi: U64 = _absent("A write to the EOI register (the value is ignored).")

    @model_validator(mode="after")
    def _some(self) -> StepLapic:
        if not self.model_fields_set & set(LAPIC_REGS):
            raise _conflict("name at least one register", "op")
        return self


class StepEnter(_OnVcpu):
    """KVM_RUN: the vCPU consumes its pending requests (and takes any EOI exit)."""

    op: Literal["enter"]
    until_exit: StrictBool = Field(False, description="Stop where KVM returns to userspace "
                                   "with KVM_EXIT_IOAPIC_EOI, leaving the exit for a "
                                   "vmm_eoi_exit step (other steps may run in between).")


class StepVmmEoiExit(_OnVcpu):
    """The VMM handles the KVM_EXIT_IOAPIC_EOI the vCPU's last `enter` (until_exit) returned:
    QEMU's ioapic_eoi_broadcast of that vector (split irqchip only)."""

    op: Literal["vmm_eoi_exit"]


class StepExit(_OnVcpu):
    """The vCPU leaves guest mode."""

    op: Literal["exit"]


class StepAck(_OnVcpu):
    """The vCPU acknowledges its highest deliverable interrupt (IRR -> ISR), no handler."""

    op: Literal["ack"]


class StepTake(_OnVcpu):
    """If its interrupt flag is set, the vCPU takes the highest deliverable interrupt and runs
    its handler with interrupts disabled (a vector without a handler is counted and EOIed)."""

    op: Literal["take"]


class StepEoi(_OnVcpu):
    """The vCPU writes its LAPIC EOI register."""

    op: Literal["eoi"]
    run_exits: StrictBool = Field(False, description="Re-enter at once, so a "
                                                     "KVM_EXIT_IOAPIC_EOI is handled now.")


class StepPvEoi(_OnVcpu):
    """The guest writes MSR_KVM_PV_EOI_EN: enables (or disables) PV EOI with its flag word at
    `address`. While enabled, KVM sets the flag on an entry where no vector waits in IRR and
    the in-service vector is not in ioapic_handled_vectors (never with APICv or AVIC); the
    guest's `eoi` then clears the flag instead of writing the EOI register, and KVM retires
    the vector at the vCPU's next exit."""

    op: Literal["pv_eoi"]
    enabled: StrictBool = Field(True, description="MSR bit 0 (KVM_MSR_ENABLED).")
    address: U64 = Field(0x1000, description="Guest-physical address of the flag word "
                                                 "(4-byte aligned, else #GP).")


class StepResampler(_Step):
    """Register an irqfd resampler (KVM_IRQFD_FLAG_RESAMPLE) on a GSI."""

    op: Literal["resampler"]
    gsi: Gsi


class StepIrqfd(_Step):
    """Signal the irqfd of a GSI."""

    op: Literal["irqfd"]
    gsi: Gsi


class StepAdvance(_Step):
    """Move logical time forward (the EOI storm throttle)."""

    op: Literal["advance"]
    us: Micros = Field(description="Microseconds.")


class StepSti(_OnVcpu):
    """Set the interrupt flag; in a handler, pending interrupts are taken at once (nesting)."""

    op: Literal["sti"]


class StepCli(_OnVcpu):
    """Clear the interrupt flag."""

    op: Literal["cli"]


class StepCount(_Step):
    """Add one to a counter (for `counters` expectations and `when`)."""

    op: Literal["count"]
    name: str


class StepExpect(_Labelled, Expectations):
    """Check the state; a failed check is a result, not an error. matrix[].expect adds
    assertions per variant under this step's label."""

    op: Literal["expect"]


class StepSettle(_Step):
    """Every vCPU with interrupts enabled enters and takes deliverable interrupts until
    nothing changes (idle time runs to a throttled re-injection), within a budget; running out
    is a result (an interrupt storm). Not allowed in handlers."""

    op: Literal["settle"]
    budget: Budget = _absent(
        "Most steps (entries, interrupts taken, time jumps); default the document's "
        "settle_budget (over HTTP at most IRQLAB_MAX_SETTLE_BUDGET).")


_WHEN_ONE = _one_of(("equals",), ("at_least",))


class _When(_Step):
    """The fields and rule both `when` steps share; only what `steps` may hold differs."""

    model_config = ConfigDict(json_schema_extra=_WHEN_ONE)

    op: Literal["when"]
    counter: str
    equals: U64 = _absent()
    at_least: U64 = _absent()

    @model_validator(mode="after")
    def _one(self) -> Self:
        if ("equals" in self.model_fields_set) == ("at_least" in self.model_fields_set):
            raise _conflict("give exactly one of equals and at_least", "equals")
        return self


class StepWhen(_When):
    """Run `steps` only if counter `counter` equals `equals` (or is at least `at_least`)."""

    steps: list[Step]


class StepHandlerWhen(_When):
    """`when` inside a handler: its steps are handler steps (no settle)."""

    steps: list[HandlerStep]


_COMMON_STEPS = (StepLine, StepIrq, StepMsi, StepRoutes, StepWriteRte, StepPatchRte, StepMmio,
                 StepLapic, StepEnter, StepVmmEoiExit, StepExit, StepAck, StepTake, StepEoi,
                 StepPvEoi, StepResampler, StepIrqfd, StepAdvance, StepSti, StepCli, StepCount,
                 StepExpect)
STEP_MODELS = (*_COMMON_STEPS, StepSettle, StepWhen)
HANDLER_STEP_MODELS = (*_COMMON_STEPS, StepHandlerWhen)

Step = Annotated[
    StepLine | StepIrq | StepMsi | StepRoutes | StepWriteRte | StepPatchRte | StepMmio
    | StepLapic | StepEnter | StepVmmEoiExit | StepExit | StepAck | StepTake | StepEoi
    | StepPvEoi | StepResampler | StepIrqfd | StepAdvance | StepSti | StepCli | StepCount
    | StepExpect
    | StepSettle | StepWhen,
    Field(discriminator="op"),
]
HandlerStep = Annotated[
    StepLine | StepIrq | StepMsi | StepRoutes | StepWriteRte | StepPatchRte | StepMmio
    | StepLapic | StepEnter | StepVmmEoiExit | StepExit | StepAck | StepTake | StepEoi
    | StepPvEoi | StepResampler | StepIrqfd | StepAdvance | StepSti | StepCli | StepCount
    | StepExpect
    | StepHandlerWhen,
    Field(discriminator="op"),
]
StepWhen.model_rebuild()
StepHandlerWhen.model_rebuild()


# ---------------------------------------------------------------- the document


def _vm_desc(name: str, default: str) -> str:
    return f"{M.VmCreate.model_fields[name].description} Default {default}."


class ScenarioVm(DocModel):
    """The VM of POST /v1/vms (without `id`). In a matrix variant, omitted fields are the
    document's; in the document, the defaults below."""

    vcpus: Annotated[StrictInt, Field(ge=1, le=4096)] = _absent(
        "Number of vCPUs (over HTTP at most IRQLAB_MAX_VCPUS; more than 255 need x2apic). "
        "Default 1.")
    irqchip: Literal["kernel", "split"] = _absent(_vm_desc("irqchip", "kernel"))
    profile: T.ProfileName = _absent(_vm_desc("profile", "linux-latest"))
    overrides: dict[T.FlagName, StrictBool] = _absent(_vm_desc("overrides", "{}"))
    apicv: M.ApicvMode = _absent(_vm_desc("apicv", "false"))
    nr_reserved_ioapic_pins: Annotated[StrictInt, Field(ge=0, le=4096)] = _absent(
        _vm_desc("nr_reserved_ioapic_pins", "24"))
    ioapic_version: Literal[0x11, 0x20] | None = _absent(
        "IOAPIC version register: 0x11, or 0x20 (QEMU's, with the EOI register; split only). "
        "Default (or null) 0x11 in-kernel, 0x20 split.")
    x2apic: StrictBool = _absent(_vm_desc("x2apic", "false"))
    x2apic_cpuid: StrictBool = _absent(_vm_desc("x2apic_cpuid", "true"))
    x2apic_format: StrictBool = _absent(_vm_desc("x2apic_format", "false"))
    broadcast_quirk_disabled: StrictBool = _absent(_vm_desc("broadcast_quirk_disabled", "false"))
    vector_hashing: StrictBool = _absent(_vm_desc("vector_hashing", "true"))
    event_log: StrictBool = _absent(_vm_desc("event_log", "true"))


class MatrixVariant(DocModel):
    """One run of the steps: the document's vm with `vm` over it, and extra assertions."""

    name: str | None = _absent(
        "Shown in the results (default: the vm overrides, e.g. profile=linux-6.1).")
    vm: ScenarioVm | None = None
    expect: dict[str, Expectations] | None = _absent(
        "Expect step label -> assertions added (deep-merged) for this variant.")


class ScenarioDocument(DocModel):
    """An irqlab scenario: which VM to build, what the guest's interrupt handlers do, what
    happens step by step and what must hold, under each variant of a profile/irqchip matrix.
    Run deterministically by app.engine.scenario.run_scenario (POST /v1/scenarios/run)."""

    model_config = ConfigDict(title="irqlab scenario document")

    name: str | None = _absent("The scenario's name (library names are [a-z0-9-]+).")
    description: str | None = None
    commits: list[str] | None = _absent("KVM/QEMU commits it is about.")
    notes: str | None = _absent("Free text (e.g. where a re-created test and the model disagree).")
    vm: ScenarioVm | None = None
    handlers: dict[VectorKey, list[HandlerStep]] | None = _absent(
        "Vector -> the steps a vCPU runs when it takes that vector (take/settle); no settle "
        "inside.")
    steps: list[Step]
    matrix: list[MatrixVariant] | None = _absent(
        "Run the steps once per variant (none: one run named default).")
    settle_budget: Budget = _absent(
        "Default budget of settle steps (engine default 10000; over HTTP at most "
        "IRQLAB_MAX_SETTLE_BUDGET).")


# ---------------------------------------------------------------- JSON Schema


def _tidy(node: Any) -> None:
    """Two touches to pydantic's output: an optional field that may not be null gets no
    `"default": null`, and an object whose keys are numbers refuses other keys."""
    if isinstance(node, dict):
        for prop in (node.get("properties") or {}).values():
            if isinstance(prop, dict) and "default" in prop and prop["default"] is None \
                    and not _nullable(prop):
                del prop["default"]
        if "patternProperties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _tidy(value)
    elif isinstance(node, list):
        for item in node:
            _tidy(item)


def _nullable(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "null" or any(
        isinstance(s, dict) and s.get("type") == "null" for s in schema.get("anyOf", ()))


SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def document_json_schema() -> dict[str, Any]:
    """The JSON Schema of a scenario document (openapi/scenario.schema.json)."""
    schema = ScenarioDocument.model_json_schema(mode="validation")
    _tidy(schema)
    return {"$schema": SCHEMA_DIALECT, **schema}


def openapi_components() -> dict[str, dict[str, Any]]:
    """The document's schemas for OpenAPI components/schemas, ScenarioDocument among them."""
    _, top = models_json_schema([(ScenarioDocument, "validation")],
                                ref_template="#/components/schemas/{model}")
    defs: dict[str, dict[str, Any]] = copy.deepcopy(top.get("$defs", {}))
    _tidy(defs)
    return defs


# ---------------------------------------------------------------- results


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Check(_Open):
    path: str = Field(description="What was compared, e.g. vcpus.0.handled_vectors.")
    expected: Any
    actual: Any
    ok: bool


class ExpectResult(_Open):
    label: str | None
    passed: bool
    checks: list[Check]


class HandlerExpectResult(ExpectResult):
    step: int = Field(description="The top-level step during which the handler ran.")
    where: str = Field(description="The expect step's path, e.g. handlers.0x40[2].")


class StepError(_Open):
    kind: str = Field(description="The engine's error kind (invalid: KVM's -EINVAL, #GP).")
    detail: str
    field: str | None


class Finding(_Open):
    kind: str = Field(description=", ".join(FINDING_KINDS) + ".")
    detail: str
    step: int = Field(description="The step after which it was found.")


class VcpuStepState(_Open):
    vcpu: int
    irr: list[int] = Field(description="IRR (with PIR) vectors.")
    isr: list[int]
    handled_vectors: list[int]
    pending_requests: list[str]


class StepState(_Open):
    remote_irr: list[int] = Field(description="Pins with Remote IRR set.")
    vcpus: list[VcpuStepState]


class StepOutcome(_Open):
    index: int
    op: str | None
    label: str | None = _absent("Present when the step has one.")
    ok: bool = Field(description="false: the modelled kernel refused the operation (`error`); "
                                 "a result, not an error.")
    result: Any = _absent(
        "The operation's result (absent when refused); for expect, label/passed/checks.")
    error: StepError | None = _absent("Present when refused.")
    passed: bool | None = _absent("expect steps: all checks held.")
    findings: list[Finding] = Field(description="Invariant findings new after this step.")
    last_seq: int | None = _absent("observe=true: the log's last seq after this step (its "
                                   "events are those after the previous step's last_seq).")
    state: StepState | None = _absent("observe=true: Remote IRR and each vCPU's IRR, ISR, "
                                      "handled vectors and pending requests after the step.")


class VariantResult(_Open):
    name: str
    vm: dict[str, Any] = Field(description="The VM's configuration and resolved flags.")
    passed: bool = Field(description="Every expect step (and expect in handlers) passed.")
    handler_expects: list[HandlerExpectResult]
    steps: list[StepOutcome]
    findings: list[Finding]
    counters: dict[str, int]
    events: list[M.Event] = Field(description="The whole causal event log of the run.")
    final_state: dict[str, Any] = Field(description="GET …/state of the VM at the end.")


class ScenarioResult(_Open):
    name: str | None
    description: str | None
    commits: list[Any]
    passed: bool = Field(description="Every variant passed (expectation failures are "
                                     "results: still HTTP 200).")
    variants: list[VariantResult]


class ScenarioInfo(_Open):
    name: str
    description: str
    commits: list[str]
    variants: list[str] = Field(description="The variants' names, in run order.")


class ScenarioList(_Open):
    scenarios: list[ScenarioInfo]
