"""irqlab as the VMM of a real split irqchip: QEMU's userspace IOAPIC on this host's /dev/kvm.

With KVM_CAP_SPLIT_IRQCHIP only the LAPICs are in the kernel. QEMU (8.0+, hw/intc/ioapic.c with
target/i386/kvm/kvm.c) plays the IOAPIC, and this module does what it does, running the
engine's own QEMU-flavour IOAPIC code (app.engine.ioapic_qemu and app.engine.vmm.Vmm) with
the real kernel underneath instead of the modelled one:

- at start, kvm_arch_init_irq_routing reserves GSIs 0..23 as MSI routes (address 0, data 0)
  and commits them (KVM_SET_GSI_ROUTING);
- the guest's accesses to the IOAPIC page arrive as KVM_EXIT_MMIO and are answered by
  ioapic_mem_read / ioapic_mem_write (IOREGSEL, IOWIN, the version-0x20 EOI register at 0x40);
- an RTE write runs ioapic_update_kvm_routes: the MSI route of every *unmasked* pin is
  rewritten from its RTE (ioapic_entry_parse, app.engine.msi.qemu_rte_to_msi) and the whole
  table committed with KVM_SET_GSI_ROUTING (which makes KVM rescan every vCPU: it builds the
  EOI-exit bitmaps from these level MSI routes), then ioapic_service runs over all pins.
  QEMU <= 7.2 re-serviced first and committed after every MMIO write; which one runs follows
  the engine's flag `qemu_routes_before_service`;
- ioapic_service delivers a pin with kvm_set_irq(kvm_state, pin, 1) (then 0 for an edge), i.e.
  KVM_IRQ_LINE_STATUS on the pin's GSI, which KVM turns into an MSI through the route just
  committed. (QEMU writes the MSI to its address space with stl_le_phys only when the irqchip
  is not split; hw/intc/ioapic.c, ioapic_service.) Remote IRR is set *before* that, as QEMU
  does, and an already-set Remote IRR coalesces;
- kvm_arch_handle_exit(KVM_EXIT_IOAPIC_EOI) runs ioapic_eoi_broadcast(vector): Remote IRR of
  every level pin with that vector is cleared, and a still-asserted, unmasked line re-serviced;
- resamplefds: KVM refuses KVM_IRQFD_FLAG_RESAMPLE with a split irqchip (kvm_arch_irqfd_allowed:
  resampling needs the in-kernel IOAPIC's ack notifiers), so QEMU's kvm_irqchip_assign_irqfd
  registers such an irqfd with KVM *without* the flag and keeps the resamplefd itself
  (kvm_resample_fd_insert); ioapic_eoi_broadcast then kicks it for every level pin with the EOIed
  vector (kvm_resample_fd_notify), before looking at Remote IRR. `register_resamplefd` is that
  list, and `notify_resampler` the kick (a write to the eventfd).

IRR, Remote IRR, the register file and the routing table irqlab committed live here; the
kernel holds the LAPICs (read with KVM_GET_LAPIC). KVM has no ioctl that reads routes back, so
`routes` is the table this VMM last committed, which is the kernel's table as long as nobody
else calls KVM_SET_GSI_ROUTING on the VM.
"""

from __future__ import annotations

import time as _time
from dataclasses import replace
from typing import Any

from app.engine import rte as R
from app.engine.events import VCPU_NAMES, EventLog
from app.engine.flags import Behaviour
from app.engine.ioapic_qemu import delayed_service, qemu_ioapic_set_irq
from app.engine.routing import qemu_initial_split_routes
from app.engine.state import IoapicState, RouteEntry
from app.engine.vmm import Vmm

from . import guest as G
from . import ioctl as K

IOAPIC_WINDOW = 0x1000  # QEMU maps a 4 KiB region for the IOAPIC (ioapic_realize)
QEMU_IOAPIC_VERSIONS = (0x11, 0x20)  # ioapic_realize accepts these; 0x20 is the default


class SplitVmmError(RuntimeError):
    """The guest did something this VMM has no device for (an MMIO access outside the IOAPIC
    page)."""


def routing_entries(table: dict[int, list[RouteEntry]]) -> list[K.KvmIrqRoutingEntry]:
    """The KVM_SET_GSI_ROUTING payload of a table, GSIs in ascending order. A split irqchip
    takes MSI routes only (KVM answers -EINVAL to irqchip routes), and QEMU's IOAPIC makes
    no others."""
    out: list[K.KvmIrqRoutingEntry] = []
    for gsi in sorted(table):
        for route in table[gsi]:
            if route[0] != "msi":
                raise ValueError(f"gsi {gsi}: a split irqchip takes MSI routes only")
            e = K.KvmIrqRoutingEntry(gsi=gsi, type=K.KVM_IRQ_ROUTING_MSI)
            e.u.msi.address_lo, e.u.msi.address_hi, e.u.msi.data = route[1], route[2], route[3]
            out.append(e)
    return out


