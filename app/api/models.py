"""Pydantic v2 models of the REST API.

Request models are strict (no coercion, unknown fields refused); integers use the annotated
types of `types.py` (JSON integer or "0x…" string, never a boolean). Response models describe
what the engine returns and allow extra fields, so the schema documents the stable part while
nothing the engine reports is dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from . import types as T

# ---------------------------------------------------------------- requests


class StrictModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


def _apicv_value(value: Any) -> Any:
    """Exactly a JSON boolean, "apicv" or "avic" (checked before the union, so that a bad value
    is reported on `apicv` itself, not on one of the union's members)."""
    if type(value) is bool or (value in ("apicv", "avic") and isinstance(value, str)):
        return value
    raise PydanticCustomError("apicv", 'apicv must be false, true (Intel APICv), "apicv" or '
                              '"avic" (AMD AVIC)')


ApicvMode = Annotated[bool | Literal["apicv", "avic"], BeforeValidator(_apicv_value)]


def _conflict(message: str, field: str) -> PydanticCustomError:
    """A model-level error reported at `field` (the problem handler reads ctx['field'])."""
    return PydanticCustomError("field_conflict", message, {"field": field})


class VmCreate(StrictModel):
    """KVM_CREATE_VM + KVM_CREATE_IRQCHIP or KVM_CAP_SPLIT_IRQCHIP + KVM_CREATE_VCPU."""

    id: T.VmId | None = Field(
        None, description="Client-chosen id matching [a-z0-9][a-z0-9-]{0,62}; generated if "
                          "absent.")
    vcpus: T.VcpuCount = Field(1, description="Number of vCPUs (KVM_MAX_VCPUS is 4096; the "
                                              "service limit is IRQLAB_MAX_VCPUS).")
    irqchip: Literal["kernel", "split"] = Field(
        "kernel", description="`kernel`: KVM_CREATE_IRQCHIP (in-kernel IOAPIC); `split`: "
                              "KVM_CAP_SPLIT_IRQCHIP with QEMU's userspace IOAPIC.")
    profile: T.ProfileName = Field("linux-latest", description="Behaviour preset "
                                                               "(GET /v1/profiles).")
    overrides: dict[T.FlagName, bool] = Field(
        default_factory=dict, description="Behaviour flag -> value, applied over the preset.")
    apicv: ApicvMode = Field(
        False, description="APIC virtualization: `true` or `\"apicv\"` is Intel APICv "
                           "(posted interrupts, the VMX EOI-exit bitmap); `\"avic\"` is AMD "
                           "AVIC (no PIR, no EOI-exit bitmap: level EOIs trap, edge EOIs "
                           "never exit; active with the in-kernel irqchip from v5.6).")
    nr_reserved_ioapic_pins: T.U32 = Field(
        24, description="KVM_CAP_SPLIT_IRQCHIP's args[0]: GSIs scanned for the EOI-exit "
                        "bitmap (split only; must stay 24 in-kernel).")
    ioapic_version: T.U8 | None = Field(
        None, description="IOAPIC version register; default 0x11 in-kernel, 0x20 (QEMU, with "
                          "the EOI register) in split mode.")
    x2apic: bool = Field(False, description="Every vCPU starts in x2APIC mode.")
    x2apic_cpuid: bool = Field(True, description="Guest CPUID advertises x2APIC (decides "
                                                 "whether LVR offers directed EOI).")
    x2apic_format: bool = Field(False, description="KVM_X2APIC_API_USE_32BIT_IDS.")
    broadcast_quirk_disabled: bool = Field(
        False, description="KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK.")
    vector_hashing: bool = Field(True, description="kvm.vector_hashing module parameter.")
    event_log: bool = Field(True, description="Record the causal event log.")
    backend: Literal["model", "kvm"] = Field(
        "model", description="`model` (default): irqlab's deterministic model of KVM/QEMU. "
                             "`kvm`: a real VM on this host's /dev/kvm, driven by irqlab's own "
                             "guest; state is read from the kernel (KVM_GET_LAPIC, "
                             "KVM_GET_IRQCHIP), what it does not expose is null. With "
                             "`irqchip: split` irqlab is the VMM (the engine's QEMU IOAPIC on "
                             "the real kernel); `ioapic_version` (0x11/0x20) and QEMU's flags "
                             "in `overrides` configure it. `x2apic` (irqlab's x2APIC guest; "
                             "needs `x2apic_cpuid`), `x2apic_cpuid` (KVM_SET_CPUID2), "
                             "`x2apic_format` and `broadcast_quirk_disabled` "
                             "(KVM_CAP_X2APIC_API) apply to the real VM. The other model-only "
                             "fields (profile, KVM flags, apicv, vector_hashing, ...) must "
                             "keep their defaults (409 unsupported otherwise). Limits: "
                             "IRQLAB_MAX_KVM_VMS, "
                             "IRQLAB_MAX_KVM_VCPUS (409 limit-reached); no usable /dev/kvm is "
                             "409 unsupported with the reason in `detail`.",
        examples=["kvm"])


RTE_FIELDS = ("vector", "delivery_mode", "dest_mode", "dest", "trigger", "polarity", "masked",
              "extended_dest", "remote_irr", "delivery_status")

Order = Literal["low-first", "high-first"]
_ORDER_DESC = ("Dword order of the guest's writes: `low-first` (default) or `high-first` "
               "(what Linux's ioapic_write_entry does).")


class RteFields(StrictModel):
    vector: T.Vector | None = None
    delivery_mode: T.DeliveryMode | None = None
    dest_mode: Literal["physical", "logical"] | None = None
    dest: T.U8 | None = Field(None, description="8-bit destination (RTE bits 63:56).")
    trigger: Literal["edge", "level"] | None = None
    polarity: Literal["high", "low"] | None = None
    masked: bool | None = None
    extended_dest: T.U8 | None = Field(None, description="RTE bits 55:48 (QEMU's extended "
                                                         "destination id).")
    remote_irr: bool | None = Field(None, description="Read-only bit; a guest may write it, "
                                                      "the IOAPIC decides whether it sticks.")
    delivery_status: bool | None = Field(None, description="Read-only bit, as remote_irr.")

    def changes(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in RTE_FIELDS if getattr(self, k) is not None}


class PinPut(RteFields):
    """A whole redirection-table entry: `raw`, or fields (omitted ones are zero: fixed,
    physical, edge, active-high, unmasked, dest 0)."""

    raw: T.U64 | None = Field(None, description="The 64-bit entry.")
    vcpu: T.VcpuIndex = Field(0, description="The vCPU whose guest code does the writes.")
    order: Order = Field("low-first", description=_ORDER_DESC)

    @model_validator(mode="after")
    def _raw_or_fields(self) -> PinPut:
        if self.raw is not None and self.changes():
            raise _conflict("give either raw or the entry's fields, not both", "raw")
        if self.raw is None and self.vector is None:
            raise _conflict("give raw, or the entry's fields (vector is required)", "vector")
        return self


class PinPatch(RteFields):
    """Some fields of a redirection-table entry; only the dwords holding them are written."""

    vcpu: T.VcpuIndex = Field(0, description="The vCPU whose guest code does the writes.")
    order: Order = Field("low-first", description=_ORDER_DESC)

    @model_validator(mode="after")
    def _some(self) -> PinPatch:
        if not self.changes():
            raise _conflict("give at least one entry field", "body")
        return self


class LineRequest(StrictModel):
    level: T.U1 | None = Field(None, description="New input level, 0 or 1.")
    action: Literal["assert", "deassert", "pulse"] | None = Field(
        None, description="Instead of level: assert (1), deassert (0) or pulse (1 then 0).")
    source: T.IrqSource = Field(0, description="IRQ source id (the in-kernel IOAPIC ORs the "
                                               "levels of all sources of a pin).")

    @model_validator(mode="after")
    def _one(self) -> LineRequest:
        if (self.level is None) == (self.action is None):
            raise _conflict("give exactly one of level and action", "level")
        return self


class MmioRequest(StrictModel):
    vcpu: T.VcpuIndex = Field(0, description="The vCPU whose guest code does the access.")
    op: Literal["read", "write"]
    offset: T.IoapicOffset = Field(description="Offset in the IOAPIC page: 0x00 IOREGSEL, 0x10 "
                                               "IOWIN, 0x40 EOI (QEMU version 0x20).")
    size: T.AccessSize = Field(4, description="Access size in bytes: 1, 2, 4 or 8.")
    value: T.U64 = Field(0, description="Value written (ignored for reads).")

    @model_validator(mode="after")
    def _fits(self) -> MmioRequest:
        if self.value >= 1 << (8 * self.size):
            raise _conflict(f"value does not fit in {self.size} bytes", "value")
        return self


class IrqchipTarget(StrictModel):
    chip: Literal["pic-master", "pic-slave", "ioapic"]
    pin: T.U32


class MsiMessage(StrictModel):
    address_lo: T.U32
    address_hi: T.U32 = 0
    data: T.U32


class DecodedMsi(StrictModel):
    """An MSI by meaning; encoded to address/data as the x86 MSI format (irq_to_msi)."""

    dest: T.U32 = Field(description="APIC id / logical destination (above 255 needs "
                                    "x2apic_format).")
    dest_mode: Literal["physical", "logical"] = "physical"
    vector: T.Vector
    trigger: Literal["edge", "level"] = "edge"
    delivery_mode: T.DeliveryMode = Field(0, description="Name or 3-bit value.")
    redirection_hint: bool = False


class RouteIn(StrictModel):
    """One kvm_irq_routing_entry: `irqchip`, `msi`, or `decoded`. `decoded` next to `msi` is
    ignored (it is what GET returns), so a GET body can be PUT back unchanged."""

    gsi: T.U32
    irqchip: IrqchipTarget | None = None
    msi: MsiMessage | None = None
    decoded: DecodedMsi | None = None

    @model_validator(mode="after")
    def _one(self) -> RouteIn:
        if self.irqchip is not None and (self.msi is not None or self.decoded is not None):
            raise _conflict("an entry is either an irqchip or an MSI route", "irqchip")
        if self.irqchip is None and self.msi is None and self.decoded is None:
            raise _conflict("give irqchip, msi or decoded", "msi")
        return self


class RoutesPut(StrictModel):
    entries: list[RouteIn] = Field(description="The whole new table (KVM_SET_GSI_ROUTING).")


class MsiRequest(StrictModel):
    """KVM_SIGNAL_MSI: address/data, or `decoded`."""

    address_lo: T.U32 | None = None
    address_hi: T.U32 = 0
    data: T.U32 | None = None
    decoded: DecodedMsi | None = None

    @model_validator(mode="after")
    def _one(self) -> MsiRequest:
        raw = self.address_lo is not None or self.data is not None
        if raw and self.decoded is not None:
            raise _conflict("give address_lo/data or decoded, not both", "decoded")
        if not raw and self.decoded is None:
            raise _conflict("give address_lo and data, or decoded", "address_lo")
        if raw and self.address_lo is None:
            raise _conflict("address_lo is required with data", "address_lo")
        if raw and self.data is None:
            raise _conflict("data is required with address_lo", "data")
        return self


class IrqLineRequest(StrictModel):
    gsi: T.U32
    level: T.U1
    source: T.IrqSource = 0


class ResamplerRequest(StrictModel):
    gsi: T.U32


class IrqchipRequest(StrictModel):
    mode: Literal["kernel", "split"] = Field(
        description="kernel: KVM_CREATE_IRQCHIP; split: KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP).")
    nr_reserved_ioapic_pins: T.U32 = Field(
        24, description="args[0] of KVM_CAP_SPLIT_IRQCHIP (split only); above 4096 KVM "
                        "answers -EINVAL before it looks at the existing irqchip.")


class ClockRequest(StrictModel):
    advance_us: T.UInt = Field(description="Logical microseconds to move forward.")


LAPIC_ORDER = ("apic_base", "id", "dfr", "ldr", "tpr", "svr")


class LapicPatch(StrictModel):
    """Guest writes to LAPIC registers, applied in the order apic_base, id, dfr, ldr, tpr,
    svr (the order a guest brings an APIC up in), all or nothing."""

    apic_base: T.U64 | None = Field(None, description="IA32_APIC_BASE MSR (bit 11 enable, "
                                                      "bit 10 x2APIC).")
    id: T.U32 | None = Field(None, description="APIC ID register (xAPIC only; bits 31:24).")
    dfr: T.U32 | None = Field(None, description="Destination format (xAPIC only).")
    ldr: T.U32 | None = Field(None, description="Logical destination (xAPIC only).")
    tpr: T.U32 | None = Field(None, description="Task priority.")
    svr: T.U32 | None = Field(None, description="Spurious vector register (bit 8 enable, "
                                                "bit 12 directed EOI).")

    def writes(self) -> list[tuple[str, int]]:
        return [(r, getattr(self, r)) for r in LAPIC_ORDER if getattr(self, r) is not None]

    @model_validator(mode="after")
    def _some(self) -> LapicPatch:
        if not self.writes():
            raise _conflict("give at least one register", "body")
        return self


class EoiRequest(StrictModel):
    run_exits: bool = Field(
        False, description="Re-enter the vCPU after the EOI so that a KVM_EXIT_IOAPIC_EOI "
                           "and the IOAPIC's reaction are part of this response. Default: "
                           "leave the exit pending until the vCPU's next entry.")


# ---------------------------------------------------------------- responses


class OpenModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class Event(OpenModel):
    seq: int
    actor: str = Field(description="device, kvm, vmm, ioapic, clock or vcpuN.")
    kind: str
    fields: dict[str, Any] = Field(description="Event details; bitmaps are integers.")
    cause: int | None = Field(description="seq of the event that led to this one.")


class OpResult(OpenModel):
    events: list[Event] = Field(default_factory=list,
                                description="Events this operation emitted (causal log).")
    events_truncated: bool = Field(False, description="More events than IRQLAB_MAX_EVENTS_"
                                                      "PAGE; page with GET …/events.")


class Bitmap(OpenModel):
    vectors: list[int] = Field(description="Set vectors, ascending.")
    hex: str = Field(description="The 256-bit bitmap as 0x + 64 hex digits.")


_KVM_NULL = " Null on the kvm backend (not exposed by the kernel)."


class VmSummary(OpenModel):
    id: str
    backend: str = Field(description="`model` or `kvm` (a real VM on this host's /dev/kvm).")
    vcpus: int
    irqchip: str
    profile: str = Field(description="Behaviour preset; `host` on the kvm backend (the "
                                     "host kernel's behaviour).")
    overrides: dict[str, bool]
    apicv: bool | str | None = Field(description="APIC virtualization (false, true / "
                                                 "\"apicv\", or \"avic\")." + _KVM_NULL)
    nr_reserved_ioapic_pins: int
    ioapic_version: int = Field(description="Effective IOAPIC version.")
    x2apic: bool
    x2apic_cpuid: bool
    x2apic_format: bool
    broadcast_quirk_disabled: bool
    vector_hashing: bool | None = Field(description="kvm.vector_hashing; on the kvm "
                                                    "backend read from /sys/module/kvm/"
                                                    "parameters, null if absent.")
    event_log: bool
    flags: dict[str, bool] | None = Field(description="Resolved behaviour flags; null on the "
                                                      "kvm backend (the host kernel decides).")
    time: int | None = Field(description="Logical time in microseconds; null on the kvm "
                                         "backend (no logical clock).")
    kvm_vendor_module: str | None = Field(None, description="kvm backend only: the host's "
                                                            "KVM vendor module (kvm_intel, "
                                                            "kvm_amd, kvm_pvm).")
    events: int = Field(description="seq of the last event.")


class VmList(OpenModel):
    vms: list[VmSummary]


class FlagDoc(OpenModel):
    name: str
    component: str
    commit: str | None
    title: str
    release: str | None
    description: str


class PresetDoc(OpenModel):
    name: str
    description: str
    flags: dict[str, bool]


class Profiles(OpenModel):
    default: str
    presets: list[PresetDoc]
    flags: list[FlagDoc]


class PinView(OpenModel):
    pin: int
    vector: int
    delivery_mode: str
    dest_mode: str
    dest: int
    trigger: str
    polarity: str
    masked: bool
    remote_irr: bool
    delivery_status: bool
    line: int = Field(description="Current input level (OR of all IRQ sources).")
    raw: str = Field(description="The 64-bit entry as hex.")
    extended_dest: int
    sources: list[int] = Field(description="IRQ source ids holding the line high.")
    irr: bool = Field(description="The IOAPIC's internal IRR bit of this pin.")
    eoi_count: int | None = Field(description="Successive re-deliveries at EOI (storm "
                                              "throttle)." + _KVM_NULL)


class PinWriteResult(PinView, OpResult):
    pass


class IoapicView(OpenModel):
    flavour: str = Field(description="kvm (in-kernel) or qemu (split).")
    id: int
    version: int
    ioregsel: int
    irr: int
    delayed_injection_at: int | None
    pins: list[PinView]


class LineStep(OpenModel):
    level: int
    status: int | str = Field(description="KVM_IRQ_LINE_STATUS value (in-kernel) or QEMU's "
                                          "ioapic_set_irq path (split). On the kvm backend "
                                          "in split mode `kvm_status` also gives what KVM "
                                          "answered to the VMM's KVM_IRQ_LINE_STATUS for "
                                          "the pin (null if it issued none).")
    delivered_to: list[int] | None = Field(description="vCPUs that accepted the interrupt."
                                                       + _KVM_NULL)
    outcome: str = Field(description="delivered, coalesced, blocked, dropped, lowered or "
                                     "no-target.")
    reason: str | None = Field(description="remote-irr, masked, edge-already-latched, "
                                           "no-target, or null.")


class LineResult(OpResult):
    pin: int
    source: int
    steps: list[LineStep]
    remote_irr: bool = Field(description="Remote IRR of the pin after the operation.")


class MmioResult(OpResult):
    vcpu: int
    op: str
    offset: int
    size: int
    value: int | None = Field(None, description="Value read (reads).")
    accepted: bool | None = Field(None, description="In-kernel: the access was decoded.")
    writes: list[dict[str, Any]] | None = Field(None, description="Split: what QEMU's IOAPIC "
                                                                  "did with each dword.")
    entry_exits: list[dict[str, Any]]


class IrqchipOut(OpenModel):
    chip: str
    pin: int


class MsiOut(OpenModel):
    address_lo: int
    address_hi: int
    data: int


class DecodedOut(OpenModel):
    dest: int
    dest_mode: str
    vector: int
    trigger: str
    delivery_mode: int
    redirection_hint: bool


class RouteOut(OpenModel):
    gsi: int
    irqchip: IrqchipOut | None = None
    msi: MsiOut | None = None
    decoded: DecodedOut | None = None


class RoutesView(OpenModel):
    entries: list[RouteOut]


class RoutesPutResult(RoutesView, OpResult):
    pass


class DeliveryResult(OpResult):
    status: int = Field(description="kvm_set_irq / kvm_set_msi: >0 delivered to that many "
                                    "LAPICs, 0 coalesced, -1 not delivered.")
    delivered_to: list[int] | None = Field(description="vCPUs that accepted." + _KVM_NULL)
    gsi: int | None = None


class IrqfdResult(OpResult):
    gsi: int
    status: int | None = Field(description="kvm_set_irq(KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID, gsi, "
                                           "1): >0 delivered to that many LAPICs, 0 coalesced, "
                                           "-1 not delivered. Null on the kvm backend: an "
                                           "eventfd write returns no status.")
    delivered_to: list[int] | None = Field(description="vCPUs that accepted." + _KVM_NULL)


class Resampler(OpenModel):
    gsi: int
    signalled: int = Field(description="Times the resamplefd was signalled.")


class ResamplerList(OpenModel):
    resamplers: list[Resampler]


class ResamplerCreated(Resampler, OpResult):
    pass


class ClockResult(OpResult):
    now: int
    ran_delayed_injection: bool


class VcpuView(OpenModel):
    """On the kvm backend the LAPIC registers come from KVM_GET_LAPIC; fields the kernel
    does not expose are null."""

    vcpu: int
    apic_id: int
    x2apic: bool | None = Field(description="x2APIC mode." + _KVM_NULL)
    enabled: bool | None = Field(description="APIC_BASE enable bit." + _KVM_NULL)
    sw_enabled: bool
    ldr: int
    dfr: int
    tpr: int
    ppr: int
    svr: int
    lvr: int
    irr: Bitmap
    isr: Bitmap
    tmr: Bitmap
    pir: Bitmap | None = Field(description="Posted-interrupt requests (APICv)." + _KVM_NULL)
    handled_vectors: Bitmap | None = Field(description="ioapic_handled_vectors (the EOI-exit "
                                                       "bitmap KVM computed)." + _KVM_NULL)
    eoi_exit_bitmap: Bitmap | None = Field(description="The copy loaded into the VMCS "
                                                       "(APICv)." + _KVM_NULL)
    pending_requests: list[str] | None = Field(description="Pending kvm_make_request bits."
                                                           + _KVM_NULL)
    pending_ioapic_eoi: int | None
    highest_stale_pending_ioapic_eoi: int | None
    highest_isr_cache: int | None = Field(
        None, description="highest_isr_cache: the vector the last software acknowledgement "
                          "put in ISR, -1 after an EOI (decides PV EOI)." + _KVM_NULL)
    pv_eoi_enabled: bool | None = Field(
        None, description="The guest enabled PV EOI (MSR_KVM_PV_EOI_EN bit 0)." + _KVM_NULL)
    pv_eoi: Literal["off", "armed", "guest-eoi-pending-sync"] | None = Field(
        None, description="PV EOI: `armed` (KVM set the guest's flag: its next EOI needs no "
                          "exit), `guest-eoi-pending-sync` (the guest cleared it; KVM retires "
                          "the vector at the vCPU's next exit)." + _KVM_NULL)
    in_guest: bool | None
    arb_prio: int | None
    nmi_count: int | None
    smi_count: int | None
    init_count: int | None
    dead: str | None = Field(None, description="kvm backend only: why the vCPU stopped "
                                               "(watchdog, guest fault), or null.")


class VcpuList(OpenModel):
    vcpus: list[VcpuView]


class LapicWrite(OpenModel):
    reg: str
    value: int = Field(description="Register value read back after the write.")
    entry_exits: list[dict[str, Any]]


class LapicPatchResult(OpResult):
    vcpu: int
    writes: list[LapicWrite]
    lapic: VcpuView


class EnterResult(OpResult):
    vcpu: int
    exits: list[dict[str, Any]] = Field(description="Userspace exits taken "
                                                    "(KVM_EXIT_IOAPIC_EOI and what the VMM "
                                                    "did with it).")
    pending_requests: list[str]


class ExitResult(OpResult):
    vcpu: int
    in_guest: bool


class AckResult(OpResult):
    vcpu: int
    vector: int | None = Field(description="Vector taken, or null when nothing is "
                                           "deliverable.")
    entry_exits: list[dict[str, Any]]
    exits: list[dict[str, Any]] | None = Field(None, description="lapic_auto_eoi only (the "
                                               "kvm-pvm profile): the exits of the re-entry "
                                               "after the vector is taken, e.g. the auto-EOI's "
                                               "KVM_EXIT_IOAPIC_EOI in split mode.")


class EoiResult(OpResult):
    vcpu: int
    vector: int | None = Field(description="Retired vector (null: ISR was empty).")
    forwarded: bool | None = Field(description="The EOI reached an IOAPIC (in-kernel) or "
                                               "requested KVM_EXIT_IOAPIC_EOI (split)."
                                               + _KVM_NULL)
    path: str | None = Field(description="trap, eoi-induced-exit or virtualized (APICv).")
    eoi_exit: str | None = Field(None, description="pending: a KVM_EXIT_IOAPIC_EOI waits for "
                                                   "the vCPU's next entry.")
    ioapic: list[dict[str, Any]] | None = Field(None, description="In-kernel: what the IOAPIC "
                                                                  "did per pin.")
    entry_exits: list[dict[str, Any]]
    exits: list[dict[str, Any]] | None = Field(None, description="With run_exits: the exits "
                                                                 "taken on re-entry.")
    pending_requests: list[str] | None


class RemoteIrr(OpenModel):
    pins: list[int]
    hex: str


class HandledVectors(OpenModel):
    vcpu: int
    vectors: list[int] | None = Field(description="Set vectors, ascending." + _KVM_NULL)
    hex: str | None = Field(description="The 256-bit bitmap as 0x + 64 hex digits."
                                        + _KVM_NULL)


class Bitmaps(OpenModel):
    remote_irr: RemoteIrr
    handled_vectors: list[HandledVectors]


class VmState(OpenModel):
    id: str
    config: VmSummary
    ioapic: IoapicView
    vcpus: list[VcpuView]
    routes: list[RouteOut] | None = Field(description="The GSI routing table; null on the kvm "
                                                      "backend (KVM has no ioctl to read it).")
    bitmaps: Bitmaps
    resamplers: list[Resampler]


class EventPage(OpenModel):
    events: list[Event]
    next_after: int = Field(description="Pass as `after` to get the following page.")
    last_seq: int = Field(description="seq of the newest event.")


class Health(OpenModel):
    status: str


class Ready(OpenModel):
    status: str
    vms: int
    max_vms: int
    engine: str = Field(description="Which build of the engine this process runs: "
                        "\"compiled (mypyc)\" or \"python (why)\".")
    version: str = Field(description="irqlab's version (the installed package's, as "
                         "`irqlab --version` prints it).")
