"""KVM's in-kernel IOAPIC (arch/x86/kvm/ioapic.c): T1 input, T2 service, T3 RTE write,
T10 EOI, the throttled re-injection work, and the MMIO register window."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from . import delivery
from . import rte as R
from .ioapic_common import log_rte_write, replace_half, rte_index
from .msi import LapicIrq
from .state import SPIV_DIRECTED_EOI, IoapicState, Vcpu

if TYPE_CHECKING:
    from .vm import Vm

IOAPIC_SUCCESSIVE_IRQ_MAX_COUNT: Final = 10000
RTC_GSI: Final = 8
EOI_INJECT_DELAY_US: Final = 10_000  # HZ/100
IOREGSEL, IOWIN = 0x00, 0x10
REG_ID, REG_VER, REG_ARB = 0x00, 0x01, 0x02


def ioapic_set_irq(
    vm: Vm, pin: int, source: int, level: bool, cause: int | None, line_status: bool = False
) -> int:
    """kvm_ioapic_set_irq -> ioapic_set_irq (T1). Returns KVM_IRQ_LINE_STATUS's value:
    >0 delivered to that many LAPICs, 0 coalesced, -1 blocked (masked / Remote IRR / none)."""
    io = vm.ioapic
    bit = 1 << pin
    if level:
        io.irq_states[pin] |= 1 << source
    else:
        io.irq_states[pin] &= ~(1 << source)
    e = io.redir[pin]
    if not io.irq_states[pin]:
        if io.irr & bit:
            io.irr &= ~bit
            vm.log.emit("ioapic", "irr-cleared", cause, "pin", pin)
        vm.outcome = "lowered"
        vm.outcome_reason = None
        return 1
    edge = not e & R.TRIGGER_BIT
    f = vm.flags
    if vm.apic_virt and f.ioapic_lazy_eoi and (edge or not f.lazy_eoi_edge_only):
        ioapic_lazy_update_eoi(vm, pin, cause)
        e = io.redir[pin]  # a pre-8be8f932e3db lazy EOI may have cleared Remote IRR
    if pin == RTC_GSI and line_status and io.rtc_pending_eoi > 0:
        # rtc_irq_check_coalesced: an RTC tick while a tracked one awaits its EOI is
        # reported coalesced (0) and never latched, so userspace can re-inject it later.
        vm.log.emit("ioapic", "coalesced", cause, "pin", pin, "reason", "rtc-eoi-pending",
                    "pending_eoi", io.rtc_pending_eoi)
        vm.outcome = "coalesced"
        vm.outcome_reason = "rtc-eoi-pending"
        return 0
    old_irr = io.irr
    io.irr |= bit
    if edge:
        io.irr_delivered &= ~bit
        if old_irr == io.irr:
            vm.log.emit("ioapic", "coalesced", cause, "pin", pin, "reason", "edge-already-latched")
            vm.outcome = "coalesced"
            vm.outcome_reason = "edge-already-latched"
            return 0
    elif e & R.REMOTE_IRR_BIT and not vm.flags.service_refuses_remote_irr:
        # Before 7d2253684dd1/da3fe7bdfada the Remote IRR check sat here and said "coalesced".
        vm.log.emit("ioapic", "coalesced", cause, "pin", pin, "reason", "remote-irr")
        vm.outcome = "coalesced"
        vm.outcome_reason = "remote-irr"
        return 0
    return ioapic_service(vm, pin, cause, line_status)


def ioapic_service(vm: Vm, pin: int, cause: int | None, line_status: bool = False) -> int:
    """ioapic_service (T2): deliver pin's RTE; a level pin gets Remote IRR when ret != 0.

    The RTC pin served for KVM_IRQ_LINE_STATUS is delivered with rtc_status.dest_map: every
    LAPIC that accepts it is recorded with the vector, and pending_eoi becomes the number of
    them (T15; the tracking predates the releases modelled here)."""
    io = vm.ioapic
    e = io.redir[pin]
    level = bool(e & R.TRIGGER_BIT)
    if e & R.MASK_BIT:
        vm.log.emit("ioapic", "blocked", cause, "pin", pin, "reason", "masked")
        vm.outcome = "blocked"
        vm.outcome_reason = "masked"
        return -1
    if level and e & R.REMOTE_IRR_BIT and vm.flags.service_refuses_remote_irr:
        vm.log.emit("ioapic", "blocked", cause, "pin", pin, "reason", "remote-irr")
        vm.outcome = "blocked"
        vm.outcome_reason = "remote-irr"
        return -1
    irq = LapicIrq(e & 0xFF, (e >> 8) & 7, bool(e & R.DEST_MODE_BIT), level, e >> 56)
    if not level:
        io.irr_delivered |= 1 << pin
    seq = vm.log.reserve()
    track_rtc = pin == RTC_GSI and line_status
    first = len(vm.accepted)
    ret = delivery.deliver_to_apic(vm, irq, seq)
    if track_rtc:
        vec = e & 0xFF
        io.rtc_dest = sorted({v << 8 | vec for v in vm.accepted[first:]})
        io.rtc_pending_eoi = max(ret, 0)
    rirr = bool(ret and level)
    vm.outcome = "delivered" if ret > 0 else "no-target"
    vm.outcome_reason = None
    if rirr:
        io.redir[pin] |= R.REMOTE_IRR_BIT
    # Remote IRR is set after delivery, as its result (T2.5): recorded on the delivery event.
    vm.log.fill(
        seq,
        "ioapic",
        "deliver",
        cause,
        "pin",
        pin,
        "vector",
        e & 0xFF,
        "dest",
        e >> 56,
        "level",
        level,
        "ret",
        ret,
        "remote_irr_set",
        rirr,
    )
    return ret


def ioapic_write_indirect(vm: Vm, writer: Vcpu | None, value: int, cause: int | None) -> None:
    """ioapic_write_indirect (T3) for IOWIN writes: ID, or one half of an RTE."""
    io = vm.ioapic
    sel = io.ioregsel
    value &= 0xFFFFFFFF
    if sel == REG_ID:
        io.id = (value >> 24) & 0xF
        vm.log.emit("ioapic", "id-write", cause, "id", io.id)
        return
    if sel in (REG_VER, REG_ARB):
        return
    index = rte_index(sel)
    if index is None:
        vm.log.emit("ioapic", "write-dropped", cause, "ioregsel", sel)
        return
    f = vm.flags
    e = io.redir[index]
    mask_before = bool(e & R.MASK_BIT)
    old_ro = e & R.RO_BITS
    old_dest = R.dest(e)
    old_logical = bool(e & R.DEST_MODE_BIT)
    e = replace_half(e, sel, value)
    if f.rte_preserves_readonly_bits:
        e = (e & ~R.RO_BITS) | old_ro
    elif not sel & 1:
        # Before b200dded0a69 the low-dword branch stored the value and then cleared Remote
        # IRR, whatever bit 14 said (delivery status was stored as written). That is why the
        # Linux "flip to edge" EOI emulation worked on those kernels without a8bfec293052.
        e &= ~R.REMOTE_IRR_BIT
    if f.rte_edge_clears_remote_irr and not e & R.TRIGGER_BIT:
        e &= ~R.REMOTE_IRR_BIT
    io.redir[index] = e
    seq = log_rte_write(vm.log, index, sel, value, e, cause)
    vm.routing_changed()
    if mask_before != bool(e & R.MASK_BIT):
        vm.log.emit("ioapic", "mask-notify", seq, "pin", index, "masked", bool(e & R.MASK_BIT))
    if e & R.TRIGGER_BIT and io.irr >> index & 1:
        if not f.unmask_resamples:
            ioapic_service(vm, index, seq)
        elif not e & (R.MASK_BIT | R.REMOTE_IRR_BIT):
            # kvm_notify_irqfd_resampler(kvm, KVM_IRQCHIP_IOAPIC, index): the pin's GSI
            # through kvm_irq_map_chip_pin, not the pin number.
            gsi = vm.ioapic_pin_gsis().get(index, -1)
            if gsi >= 0 and vm.notify_resampler(gsi, seq):
                io.irr &= ~(1 << index)
                vm.log.emit("ioapic", "irr-cleared", seq, "pin", index, "reason", "resampled")
            else:
                ioapic_service(vm, index, seq)
    # Scan request (T3 step 7).
    if f.targeted_scan_requests and R.delivery_mode(e) == R.DM_FIXED:
        new_logical = bool(e & R.DEST_MODE_BIT)
        targets = set(delivery.bitmap_or_dest_vcpus(vm, R.dest(e), new_logical))
        if old_dest != R.dest(e) or old_logical != new_logical:
            old_mode = new_logical if f.scan_old_dest_with_new_mode else old_logical
            targets.update(delivery.bitmap_or_dest_vcpus(vm, old_dest, old_mode))
        vm.request_scan(targets, seq)
    else:
        vm.request_scan(None, seq)


def rtc_irq_eoi(vm: Vm, v: Vcpu, vector: int, cause: int | None) -> None:
    """rtc_irq_eoi, first thing in kvm_ioapic_update_eoi: a vCPU in the RTC dest_map that
    EOIs the vector it was given leaves the map and pending_eoi drops by one."""
    io = vm.ioapic
    entry = v.idx << 8 | vector
    if io.rtc_pending_eoi and entry in io.rtc_dest:
        io.rtc_dest.remove(entry)
        # rtc_status_pending_eoi_check_valid: never below 0 (it WARNs and resets).
        io.rtc_pending_eoi = max(io.rtc_pending_eoi - 1, 0)
        vm.log.emit("ioapic", "rtc-eoi", cause, "vcpu", v.idx, "vector", vector,
                    "pending_eoi", io.rtc_pending_eoi)


def ioapic_update_eoi(
    vm: Vm, v: Vcpu, vector: int, level: bool, cause: int
) -> list[dict[str, Any]]:
    """kvm_ioapic_update_eoi / kvm_ioapic_update_eoi_one (T10): every pin whose *current*
    vector is `vector` runs its ack notifiers; then, if this vCPU's TMR said level and it has
    not enabled directed EOI, Remote IRR clears and a still-asserted line re-delivers (or,
    after 10000 successive re-deliveries, is deferred by 10 ms of logical time)."""
    rtc_irq_eoi(vm, v, vector, cause)
    return [update_eoi_one(vm, v, pin, level, cause) for pin in vm.pins_with_vector(vector)]


def update_eoi_one(vm: Vm, v: Vcpu, pin: int, level: bool, cause: int | None) -> dict[str, Any]:
    """kvm_ioapic_update_eoi_one for one pin: the ack notifiers, then (level, no directed
    EOI) Remote IRR clears and a still-asserted unmasked line is re-serviced.

    The directed-EOI test is kvm_lapic_suppress_eoi_broadcast since 6517dfbcc918: in-kernel
    it is SPIV bit 12 (QUIRKED) unless the VM chose DISABLED, which ignores the bit."""
    io = vm.ioapic
    directed = bool(v.svr & SPIV_DIRECTED_EOI) and not vm.flags.suppress_eoi_broadcast_disabled
    if vm.resamplers:
        vm.notify_acked(pin, cause)
    e = io.redir[pin]
    if not level or directed:
        return {"pin": pin, "remote_irr_cleared": False,
                "reason": "edge" if not level else "directed-eoi"}
    io.redir[pin] = e & ~R.REMOTE_IRR_BIT
    seq = vm.log.emit("ioapic", "remote-irr-cleared", cause, "pin", pin, "vector", e & 0xFF)
    action: dict[str, Any] = {"pin": pin, "remote_irr_cleared": True}
    if not e & R.MASK_BIT and io.irr >> pin & 1:
        io.irq_eoi[pin] += 1
        if io.irq_eoi[pin] == IOAPIC_SUCCESSIVE_IRQ_MAX_COUNT:
            io.irq_eoi[pin] = 0
            if io.delayed_at is None:
                io.delayed_at = vm.time + EOI_INJECT_DELAY_US
            vm.log.emit("ioapic", "eoi-inject-delayed", seq, "pin", pin, "at", io.delayed_at)
            action["redelivery"] = "delayed"
        else:
            action["redelivery"] = ioapic_service(vm, pin, seq)
    else:
        io.irq_eoi[pin] = 0
    return action


def ioapic_lazy_update_eoi(vm: Vm, pin: int, cause: int | None) -> None:
    """ioapic_lazy_update_eoi (f458d039db7e), called by ioapic_set_irq on an assert while
    APIC virtualization is activated: AVIC retires edge EOIs in hardware, so the IOAPIC may
    never have heard of one. The first vCPU (in vCPU order) that matches the RTE's
    destination and holds the RTE's vector neither in IRR nor ISR (kvm_apic_pending_eoi; the
    PIR is not looked at) is taken to have EOIed it: rtc_irq_eoi, and before 77377064c3a9
    (lazy_eoi_rtc_only) also kvm_ioapic_update_eoi_one with the RTE's trigger mode.

    Between f458d039db7e and 77377064c3a9 an irqfd resampler on the pin recursed through
    kvm_notify_acked_irq -> irqfd_resampler_ack -> ioapic_set_irq while another source kept
    the line high, until the host's stack overflowed (CVE-2020-27152; on level pins 8be8f932e3db
    stopped it first). The model logs `lazy-eoi-recursion` and stops there."""
    if vm.lazy_eoi_depth:
        vm.log.emit("ioapic", "lazy-eoi-recursion", cause, "pin", pin, "reason",
                    "the host kernel overflows its stack here (CVE-2020-27152)")
        return
    e = vm.ioapic.redir[pin]
    vec = e & 0xFF
    bit = 1 << vec
    for idx in sorted(vm.apic_map().matching(R.dest(e), bool(e & R.DEST_MODE_BIT))):
        v = vm.vcpus[idx]
        if (v.irr | v.isr) & bit:
            continue
        seq = vm.log.emit("ioapic", "lazy-eoi", cause, "pin", pin, "vcpu", idx, "vector", vec)
        rtc_irq_eoi(vm, v, vec, seq)
        if not vm.flags.lazy_eoi_rtc_only:
            vm.lazy_eoi_depth += 1
            try:
                update_eoi_one(vm, v, pin, bool(e & R.TRIGGER_BIT), seq)
            finally:
                vm.lazy_eoi_depth -= 1
        return


def eoi_inject_work(vm: Vm, cause: int | None) -> None:
    """kvm_ioapic_eoi_inject_work: re-service every level pin with irr set and no Remote IRR."""
    io = vm.ioapic
    io.delayed_at = None
    seq = vm.log.emit("ioapic", "eoi-inject-work", cause)
    for pin in range(R.NUM_PINS):
        e = io.redir[pin]
        if e & R.TRIGGER_BIT and io.irr >> pin & 1 and not e & R.REMOTE_IRR_BIT:
            ioapic_service(vm, pin, seq)


def read_indirect(io: IoapicState) -> int:
    """ioapic_read_indirect: all-ones for an out-of-range RTE half."""
    sel = io.ioregsel
    if sel == REG_VER:
        return (R.NUM_PINS - 1) << 16 | io.version
    if sel in (REG_ID, REG_ARB):
        return io.id << 24
    index = rte_index(sel)
    if index is None:
        return 0xFFFFFFFF
    e = io.redir[index]
    return (e >> 32 if sel & 1 else e) & 0xFFFFFFFF


def mmio_read(vm: Vm, offset: int, size: int) -> int | None:
    """ioapic_mmio_read: decodes exactly offsets 0x00 and 0x10 (others read 0); lengths 1, 2,
    4 take the low bytes, 8 returns the 32-bit value zero-extended; any other length leaves
    the buffer unwritten (None)."""
    io = vm.ioapic
    if size not in (1, 2, 4, 8):
        return None
    offset &= 0xFF
    if offset == IOREGSEL:
        value = io.ioregsel
    elif offset == IOWIN:
        value = read_indirect(io)
    else:
        value = 0
    if size == 8:
        return value
    return value & ((1 << (size * 8)) - 1)


def mmio_write(
    vm: Vm, writer: Vcpu | None, offset: int, size: int, value: int, cause: int | None
) -> bool:
    """ioapic_mmio_write: lengths 1, 2, 4, 8 (8 uses the low dword); other lengths dropped.
    Only IOREGSEL and IOWIN are decoded: KVM has no EOI register (a write to 0x40 is
    ignored)."""
    io = vm.ioapic
    if size not in (1, 2, 4, 8):
        return False
    data = value & 0xFFFFFFFF
    if size == 1:
        data &= 0xFF
    elif size == 2:
        data &= 0xFFFF
    offset &= 0xFF
    if offset == IOREGSEL:
        io.ioregsel = data & 0xFF
        return True
    if offset == IOWIN:
        ioapic_write_indirect(vm, writer, data, cause)
        return True
    return False
