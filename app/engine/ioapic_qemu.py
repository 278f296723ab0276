"""QEMU's userspace IOAPIC (hw/intc/ioapic.c) as used with a split irqchip: T16 input and
service, T12 EOI broadcast, the MMIO window with the version-0x20 EOI register.

The transitions run against a `QemuIoapicHost`: the engine's model VM (app.engine.vm.Vm, whose
KVM is modelled too) or the VMM of a real split-irqchip VM (app.kvm.split_vmm.SplitVmm, whose
KVM is this host's /dev/kvm). Both hold QEMU's IOAPIC state and answer QEMU's kvm_set_irq."""

from __future__ import annotations

from typing import Any, Final, Protocol

from . import rte as R
from .events import EventLog
from .flags import Behaviour
from .ioapic_common import log_rte_write, replace_half, rte_index
from .state import IoapicState, RouteEntry


class QemuIoapicHost(Protocol):
    """What QEMU's IOAPIC and its VMM glue (vmm.Vmm) need from the VM they serve."""

    ioapic: IoapicState  # QEMU's IOAPICCommonState (flavour "qemu")
    log: EventLog
    outcome: str  # what the last ioapic_set_irq did to its pin
    outcome_reason: str | None
    flags: Behaviour  # only the QEMU flag (qemu_routes_before_service) is read here
    resamplers: dict[int, int]  # gsi -> resamplefd signal count
    routes: dict[int, list[RouteEntry]]  # the routing table QEMU last committed

    @property
    def msi_ext_dest_id(self) -> bool:
        """QEMU advertises KVM_FEATURE_MSI_EXT_DEST_ID and swizzles the extended destination
        of its MSI routes (split irqchip with 32-bit x2APIC ids)."""
        ...

    @property
    def time(self) -> int:
        """Microseconds of the storm throttle's QEMU_CLOCK_VIRTUAL (logical in the model)."""
        ...

    def pins_with_vector(self, vector: int) -> list[int]: ...

    def notify_resampler(self, gsi: int, cause: int | None) -> bool: ...

    def routing_changed(self) -> None: ...

    def install_routes(self, table: dict[int, list[RouteEntry]], cause: int | None) -> None:
        """kvm_irqchip_commit_routes: KVM_SET_GSI_ROUTING with the whole table."""
        ...

    def vmm_set_irq(self, gsi: int, level: bool, cause: int | None) -> int:
        """QEMU's kvm_set_irq(kvm_state, gsi, level): KVM_IRQ_LINE_STATUS on the GSI with
        userspace's IRQ source id; the status KVM answers (> 0 delivered, 0 coalesced,
        -1 no target)."""
        ...

SUCCESSIVE_IRQ_MAX_COUNT: Final = 10000
DELAYED_SERVICE_US: Final = 10_000  # NANOSECONDS_PER_SECOND / 100 of QEMU_CLOCK_VIRTUAL
IOREGSEL, IOWIN, IOEOI = 0x00, 0x10, 0x40


def qemu_ioapic_set_irq(
    vm: QemuIoapicHost, pin: int, level: bool, cause: int | None
) -> dict[str, Any]:
    """ioapic_set_irq: input 0 is remapped to pin 2; a level pin latches the level and is
    serviced when Remote IRR is clear; every level-1 call on an unmasked edge pin is a new
    edge, and edges on masked pins are dropped."""
    io = vm.ioapic
    if pin == 0:
        vm.log.emit("ioapic", "pin-remapped", cause, "from", 0, "to", 2)
        pin = 2
    bit = 1 << pin
    e = io.redir[pin]
    if e & R.TRIGGER_BIT:
        if level:
            io.irr |= bit
            if e & R.REMOTE_IRR_BIT:
                vm.log.emit("ioapic", "blocked", cause, "pin", pin, "reason", "remote-irr")
                vm.outcome = "blocked"
                vm.outcome_reason = "remote-irr"
                return {"pin": pin, "status": "blocked-remote-irr"}
            return _serviced(vm, pin, ioapic_service(vm, cause))
        if io.irr & bit:
            io.irr &= ~bit
            vm.log.emit("ioapic", "irr-cleared", cause, "pin", pin)
        vm.outcome = "lowered"
        vm.outcome_reason = None
        return {"pin": pin, "status": "lowered"}
    if level and not e & R.MASK_BIT:
        io.irr |= bit
        return _serviced(vm, pin, ioapic_service(vm, cause))
    if level:
        vm.log.emit("ioapic", "dropped", cause, "pin", pin, "reason", "masked-edge")
        vm.outcome = "dropped"
        vm.outcome_reason = "masked"
        return {"pin": pin, "status": "dropped-masked-edge"}
    vm.outcome = "lowered"
    vm.outcome_reason = None  # a level-0 call on an edge pin does nothing at all
    return {"pin": pin, "status": "ignored"}


