"""Plain state of one VM's irqchips. No behaviour lives here, only data and copying.

Bitmaps (IRR, ISR, TMR, PIR, handled vectors) are Python ints, so copying a vCPU is copying a
couple of dozen scalars and a whole VM state is hashable as a tuple.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from .rte import NUM_PINS, RESET_VALUE

# KVM request bits, in the order vcpu_enter_guest tests the ones we model (T11).
REQ_IOAPIC_EOI_EXIT: Final = 1
REQ_SCAN_IOAPIC: Final = 2
REQ_LOAD_EOI_EXITMAP: Final = 4
REQ_EVENT: Final = 8
REQUEST_NAMES = {
    REQ_IOAPIC_EOI_EXIT: "IOAPIC_EOI_EXIT",
    REQ_SCAN_IOAPIC: "SCAN_IOAPIC",
    REQ_LOAD_EOI_EXITMAP: "LOAD_EOI_EXITMAP",
    REQ_EVENT: "EVENT",
}
REQUEST_BITS = {v: k for k, v in REQUEST_NAMES.items()}

DFR_FLAT: Final = 0xFFFFFFFF
DFR_CLUSTER: Final = 0x0FFFFFFF
APIC_LVR_BASE: Final = 0x14 | (6 - 1) << 16  # version 0x14, KVM_APIC_MAX_NR_LVT_ENTRIES-1 = 5 LVTs
APIC_LVR_DIRECTED_EOI: Final = 1 << 24
SPIV_APIC_ENABLED: Final = 1 << 8
SPIV_FOCUS: Final = 1 << 9
SPIV_DIRECTED_EOI: Final = 1 << 12
SPIV_RESET: Final = 0xFF  # software-disabled, spurious vector 0xff
PV_EOI_OFF: Final = 0
PV_EOI_ARMED: Final = 1
PV_EOI_TAKEN: Final = 2


_REQUEST_LISTS = [
    tuple(name for bit, name in REQUEST_NAMES.items() if bits & bit) for bits in range(16)
]


def requests_list(bits: int) -> list[str]:
    return list(_REQUEST_LISTS[bits])


# Every attribute of a Vcpu: copying, hashing and snapshots walk this list.
VCPU_FIELDS: tuple[str, ...] = (
    "apic_base_enabled",
    "arb_prio",
    "dfr",
    "eoi_exitmap",
    "handled",
    "highest_stale",
    "id_reg",
    "idx",
    "in_guest",
    "init_count",
    "irr",
    "isr",
    "isr_cache",
    "ldr",
    "nmi_count",
    "pending_ioapic_eoi",
    "pir",
    "pv_eoi",
    "pv_eoi_en",
    "requests",
    "smi_count",
    "svr",
    "tmr",
    "tpr",
    "x2apic",
)


class Vcpu:
    """One vCPU: its local APIC registers and the arch fields KVM keeps for EOI interception."""

    __slots__ = VCPU_FIELDS

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.apic_base_enabled = True
        self.x2apic = False
        self.id_reg = (idx & 0xFF) << 24  # KVM sets the xAPIC ID to vcpu_id at reset
        self.ldr = 0
        self.dfr = DFR_FLAT
        self.tpr = 0
        self.svr = SPIV_RESET
        self.irr = 0
        self.isr = 0
        self.tmr = 0
        self.pir = 0
        # highest_isr_cache: the vector the last software acknowledgement put in ISR, -1
        # after any EOI (apic_set_isr / apic_clear_isr; not kept with APIC virtualization).
        self.isr_cache = -1
        self.pv_eoi_en = False  # MSR_KVM_PV_EOI_EN bit 0 (KVM_MSR_ENABLED)
        # PV EOI: PV_EOI_OFF, PV_EOI_ARMED (KVM_APIC_PV_EOI_PENDING and the guest's flag
        # set), or PV_EOI_TAKEN (the guest cleared its flag: it EOIed without an exit).
        self.pv_eoi = PV_EOI_OFF
        self.arb_prio = 0
        self.handled = 0  # vcpu->arch.ioapic_handled_vectors
        self.eoi_exitmap = 0  # the VMCS copy, loaded by LOAD_EOI_EXITMAP (APICv)
        self.pending_ioapic_eoi = 0
        self.highest_stale = -1  # highest_stale_pending_ioapic_eoi
        self.requests = 0
        self.in_guest = False
        self.nmi_count = 0
        self.smi_count = 0
        self.init_count = 0

    def clone(self) -> Vcpu:
        # Field by field, not a getattr loop: the explorer clones per transition and mypyc
        # compiles these to direct slot accesses (tests/engine/test_state_fields.py checks).
        c = Vcpu(self.idx)
        c.apic_base_enabled = self.apic_base_enabled
        c.arb_prio = self.arb_prio
        c.dfr = self.dfr
        c.eoi_exitmap = self.eoi_exitmap
        c.handled = self.handled
        c.highest_stale = self.highest_stale
        c.id_reg = self.id_reg
        c.in_guest = self.in_guest
        c.init_count = self.init_count
        c.irr = self.irr
        c.isr = self.isr
        c.isr_cache = self.isr_cache
        c.ldr = self.ldr
        c.nmi_count = self.nmi_count
        c.pending_ioapic_eoi = self.pending_ioapic_eoi
        c.pir = self.pir
        c.pv_eoi = self.pv_eoi
        c.pv_eoi_en = self.pv_eoi_en
        c.requests = self.requests
        c.smi_count = self.smi_count
        c.svr = self.svr
        c.tmr = self.tmr
        c.tpr = self.tpr
        c.x2apic = self.x2apic
        return c

    def key(self) -> tuple[Any, ...]:
        # VCPU_FIELDS' order, spelled out for speed (tests/engine/test_state_fields.py checks).
        return (
            self.apic_base_enabled,
            self.arb_prio,
            self.dfr,
            self.eoi_exitmap,
            self.handled,
            self.highest_stale,
            self.id_reg,
            self.idx,
            self.in_guest,
            self.init_count,
            self.irr,
            self.isr,
            self.isr_cache,
            self.ldr,
            self.nmi_count,
            self.pending_ioapic_eoi,
            self.pir,
            self.pv_eoi,
            self.pv_eoi_en,
            self.requests,
            self.smi_count,
            self.svr,
            self.tmr,
            self.tpr,
            self.x2apic,
        )

    def same_key(self, other: Vcpu) -> bool:
        """self.key() == other.key() without building either (the explorer asks, per
        transition, which parts of a state its step left as they were). The fields that change
        most come first."""
        return (
            self.requests == other.requests
            and self.in_guest == other.in_guest
            and self.irr == other.irr
            and self.isr == other.isr
            and self.pir == other.pir
            and self.pv_eoi == other.pv_eoi
            and self.isr_cache == other.isr_cache
            and self.tmr == other.tmr
            and self.handled == other.handled
            and self.eoi_exitmap == other.eoi_exitmap
            and self.pending_ioapic_eoi == other.pending_ioapic_eoi
            and self.highest_stale == other.highest_stale
            and self.tpr == other.tpr
            and self.apic_base_enabled == other.apic_base_enabled
            and self.arb_prio == other.arb_prio
            and self.dfr == other.dfr
            and self.id_reg == other.id_reg
            and self.idx == other.idx
            and self.init_count == other.init_count
            and self.ldr == other.ldr
            and self.nmi_count == other.nmi_count
            and self.smi_count == other.smi_count
            and self.svr == other.svr
            and self.pv_eoi_en == other.pv_eoi_en
            and self.x2apic == other.x2apic
        )

    def to_dict(self) -> dict[str, Any]:
        return {s: getattr(self, s) for s in VCPU_FIELDS}

    @staticmethod
    def from_key(key: tuple[Any, ...]) -> Vcpu:
        """The vCPU whose key() is `key` (the explorer's worker processes ship keys)."""
        c = Vcpu(key[7])
        c.apic_base_enabled = key[0]
        c.arb_prio = key[1]
        c.dfr = key[2]
        c.eoi_exitmap = key[3]
        c.handled = key[4]
        c.highest_stale = key[5]
        c.id_reg = key[6]
        c.in_guest = key[8]
        c.init_count = key[9]
        c.irr = key[10]
        c.isr = key[11]
        c.isr_cache = key[12]
        c.ldr = key[13]
        c.nmi_count = key[14]
        c.pending_ioapic_eoi = key[15]
        c.pir = key[16]
        c.pv_eoi = key[17]
        c.pv_eoi_en = key[18]
        c.requests = key[19]
        c.smi_count = key[20]
        c.svr = key[21]
        c.tmr = key[22]
        c.tpr = key[23]
        c.x2apic = key[24]
        return c

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vcpu:
        c = Vcpu(d["idx"])
        for s in VCPU_FIELDS:
            if s in _VCPU_FIELDS_SINCE_PV_EOI and s not in d:
                continue  # a snapshot from before PV EOI was modelled: off, no ISR cache
            setattr(c, s, d[s])
        return c


_VCPU_FIELDS_SINCE_PV_EOI = ("isr_cache", "pv_eoi", "pv_eoi_en")


IOAPIC_FIELDS: tuple[str, ...] = (
    "delayed_at",
    "flavour",
    "id",
    "ioregsel",
    "irq_eoi",
    "irq_states",
    "irr",
    "irr_delivered",
    "redir",
    "rtc_dest",
    "rtc_pending_eoi",
    "version",
)


class IoapicState:
    """Register state of one IOAPIC. `flavour` is "kvm" (arch/x86/kvm/ioapic.c) or "qemu"
    (hw/intc/ioapic.c); the two share the register file and differ in transitions."""

    __slots__ = IOAPIC_FIELDS
    delayed_at: int | None  # logical time of the throttled re-injection
    flavour: str
    id: int
    ioregsel: int
    irq_eoi: list[int]  # successive re-deliveries at EOI (storm throttle)
    irq_states: list[int]  # per-pin bitmask of asserted IRQ source ids
    irr: int
    irr_delivered: int  # KVM only
    redir: list[int]
    # KVM's rtc_status (in-kernel only): the dest_map of the last tracked RTC delivery as
    # sorted entries vcpu_id << 8 | vector, and how many of them await an EOI.
    rtc_dest: list[int]
    rtc_pending_eoi: int
    version: int

    def __init__(self, flavour: str, version: int, _copy: IoapicState | None = None) -> None:
        self.flavour = flavour
        self.version = version
        if _copy is not None:  # clone(): field by field, the lists copied
            self.delayed_at = _copy.delayed_at
            self.id = _copy.id
            self.ioregsel = _copy.ioregsel
            self.irq_eoi = _copy.irq_eoi.copy()
            self.irq_states = _copy.irq_states.copy()
            self.irr = _copy.irr
            self.irr_delivered = _copy.irr_delivered
            self.redir = _copy.redir.copy()
            self.rtc_dest = _copy.rtc_dest.copy()
            self.rtc_pending_eoi = _copy.rtc_pending_eoi
            return
        self.id = 0
        self.ioregsel = 0
        self.irr = 0
        self.irr_delivered = 0  # KVM only
        self.redir = [RESET_VALUE] * NUM_PINS
        self.irq_states = [0] * NUM_PINS
        self.irq_eoi = [0] * NUM_PINS
        self.delayed_at = None
        self.rtc_dest = []
        self.rtc_pending_eoi = 0

    def clone(self) -> IoapicState:
        # Field by field in __init__ (not a getattr loop, nor fresh lists then replaced): the
        # explorer clones per transition (tests/engine/test_state_fields.py checks the fields).
        return IoapicState(self.flavour, self.version, self)

    def same_key(self, other: IoapicState) -> bool:
        """self.key() == other.key() without building either (see Vcpu.same_key)."""
        return (
            self.redir == other.redir
            and self.irq_states == other.irq_states
            and self.irr == other.irr
            and self.irr_delivered == other.irr_delivered
            and self.irq_eoi == other.irq_eoi
            and self.delayed_at == other.delayed_at
            and self.rtc_dest == other.rtc_dest
            and self.rtc_pending_eoi == other.rtc_pending_eoi
            and self.flavour == other.flavour
            and self.id == other.id
            and self.ioregsel == other.ioregsel
            and self.version == other.version
        )

    def key(self) -> tuple[Any, ...]:
        # IOAPIC_FIELDS' order, lists as tuples (tests/engine/test_state_fields.py checks).
        return (
            self.delayed_at,
            self.flavour,
            self.id,
            self.ioregsel,
            tuple(self.irq_eoi),
            tuple(self.irq_states),
            self.irr,
            self.irr_delivered,
            tuple(self.redir),
            tuple(self.rtc_dest),
            self.rtc_pending_eoi,
            self.version,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            s: (list(v) if isinstance(v, list) else v)
            for s, v in ((s, getattr(self, s)) for s in IOAPIC_FIELDS)
        }

    @staticmethod
    def from_key(key: tuple[Any, ...]) -> IoapicState:
        """The IOAPIC whose key() is `key`."""
        c = IoapicState(key[1], key[11])
        c.delayed_at = key[0]
        c.id = key[2]
        c.ioregsel = key[3]
        c.irq_eoi = list(key[4])
        c.irq_states = list(key[5])
        c.irr = key[6]
        c.irr_delivered = key[7]
        c.redir = list(key[8])
        c.rtc_dest = list(key[9])
        c.rtc_pending_eoi = key[10]
        return c

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IoapicState:
        c = IoapicState(d["flavour"], d["version"])
        for s in IOAPIC_FIELDS:
            if s.startswith("rtc_") and s not in d:
                continue  # a snapshot from before RTC tracking: nothing pending
            v = d[s]
            setattr(c, s, list(v) if isinstance(v, list) else v)
        return c


def rtc_dest_vector(io: IoapicState, idx: int) -> int:
    """The vector the RTC dest_map holds for vCPU idx, or -1 when it is not in the map."""
    for entry in io.rtc_dest:
        if entry >> 8 == idx:
            return entry & 0xFF
    return -1


# A routing entry: ("irqchip", chip, pin) with chip "ioapic" | "pic-master" | "pic-slave",
# or ("msi", address_lo, address_hi, data).
RouteEntry = tuple[Any, ...]


@dataclass(slots=True)
class VmConfig:
    vcpus: int = 1
    irqchip: str = "kernel"  # "kernel" | "split"
    profile: str = "linux-latest"
    overrides: dict[str, bool] = field(default_factory=dict)
    # False; True or "apicv": Intel APICv; "avic": AMD AVIC (kept as given, so that a
    # document or snapshot written with `true` reads back the same).
    apicv: bool | str = False
    nr_reserved_ioapic_pins: int = NUM_PINS
    ioapic_version: int | None = None
    x2apic: bool = False  # every vCPU starts in x2APIC mode
    x2apic_cpuid: bool = True  # guest CPUID advertises x2APIC (decides LVR directed EOI)
    x2apic_format: bool = False  # KVM_X2APIC_API_USE_32BIT_IDS
    broadcast_quirk_disabled: bool = False  # KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK
    vector_hashing: bool = True  # kvm module param, default on
    event_log: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "vcpus": self.vcpus,
            "irqchip": self.irqchip,
            "profile": self.profile,
            "overrides": dict(self.overrides),
            "apicv": self.apicv,
            "nr_reserved_ioapic_pins": self.nr_reserved_ioapic_pins,
            "ioapic_version": self.ioapic_version,
            "x2apic": self.x2apic,
            "x2apic_cpuid": self.x2apic_cpuid,
            "x2apic_format": self.x2apic_format,
            "broadcast_quirk_disabled": self.broadcast_quirk_disabled,
            "vector_hashing": self.vector_hashing,
            "event_log": self.event_log,
        }