class SplitVmm:
    """QEMU's IOAPIC and its KVM glue for one real split-irqchip VM (an
    app.engine.ioapic_qemu.QemuIoapicHost whose kernel is /dev/kvm).

    Each operation a caller drives may set `cause` to the seq of its own (root) event: the
    exits handled meanwhile name it as their cause, and `exits` lists what they did."""

    def __init__(
        self,
        vmfd: K.VmFd,
        *,
        version: int = 0x20,
        routes_before_service: bool = True,
        msi_ext_dest_id: bool = False,
        log: EventLog | None = None,
        cause: int | None = None,
    ) -> None:
        if version not in QEMU_IOAPIC_VERSIONS:
            raise ValueError("QEMU's IOAPIC accepts version 0x11 or 0x20")
        self.vmfd = vmfd
        self.ioapic = IoapicState("qemu", version)  # ioapic_reset_common: all pins masked
        self.log = log if log is not None else EventLog()
        self.outcome = "no-target"
        self.outcome_reason: str | None = None
        # Only the QEMU flag is read (by app.engine.vmm.Vmm); KVM's behaviour is the host's.
        self.flags = replace(Behaviour(), qemu_routes_before_service=routes_before_service)
        # QEMU's kvm-msi-ext-dest-id: on by default with the x2APIC API's 32-bit ids; its
        # routes then carry the RTE's extended destination in address_hi.
        self.msi_ext_dest_id = msi_ext_dest_id
        # QEMU's kvm_resample_fd_list: gsi -> times kicked, and the eventfd kicked.
        self.resamplers: dict[int, int] = {}
        self.resamplefds: dict[int, K.EventFd] = {}
        self.routes: dict[int, list[RouteEntry]] = {}
        self.core = Vmm()
        self.cause: int | None = None
        self.exits: list[dict[str, Any]] = []
        self._t0 = _time.monotonic()
        seq = self.log.emit("vmm", "init-irq-routing", cause, "gsis", K.KVM_IOAPIC_NUM_PINS)
        self.install_routes(qemu_initial_split_routes(), seq)

    # ---- QemuIoapicHost

    @property
    def time(self) -> int:
        """QEMU_CLOCK_VIRTUAL stand-in for the storm throttle: real microseconds since the VM
        was made (the guest runs in real time here)."""
        return int((_time.monotonic() - self._t0) * 1_000_000)

    def pins_with_vector(self, vector: int) -> list[int]:
        return [p for p, e in enumerate(self.ioapic.redir) if e & R.VECTOR_MASK == vector]

    def notify_resampler(self, gsi: int, cause: int | None) -> bool:
        """kvm_resample_fd_notify: kick the resamplefd registered for `gsi`, if any (QEMU's
        event_notifier_set: the eventfd's counter goes up by one)."""
        efd = self.resamplefds.get(gsi)
        if efd is None:
            return False
        efd.signal()
        self.resamplers[gsi] += 1
        self.log.emit("device", "resamplefd-signalled", cause, "gsi", gsi,
                      "count", self.resamplers[gsi])  # fmt: skip
        return True

    def register_resamplefd(self, gsi: int, efd: K.EventFd) -> None:
        """kvm_resample_fd_insert: QEMU keeps a split irqchip's resamplefds (KVM refuses
        them). One per GSI, as the model's resamplers; the caller owns and closes `efd`."""
        if gsi in self.resamplefds:
            raise ValueError(f"a resamplefd is already registered for gsi {gsi}")
        self.resamplefds[gsi] = efd
        self.resamplers[gsi] = 0
        self.log.emit("device", "resampler-registered", self.cause, "gsi", gsi)

    def routing_changed(self) -> None:
        """Nothing is derived from the RTEs here (pins_with_vector scans all 24 pins)."""

    def install_routes(self, table: dict[int, list[RouteEntry]], cause: int | None) -> None:
        """kvm_irqchip_commit_routes: the whole table with KVM_SET_GSI_ROUTING. In split mode
        the kernel then requests SCAN_IOAPIC on every vCPU (kvm_arch_irq_routing_update)."""
        entries = routing_entries(table)
        self.vmfd.set_gsi_routing(entries)
        self.routes = {g: list(es) for g, es in table.items()}
        self.log.emit("vmm", "KVM_SET_GSI_ROUTING", cause, "entries", len(entries))

    def vmm_set_irq(self, gsi: int, level: bool, cause: int | None) -> int:
        """kvm_set_irq(kvm_state, gsi, level): KVM_IRQ_LINE_STATUS; KVM delivers through the
        GSI's MSI route (kvm_set_msi; level 0 does nothing and answers -1)."""
        status = self.vmfd.irq_line_status(gsi, int(level))
        self.log.emit("vmm", "KVM_IRQ_LINE_STATUS", cause, "gsi", gsi, "level", int(level),
                      "status", status)  # fmt: skip
        return status

    # ---- the device side

    def set_irq(self, pin: int, level: int) -> dict[str, Any]:
        """A device drives input `pin` (QEMU's qemu_irq for it): ioapic_set_irq."""
        if not 0 <= pin < R.NUM_PINS:
            raise ValueError(f"pin must be 0..{R.NUM_PINS - 1}")
        if level not in (0, 1):
            raise ValueError("level must be 0 or 1")
        self.run_timers()
        seq = self.log.emit("device", "line", self.cause, "pin", pin, "level", level)
        io = self.ioapic
        io.irq_states[pin] = level  # userspace's source only: the level irqlab drives
        self.outcome = "no-target"
        self.outcome_reason = None
        out = qemu_ioapic_set_irq(self, pin, bool(level), seq)
        out["level"] = level
        out["outcome"] = self.outcome
        out["reason"] = self.outcome_reason
        target = 2 if pin == 0 else pin
        out["remote_irr"] = bool(io.redir[target] & R.REMOTE_IRR_BIT)
        # `status` is QEMU's ioapic_set_irq path (as the model reports it); `kvm_status` what
        # KVM answered to this pin's KVM_IRQ_LINE_STATUS(1), if ioapic_service issued one.
        out["kvm_status"] = next((d["kvm_set_irq"] for d in out.get("delivered", ())
                                  if d["pin"] == target), None)  # fmt: skip
        return out

    def run_timers(self) -> bool:
        """delayed_ioapic_service_cb, if the storm throttle's 10 ms have passed."""
        due = self.ioapic.delayed_at
        if due is None or due > self.time:
            return False
        delayed_service(self, self.cause)
        return True

    # ---- userspace exits (called from the vCPU's KVM_RUN loop)

    def mmio_exit(self, vcpu: int, gpa: int, write: bool, length: int, value: int) -> int | None:
        """KVM_EXIT_MMIO on the IOAPIC page: ioapic_mem_read / ioapic_mem_write through the
        VMM (an 8-byte access is split in two 4-byte ones, as QEMU's memory core does)."""
        offset = gpa - G.IOAPIC_BASE
        if not 0 <= offset < IOAPIC_WINDOW:
            raise SplitVmmError(f"MMIO {'write' if write else 'read'} at 0x{gpa:x}: no device "
                                "there (this VMM has the IOAPIC page only)")
        op = "write" if write else "read"
        seq = self.log.emit(VCPU_NAMES[vcpu], "KVM_EXIT_MMIO", self.cause, "gpa", gpa,
                            "op", op, "len", length, "value", value if write else None)  # fmt: skip
        did = self.core.handle_mmio(self, op, offset, length, value, seq)
        rec: dict[str, Any] = {"reason": "KVM_EXIT_MMIO", "vcpu": vcpu, "gpa": gpa, "op": op,
                               "len": length, **did}  # fmt: skip
        if write:
            rec["value"] = value
        self.exits.append(rec)
        if write:
            return None
        result: int = did["value"]
        self.log.emit("ioapic", "mmio-read", seq, "offset", offset & 0xFF, "value", result)
        return result

    def eoi_exit(self, vcpu: int, vector: int) -> list[dict[str, Any]]:
        """KVM_EXIT_IOAPIC_EOI: kvm_arch_handle_exit -> ioapic_eoi_broadcast(vector)."""
        seq = self.log.emit(VCPU_NAMES[vcpu], "KVM_EXIT_IOAPIC_EOI", self.cause,
                            "vector", vector)  # fmt: skip
        pins = self.core.handle_eoi_exit(self, vector, seq)
        self.exits.append({"reason": "KVM_EXIT_IOAPIC_EOI", "vcpu": vcpu, "vector": vector,
                           "ioapic": pins})  # fmt: skip
        return pins

    # ---- views

    def routes_view(self) -> list[tuple[int, RouteEntry]]:
        return [(g, r) for g in sorted(self.routes) for r in self.routes[g]]