def _serviced(vm: QemuIoapicHost, pin: int, delivered: list[dict[str, Any]]) -> dict[str, Any]:
    """What ioapic_service did for *this* pin (it services every pin with irr set)."""
    for d in delivered:
        if d["pin"] == pin:
            vm.outcome = "delivered" if d["kvm_set_irq"] > 0 else "no-target"
            vm.outcome_reason = None
            break
    else:
        if vm.ioapic.redir[pin] & R.MASK_BIT:
            vm.outcome = "blocked"
            vm.outcome_reason = "masked"  # the level stays latched in irr until unmask
        else:
            vm.outcome = "blocked"
            vm.outcome_reason = "remote-irr"
    return {"pin": pin, "status": "serviced", "delivered": delivered}


def ioapic_service(vm: QemuIoapicHost, cause: int | None) -> list[dict[str, Any]]:
    """ioapic_service over all pins: Remote IRR is set *before* delivery, unconditionally; an
    already-set Remote IRR coalesces. In split mode delivery is kvm_set_irq(gsi=pin) through
    KVM's current MSI route (1 then 0 for edge, 1 only for level)."""
    io = vm.ioapic
    out: list[dict[str, Any]] = []
    pending = io.irr  # only pins with irr set are looked at; same order as QEMU's loop
    while pending:
        bit = pending & -pending
        pending ^= bit
        pin = bit.bit_length() - 1
        e = io.redir[pin]
        if e & R.MASK_BIT:
            continue
        level = bool(e & R.TRIGGER_BIT)
        if not level:
            io.irr &= ~bit
        else:
            if e & R.REMOTE_IRR_BIT:
                vm.log.emit("ioapic", "coalesced", cause, "pin", pin, "reason", "remote-irr")
                continue
            io.redir[pin] = e | R.REMOTE_IRR_BIT
        # The delivery event records that Remote IRR was set first (unlike KVM's T2.5).
        seq = vm.log.emit("ioapic", "deliver", cause, "pin", pin, "vector", e & 0xFF,
                          "dest", e >> 56, "level", level, "remote_irr_set", level)  # fmt: skip
        ret = vm.vmm_set_irq(pin, True, seq)
        if not level:
            vm.vmm_set_irq(pin, False, seq)
        out.append({"pin": pin, "kvm_set_irq": ret})
    return out


def ioapic_eoi_broadcast(
    vm: QemuIoapicHost, vector: int, cause: int | None
) -> list[dict[str, Any]]:
    """ioapic_eoi_broadcast (T12): pins whose RTE has this vector *and is level*; resamplefds
    are kicked for each, Remote IRR cleared, and a still-high line re-serviced (after 10000
    successive re-deliveries, 10 ms of virtual time later)."""
    io = vm.ioapic
    out: list[dict[str, Any]] = []
    for pin in list(vm.pins_with_vector(vector)):
        e = io.redir[pin]
        if not e & R.TRIGGER_BIT:
            continue
        if vm.resamplers:
            vm.notify_resampler(pin, cause)
        if not e & R.REMOTE_IRR_BIT:
            out.append({"pin": pin, "remote_irr_cleared": False, "reason": "not-set"})
            continue
        io.redir[pin] = e & ~R.REMOTE_IRR_BIT
        seq = vm.log.emit("ioapic", "remote-irr-cleared", cause, "pin", pin, "vector", vector)
        action: dict[str, Any] = {"pin": pin, "remote_irr_cleared": True}
        if not e & R.MASK_BIT and io.irr >> pin & 1:
            io.irq_eoi[pin] += 1
            if io.irq_eoi[pin] >= SUCCESSIVE_IRQ_MAX_COUNT:
                io.irq_eoi[pin] = 0
                deadline = vm.time + DELAYED_SERVICE_US
                # timer_mod_anticipate: only ever moves the deadline earlier.
                if io.delayed_at is None or deadline < io.delayed_at:
                    io.delayed_at = deadline
                vm.log.emit("ioapic", "eoi-reassert-delayed", seq, "pin", pin, "at", io.delayed_at)
                action["redelivery"] = "delayed"
            else:
                action["redelivery"] = ioapic_service(vm, seq)
        else:
            io.irq_eoi[pin] = 0
        out.append(action)
    return out


def delayed_service(vm: QemuIoapicHost, cause: int | None) -> None:
    """delayed_ioapic_service_cb."""
    vm.ioapic.delayed_at = None
    seq = vm.log.emit("ioapic", "delayed-service", cause)
    ioapic_service(vm, seq)


def read_reg(vm: QemuIoapicHost, offset: int, size: int) -> int:
    """ioapic_mem_read for one access of at most 4 bytes: IOWIN answers only 4-byte reads,
    an out-of-range index reads 0."""
    io = vm.ioapic
    if offset == IOREGSEL:
        return io.ioregsel
    if offset != IOWIN or size != 4:
        return 0
    sel = io.ioregsel
    if sel in (0x00, 0x02):
        return io.id << 24
    if sel == 0x01:
        return io.version | (R.NUM_PINS - 1) << 16
    index = rte_index(sel)
    if index is None:
        return 0
    e = io.redir[index]
    return (e >> 32 if sel & 1 else e) & 0xFFFFFFFF


def write_reg(
    vm: QemuIoapicHost, offset: int, size: int, value: int, cause: int | None
) -> dict[str, Any]:
    """ioapic_mem_write for one access of at most 4 bytes. Returns what it touched so the VMM
    can decide about route commits (QEMU <= 7.2 commits after every write, >= 8.0 only on RTE
    writes and before re-servicing)."""
    io = vm.ioapic
    if offset == IOREGSEL:
        io.ioregsel = value & 0xFF
        return {"kind": "ioregsel"}
    if offset == IOWIN:
        if size != 4:
            return {"kind": "ignored"}
        sel = io.ioregsel
        if sel == 0x00:
            io.id = (value >> 24) & 0xF
            vm.log.emit("ioapic", "id-write", cause, "id", io.id)
            return {"kind": "id"}
        if sel in (0x01, 0x02):
            return {"kind": "ignored"}
        index = rte_index(sel)
        if index is None:
            return {"kind": "ignored"}
        e = io.redir[index]
        ro = e & R.RO_BITS
        e = replace_half(e, sel, value)
        e = (e & ~R.RO_BITS) | ro
        io.irq_eoi[index] = 0
        if not e & R.TRIGGER_BIT:
            e &= ~R.REMOTE_IRR_BIT  # ioapic_fix_edge_remote_irr
        io.redir[index] = e
        vm.routing_changed()  # the vector->pins index used by the EOI broadcast
        seq = log_rte_write(vm.log, index, sel, value, e, cause)
        return {"kind": "rte", "pin": index, "seq": seq}
    if offset == IOEOI:
        if size != 4 or io.version != 0x20:
            return {"kind": "ignored"}
        # ioapic_eoi_broadcast(val) compares the whole written value with the 8-bit RTE
        # vector, so a value with bits above 7 set matches no pin.
        seq = vm.log.emit("ioapic", "eoi-register", cause, "value", value)
        return {"kind": "eoi", "pins": ioapic_eoi_broadcast(vm, value, seq)}
    return {"kind": "ignored"}
