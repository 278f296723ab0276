"""One VM: its irqchips, vCPUs, routing table, behaviour flags and event log, and the
operations a client drives it with. Each operation logs a root event and passes its seq down
as the cause of everything it leads to."""

from __future__ import annotations

from typing import Any, NoReturn

from . import flags as F
from . import rte as R
from .apic_map import ApicMap, apic_id
from .bitmap import to_hex, vectors
from .errors import EngineError, ErrorKind, invalid, not_found
from .events import VCPU_NAMES, EventLog
from .ioapic_kvm import eoi_inject_work, ioapic_set_irq
from .ioapic_kvm import mmio_read as kvm_mmio_read
from .ioapic_kvm import mmio_write as kvm_mmio_write
from .ioapic_qemu import delayed_service, qemu_ioapic_set_irq
from .lapic import (
    acknowledge,
    guest_eoi,
    guest_exit,
    kernel_exit,
    lvr,
    ppr,
    pv_eoi_sync_to_guest,
    read_register,
    set_pv_eoi_msr,
    write_register,
)
from .requests import make_scan_request, vcpu_enter
from .routing import (
    build_table,
    default_kernel_routes,
    kvm_set_irq,
    kvm_set_msi,
    qemu_initial_split_routes,
    route_to_json,
)
from .scan import ScanTable, build_scan_table
from .state import (
    REQUEST_NAMES,
    SPIV_APIC_ENABLED,
    IoapicState,
    RouteEntry,
    Vcpu,
    VmConfig,
    requests_list,
)
from .vmm import Vmm

KVM_MAX_VCPUS = 4096
MAX_NR_RESERVED_IOAPIC_PINS = 4096  # KVM_MAX_IRQ_ROUTES
KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID = 1
MAX_IRQ_SOURCES = 64  # irq_states[] is an unsigned long per pin
SNAPSHOT_VERSION = 1


class Vm:
    def __init__(self, config: VmConfig, _empty: bool = False) -> None:
        self.config = config
        if _empty:  # clone() sets every other attribute itself
            return
        _validate_config(config)
        self.flags = F.resolve(config.profile, config.overrides)
        self._set_apic_virt()
        flavour = "kvm" if config.irqchip == "kernel" else "qemu"
        version = config.ioapic_version or (0x11 if flavour == "kvm" else 0x20)
        self.ioapic = IoapicState(flavour, version)
        self.vmm: Vmm | None = Vmm() if flavour == "qemu" else None
        self.vcpus = [Vcpu(i) for i in range(config.vcpus)]
        for v in self.vcpus:
            # Guests bring the LAPIC up before they route interrupts; start software-enabled
            # so a fresh VM can deliver without boilerplate (spurious vector 0xff).
            v.svr = SPIV_APIC_ENABLED | 0xFF
            if config.x2apic:
                v.x2apic = True
                v.ldr = ((v.idx >> 4) << 16) | (1 << (v.idx & 0xF))
        # Replaced whole on every change, never mutated in place (clones share it).
        self.routes: dict[int, list[RouteEntry]] = (
            default_kernel_routes() if flavour == "kvm" else qemu_initial_split_routes()
        )
        self.resamplers: dict[int, int] = {}  # gsi -> times the resamplefd was signalled
        self.time = 0  # logical microseconds; only advance_time moves it
        self.log = EventLog(config.event_log)
        self.accepted: list[int] = []  # vCPUs that accepted during the current operation
        # What the last line step came to, set by the transition that decided it.
        self.outcome = "no-target"
        self.outcome_reason: str | None = None
        self._map: ApicMap | None = None
        self._scan: ScanTable | None = None
        self._vec_pins: dict[int, list[int]] | None = None
        self.lazy_eoi_depth = 0  # ioapic_lazy_update_eoi calls under way (recursion guard)

    def _set_apic_virt(self) -> None:
        """Which APIC virtualization the vCPUs run with: `apicv_intel` (posted interrupts and
        the VMX EOI-exit bitmap), `avic` (AMD AVIC), or neither; `apic_virt` is
        kvm_apicv_activated. AVIC with the in-kernel irqchip needs avic_kernel_irqchip
        (v5.6): before it svm_get_enable_apicv refused, and the VM ran with a software
        LAPIC. Inhibit reasons that come and go at run time (PIT reinjection, an IRQ window
        for ExtINT, nested guests, x2APIC without x2AVIC) are not modelled: `avic` is an
        active AVIC."""
        mode = self.config.apicv
        self.apicv_intel = mode is True or mode == "apicv"
        self.avic = mode == "avic" and (
            self.config.irqchip == "split" or self.flags.avic_kernel_irqchip
        )
        self.apic_virt = self.apicv_intel or self.avic

    # ---- derived state ----

    def pins_with_vector(self, vector: int) -> list[int]:
        """IOAPIC pins whose current RTE holds `vector` (EOIs match pins by vector)."""
        if self._vec_pins is None:
            idx: dict[int, list[int]] = {}
            for pin, e in enumerate(self.ioapic.redir):
                idx.setdefault(e & 0xFF, []).append(pin)
            self._vec_pins = idx
        return self._vec_pins.get(vector, [])

    def apic_map(self) -> ApicMap:
        if self._map is None:
            self._map = ApicMap(self.vcpus, self.config.broadcast_quirk_disabled)
        return self._map

    def scan_table(self) -> ScanTable:
        if self._scan is None:
            self._scan = build_scan_table(self)
        return self._scan

    def routing_changed(self) -> None:
        """An RTE or route changed: derived scan targets and the vector index are stale."""
        self._scan = None
        self._vec_pins = None

    def apic_map_changed(self, cause: int | None) -> None:
        """kvm_recalculate_apic_map: rebuild the map and rescan every vCPU."""
        self._map = None
        self._scan = None
        seq = self.log.emit("kvm", "apic-map-recalculated", cause)
        make_scan_request(self, None, seq)

    def request_scan(self, targets: set[int] | None, cause: int | None) -> None:
        make_scan_request(self, targets, cause)

    @property
    def msi_ext_dest_id(self) -> bool:
        """QEMU turns kvm-msi-ext-dest-id on by default with a split irqchip whose x2APIC API
        (kvm_enable_x2apic: 32-bit ids) is enabled; irqlab's model of that API is
        x2apic_format."""
        return (
            self.flags.qemu_msi_ext_dest_id
            and self.config.x2apic_format
            and self.config.irqchip == "split"
        )

    def nr_rt_entries(self) -> int:
        return max(self.routes, default=-1) + 1

    def ioapic_pin_gsis(self) -> dict[int, int]:
        """kvm_irq_map_chip_pin for every IOAPIC pin that has one: setup_routing_entry records
        `chip[IOAPIC][pin] = gsi` for each irqchip entry in the order userspace passed them,
        so with several GSIs on one pin the last one wins and the others are invisible to
        ack notifiers and the unmask resampler. The model keeps routes by GSI, so "last" is
        taken as the highest GSI: the order QEMU submits its table in (snapshots too store
        routes by ascending GSI)."""
        out: dict[int, int] = {}
        for gsi in sorted(self.routes):
            for route in self.routes[gsi]:
                if route[0] == "irqchip" and route[1] == "ioapic":
                    out[route[2]] = gsi
        return out

    def ack_notifier_pins(self) -> set[int]:
        """IOAPIC pins with an ack notifier (kvm_irq_has_notifier: the pin's GSI through
        kvm_irq_map_chip_pin has an irqfd resampler)."""
        if not self.resamplers:
            return set()
        return {pin for pin, gsi in self.ioapic_pin_gsis().items() if gsi in self.resamplers}

    def notify_acked(self, pin: int, cause: int | None) -> None:
        """kvm_notify_acked_irq for an IOAPIC pin: the ack notifiers of the pin's GSI
        (kvm_irq_map_chip_pin) run; the irqfd resampler deasserts its source and signals the
        resamplefd."""
        gsi = self.ioapic_pin_gsis().get(pin, -1)
        if gsi in self.resamplers:
            seq = self._signal_resampler(gsi, cause)
            ioapic_set_irq(self, pin, KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID, False, seq)

    def notify_resampler(self, gsi: int, cause: int | None) -> bool:
        """kvm_notify_irqfd_resampler (in-kernel unmask) or QEMU's kvm_resample_fd_notify
        (split EOI): signal the resamplefd registered for the GSI, if any."""
        if gsi not in self.resamplers:
            return False
        self._signal_resampler(gsi, cause)
        return True

    def _signal_resampler(self, gsi: int, cause: int | None) -> int:
        self.resamplers[gsi] += 1
        return self.log.emit(
            "device", "resamplefd-signalled", cause, "gsi", gsi, "count", self.resamplers[gsi]
        )

    def install_routes(self, table: dict[int, list[RouteEntry]], cause: int | None) -> None:
        """kvm_set_irq_routing: publish the table; in split mode kvm_arch_irq_routing_update
        requests SCAN_IOAPIC on every vCPU."""
        self.routes = table
        self._scan = None
        seq = self.log.emit("kvm", "routing-updated", cause, "gsis", len(table))
        if self.config.irqchip == "split":
            make_scan_request(self, None, seq)

    def vmm_set_irq(self, gsi: int, level: bool, cause: int | None) -> int:
        """QEMU's kvm_set_irq for its split-mode ioapic_service: KVM_IRQ_LINE_STATUS with
        userspace's source id, through the modelled routing table."""
        return kvm_set_irq(self, 0, gsi, level, cause)

    def vcpu(self, n: int) -> Vcpu:
        if not 0 <= n < len(self.vcpus) or n is True or n is False:
            raise not_found(f"vCPU {n} does not exist (this VM has {len(self.vcpus)})", "vcpu")
        return self.vcpus[n]

    # ---- device side ----

    def set_line(
        self, pin: int, level: int | None = None, action: str | None = None, source: int = 0
    ) -> dict[str, Any]:
        """Drive the IOAPIC input pin from a device: a level (0/1) or assert/deassert/pulse.
        The in-kernel IOAPIC ORs the levels of all IRQ sources of a pin (irq_states)."""
        _check_pin(pin)
        if not 0 <= source < MAX_IRQ_SOURCES:
            raise invalid(f"source must be 0..{MAX_IRQ_SOURCES - 1}", "source")
        if action is None:
            if level == 1:
                levels = _HIGH
            elif level == 0:
                levels = _LOW
            else:
                raise invalid("level must be 0 or 1", "level")
        elif action in _ACTIONS:
            levels = _ACTIONS[action]
        else:
            raise invalid("action must be assert, deassert or pulse", "action")
        results = []
        outcome: dict[str, Any]
        for lv in levels:
            seq = self.log.emit(
                "device", "line", None, "pin", pin, "level", int(lv), "source", source
            )
            self._begin_line_step()
            if self.ioapic.flavour == "kvm":
                # KVM_IRQ_LINE_STATUS (line_status) comes from userspace's source id 0;
                # other sources stand for in-kernel devices such as the PIT (no status).
                ret = ioapic_set_irq(self, pin, source, lv, seq, source == 0)
                outcome = {"level": int(lv), "status": ret}
            else:
                io = self.ioapic
                if lv:
                    io.irq_states[pin] |= 1 << source
                else:
                    io.irq_states[pin] &= ~(1 << source)
                outcome = qemu_ioapic_set_irq(self, pin, bool(io.irq_states[pin]), seq)
                outcome["level"] = int(lv)
            outcome["delivered_to"] = sorted(set(self.accepted))
            # Set by the transition that decided: delivered, coalesced, blocked (masked or
            # Remote IRR), dropped (a masked edge in QEMU), lowered, or no-target.
            outcome["outcome"] = self.outcome
            outcome["reason"] = self.outcome_reason
            results.append(outcome)
        target = 2 if pin == 0 and self.ioapic.flavour == "qemu" else pin
        return {
            "pin": pin,
            "source": source,
            "steps": results,
            "remote_irr": bool(self.ioapic.redir[target] & R.REMOTE_IRR_BIT),
        }

    def _begin_line_step(self) -> None:
        # A method rather than inline assignments: mypy (and so mypyc) would narrow
        # self.outcome_reason to None across the transition call that sets it.
        self.accepted = []
        self.outcome = "no-target"
        self.outcome_reason = None

    def irq_line(self, gsi: int, level: int, source: int = 0) -> dict[str, Any]:
        """KVM_IRQ_LINE_STATUS: kvm_set_irq through the routing table."""
        if level not in (0, 1):
            raise invalid("level must be 0 or 1", "level")
        if not 0 <= gsi < 4096:
            raise invalid("gsi must be 0..4095", "gsi")
        seq = self.log.emit("device", "irq-line", None, "gsi", gsi, "level", level)
        self.accepted = []
        status = kvm_set_irq(self, source, gsi, bool(level), seq, source == 0)
        return {"gsi": gsi, "status": status, "delivered_to": sorted(set(self.accepted))}

    def signal_msi(self, address_lo: int, address_hi: int, data: int) -> dict[str, Any]:
        """KVM_SIGNAL_MSI."""
        if self.config.x2apic_format and address_hi & 0xFF:
            raise invalid(
                "address_hi bits 7:0 must be zero with 32-bit x2APIC ids (-EINVAL)", "address_hi"
            )
        seq = self.log.emit(
            "device",
            "signal-msi",
            None,
            "address_lo",
            address_lo,
            "address_hi",
            address_hi,
            "data",
            data,
        )
        self.accepted = []
        status = kvm_set_msi(self, address_lo, address_hi, data, True, seq)
        return {"status": status, "delivered_to": sorted(set(self.accepted))}

    def set_routes(self, entries: list[RouteEntry]) -> dict[str, Any]:
        """KVM_SET_GSI_ROUTING: replaces the whole table."""
        table = build_table(entries, self.config.irqchip == "split", self.config.x2apic_format)
        seq = self.log.emit("vmm", "set-gsi-routing", None, "entries", len(entries))
        self.install_routes(table, seq)
        return self.routes_view()

    def create_irqchip(self, mode: str, nr_reserved_ioapic_pins: int = 24) -> NoReturn:
        """KVM_CREATE_IRQCHIP (mode "kernel") or KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP) (mode
        "split") on this VM. Every irqlab VM gets its irqchip when it is created, so KVM's
        answer is -EEXIST, after the argument check kvm_vm_ioctl_enable_cap makes first."""
        if mode not in ("kernel", "split"):
            raise invalid("mode must be kernel or split", "mode")
        if mode == "split" and not 0 <= nr_reserved_ioapic_pins <= MAX_NR_RESERVED_IOAPIC_PINS:
            raise invalid("nr_reserved_ioapic_pins above MAX_NR_RESERVED_IOAPIC_PINS (4096): "
                          "KVM_CAP_SPLIT_IRQCHIP returns -EINVAL", "nr_reserved_ioapic_pins")
        raise EngineError(
            ErrorKind.EXISTS,
            f"the VM already has a{'n in-kernel' if self.config.irqchip == 'kernel' else ' split'}"
            f" irqchip: {'KVM_CREATE_IRQCHIP' if mode == 'kernel' else 'KVM_CAP_SPLIT_IRQCHIP'}"
            " returns -EEXIST",
            "mode",
        )

    def register_resampler(self, gsi: int) -> None:
        """KVM_IRQFD with KVM_IRQFD_FLAG_RESAMPLE (in-kernel), or a split-mode resamplefd
        registered with the VMM. Registering an ack notifier rescans every vCPU in-kernel."""
        # Both refusals are irqlab's rules: KVM_IRQFD takes any GSI (no route can exist at
        # 4096 or above, so such a resampler could never fire) and shares a GSI's resampler
        # between irqfds, whereas irqlab keeps one per GSI so that its count is the GSI's.
        if not 0 <= gsi < 4096:
            raise EngineError(ErrorKind.INVALID, "gsi must be 0..4095 (irqlab's range; no GSI "
                              "route can exist above KVM_MAX_IRQ_ROUTES)", "gsi",
                              irqlab_rule=True)
        if gsi in self.resamplers:
            raise EngineError(
                ErrorKind.EXISTS, f"a resampler is already registered for gsi {gsi} (irqlab's "
                "rule: one per GSI)", "gsi", irqlab_rule=True)
        self.resamplers[gsi] = 0
        seq = self.log.emit("device", "resampler-registered", None, "gsi", gsi)
        if self.config.irqchip == "kernel":
            self._scan = None
            make_scan_request(self, None, seq)

    def irqfd_assert(self, gsi: int) -> dict[str, Any]:
        """An irqfd with a resampler fires: kvm_set_irq(KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID, 1)."""
        if gsi not in self.resamplers:
            raise not_found(f"no resampler registered for gsi {gsi}", "gsi")
        seq = self.log.emit("device", "irqfd", None, "gsi", gsi)
        self.accepted = []
        status = kvm_set_irq(self, KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID, gsi, True, seq)
        return {"gsi": gsi, "status": status, "delivered_to": sorted(set(self.accepted))}

    def advance_time(self, us: int) -> dict[str, Any]:
        """Move logical time forward, running the throttled re-injection when it is due."""
        if us < 0:
            raise invalid("time only moves forward", "us")
        self.time += us
        seq = self.log.emit("clock", "advance", None, "us", us, "now", self.time)
        ran = False
        io = self.ioapic
        if io.delayed_at is not None and io.delayed_at <= self.time:
            ran = True
            if io.flavour == "kvm":
                eoi_inject_work(self, seq)
            else:
                delayed_service(self, seq)
        return {"now": self.time, "ran_delayed_injection": ran}

    # ---- guest side (a vCPU acts only as guest code) ----

    def _as_guest(self, v: Vcpu, cause: int) -> list[dict[str, Any]]:
        if v.requests or not v.in_guest:
            return vcpu_enter(self, v, cause)
        return []

    def enter(self, n: int, until_exit: bool = False) -> dict[str, Any]:
        """KVM_RUN without acting: consume pending requests (and handle any EOI exit). With
        until_exit, stop at a KVM_EXIT_IOAPIC_EOI and leave it for vmm_eoi_exit."""
        v = self.vcpu(n)
        seq = self.log.emit(
            VCPU_NAMES[n], "enter", None, "requests", tuple(requests_list(v.requests))
        )
        exits = vcpu_enter(self, v, seq, until_exit)
        return {"vcpu": n, "exits": exits, "pending_requests": requests_list(v.requests)}

    def vmm_eoi_exit(self, n: int) -> dict[str, Any]:
        """The VMM handles the KVM_EXIT_IOAPIC_EOI that vCPU n's KVM_RUN returned (enter with
        until_exit): QEMU's kvm_arch_handle_exit reads run->eoi.vector, which KVM filled from
        vcpu->arch.pending_ioapic_eoi, and calls ioapic_eoi_broadcast. The vCPU re-enters at
        its next step."""
        v = self.vcpu(n)
        if self.vmm is None:
            raise invalid("KVM_EXIT_IOAPIC_EOI exists only with a split irqchip", "op")
        vec = v.pending_ioapic_eoi
        seq = self.log.emit("vmm", "handle-eoi-exit", None, "vcpu", n, "vector", vec)
        return {"vcpu": n, "vector": vec, "ioapic": self.vmm.handle_eoi_exit(self, vec, seq)}

    def exit_guest(self, n: int) -> dict[str, Any]:
        """The vCPU leaves guest mode (halts or runs host code): posted interrupts now wait in
        the PIR until its next entry."""
        v = self.vcpu(n)
        seq = self.log.emit(VCPU_NAMES[n], "exit", None)
        guest_exit(self, v, seq)
        return {"vcpu": n, "in_guest": False}

    def set_pv_eoi(self, n: int, value: int) -> dict[str, Any]:
        """The guest writes MSR_KVM_PV_EOI_EN (bit 0 enables PV EOI, the rest is the
        4-byte aligned address of its flag word)."""
        v = self.vcpu(n)
        if not 0 <= value < 1 << 64:
            raise invalid("MSR values are 64-bit", "value")
        seq = self.log.emit(VCPU_NAMES[n], "pv-eoi-msr-op", None, "value", value)
        exits = self._as_guest(v, seq)
        result = set_pv_eoi_msr(self, v, value, seq)
        result["entry_exits"] = exits
        return result

    def ack(self, n: int) -> dict[str, Any]:
        """The guest opens an interrupt window and takes the highest deliverable interrupt."""
        v = self.vcpu(n)
        seq = self.log.reserve()
        exits = self._as_guest(v, seq) if v.requests or not v.in_guest else []
        vec = acknowledge(self, v, seq, emit=False)
        self.log.fill(seq, VCPU_NAMES[n], "ack", None, "vector", vec)
        if vec is not None and v.pv_eoi_en:
            # The injection happens on an entry that handles KVM_REQ_EVENT, and that entry
            # ends with kvm_lapic_sync_to_vapic.
            pv_eoi_sync_to_guest(self, v, seq)
        out: dict[str, Any] = {"vcpu": n, "vector": vec, "entry_exits": exits}
        if vec is not None and self.flags.lapic_auto_eoi:
            # The handler's first exit (irqlab's stub reports the vector) re-enters the vCPU,
            # and that entry handles what the auto-EOI requested: in split mode the
            # KVM_EXIT_IOAPIC_EOI arrives within the ack, as measured on kvm_pvm.
            out["exits"] = vcpu_enter(self, v, seq) if v.requests else []
        return out

    def eoi(self, n: int, run_exits: bool = False) -> dict[str, Any]:
        """The guest writes the LAPIC EOI register. With run_exits, the vCPU then re-enters so
        that a pending KVM_EXIT_IOAPIC_EOI reaches the VMM within this call."""
        v = self.vcpu(n)
        seq = self.log.reserve()
        exits = self._as_guest(v, seq) if v.requests or not v.in_guest else []
        result = guest_eoi(self, v, seq)
        self.log.fill(
            seq,
            VCPU_NAMES[n],
            "eoi",
            None,
            "vector",
            result["vector"],
            "level",
            result.get("level"),
            "path",
            result["path"],
        )
        result["vcpu"] = n
        result["entry_exits"] = exits
        if run_exits:
            result["exits"] = vcpu_enter(self, v, seq) if v.requests else []
        result["pending_requests"] = requests_list(v.requests)
        return result

    def lapic_write(self, n: int, reg: str, value: int) -> dict[str, Any]:
        v = self.vcpu(n)
        seq = self.log.emit(VCPU_NAMES[n], "lapic-write-op", None, "reg", reg)
        exits = self._as_guest(v, seq)
        result = write_register(self, v, reg, value, seq)
        result["entry_exits"] = exits
        return result

    def mmio(self, n: int, op: str, offset: int, size: int, value: int = 0) -> dict[str, Any]:
        """A guest access to the IOAPIC page (offset within it). In-kernel it is handled by
        KVM; in split mode it is a KVM_EXIT_MMIO the VMM handles."""
        v = self.vcpu(n)
        if op not in ("read", "write"):
            raise invalid("op must be read or write", "op")
        if not 0 <= offset < 0x100:
            raise invalid("offset must be within the 0x100-byte IOAPIC window", "offset")
        if size not in (1, 2, 4, 8):
            raise invalid("size must be 1, 2, 4 or 8", "size")
        if not 0 <= value < 1 << (8 * size):
            raise invalid(f"value does not fit in {size} bytes", "value")
        seq = self.log.emit(
            VCPU_NAMES[n],
            "ioapic-mmio",
            None,
            "op",
            op,
            "offset",
            offset,
            "size",
            size,
            "value",
            value,
        )
        exits = self._as_guest(v, seq)
        out: dict[str, Any] = {
            "vcpu": n,
            "op": op,
            "offset": offset,
            "size": size,
            "entry_exits": exits,
        }
        if self.vmm is None:
            kernel_exit(self, v, seq)  # an exit KVM's in-kernel IOAPIC handles
            if op == "read":
                out["value"] = kvm_mmio_read(self, offset, size)
            else:
                out["accepted"] = kvm_mmio_write(self, v, offset, size, value, seq)
        else:
            guest_exit(self, v, seq)  # KVM_EXIT_MMIO to the VMM
            out.update(self.vmm.handle_mmio(self, op, offset, size, value, seq))
        return out

    def write_rte(
        self,
        n: int,
        pin: int,
        entry: int,
        halves: tuple[str, ...] = ("low", "high"),
    ) -> dict[str, Any]:
        """Write an RTE as a guest does: IOREGSEL then IOWIN, once per half, in the given order
        (Linux's ioapic_write_entry writes high then low)."""
        _check_pin(pin)
        if not 0 <= entry < 1 << 64:
            raise invalid("entry must be a 64-bit value", "raw")
        for h in halves:
            if h not in ("low", "high"):
                raise invalid("halves must be low and/or high", "order")
            index = 0x10 + 2 * pin + (1 if h == "high" else 0)
            self.mmio(n, "write", 0x00, 4, index)
            value = (entry >> 32) if h == "high" else entry & 0xFFFFFFFF
            self.mmio(n, "write", 0x10, 4, value)
        return self.pin_view(pin)

    def patch_rte(
        self, n: int, pin: int, changes: dict[str, Any], order: str = "low-first"
    ) -> dict[str, Any]:
        """Write only the dwords that hold the changed fields."""
        _check_pin(pin)
        entry = R.patch(self.ioapic.redir[pin], changes)
        return self.write_rte(n, pin, entry, R.patch_halves(changes, order))

    # ---- views ----

    def pin_view(self, pin: int) -> dict[str, Any]:
        io = self.ioapic
        d = R.decode(io.redir[pin])
        d["pin"] = pin
        d["line"] = int(bool(io.irq_states[pin]))
        d["sources"] = [s for s in range(MAX_IRQ_SOURCES) if io.irq_states[pin] >> s & 1]
        d["irr"] = bool(io.irr >> pin & 1)
        d["eoi_count"] = io.irq_eoi[pin]
        return d

    def ioapic_view(self) -> dict[str, Any]:
        io = self.ioapic
        return {
            "flavour": io.flavour,
            "id": io.id,
            "version": io.version,
            "ioregsel": io.ioregsel,
            "irr": io.irr,
            "delayed_injection_at": io.delayed_at,
            "pins": [self.pin_view(p) for p in range(R.NUM_PINS)],
        }

    def vcpu_view(self, n: int) -> dict[str, Any]:
        v = self.vcpu(n)
        return {
            "vcpu": n,
            "apic_id": apic_id(v),
            "x2apic": v.x2apic,
            "enabled": v.apic_base_enabled,
            "sw_enabled": bool(v.svr & SPIV_APIC_ENABLED),
            "ldr": read_register(self, v, "ldr"),
            "dfr": v.dfr,
            "tpr": v.tpr,
            "ppr": ppr(v),
            "svr": v.svr,
            "lvr": lvr(self),
            "irr": bitmap_view(v.irr),
            "isr": bitmap_view(v.isr),
            "tmr": bitmap_view(v.tmr),
            "pir": bitmap_view(v.pir),
            "handled_vectors": bitmap_view(v.handled),
            "eoi_exit_bitmap": bitmap_view(v.eoi_exitmap),
            "pending_requests": requests_list(v.requests),
            "pending_ioapic_eoi": v.pending_ioapic_eoi,
            "highest_stale_pending_ioapic_eoi": v.highest_stale,
            "highest_isr_cache": v.isr_cache,
            "pv_eoi_enabled": v.pv_eoi_en,
            "pv_eoi": PV_EOI_STATES[v.pv_eoi],
            "in_guest": v.in_guest,
            "arb_prio": v.arb_prio,
            "nmi_count": v.nmi_count,
            "smi_count": v.smi_count,
            "init_count": v.init_count,
        }

    def bitmaps(self) -> dict[str, Any]:
        pins = [p for p, e in enumerate(self.ioapic.redir) if e & R.REMOTE_IRR_BIT]
        mask = sum(1 << p for p in pins)
        return {
            "remote_irr": {"pins": pins, "hex": f"0x{mask:06x}"},
            "handled_vectors": [{"vcpu": v.idx, **bitmap_view(v.handled)} for v in self.vcpus],
        }

    def routes_view(self) -> dict[str, Any]:
        fmt = self.config.x2apic_format
        return {
            "entries": [
                {"gsi": gsi, **route_to_json(r, fmt)}
                for gsi in sorted(self.routes)
                for r in self.routes[gsi]
            ]
        }

    def summary(self) -> dict[str, Any]:
        return {
            **self.config.to_dict(),
            "flags": F.as_dict(self.flags),
            "time": self.time,
            "events": self.log.next_seq - 1,
        }

    def state(self) -> dict[str, Any]:
        return {
            "config": self.summary(),
            "ioapic": self.ioapic_view(),
            "vcpus": [self.vcpu_view(i) for i in range(len(self.vcpus))],
            "routes": self.routes_view()["entries"],
            "bitmaps": self.bitmaps(),
            "resamplers": [{"gsi": g, "signalled": c} for g, c in sorted(self.resamplers.items())],
        }

    # ---- copy, hash, snapshot ----

    def key(self) -> tuple[Any, ...]:
        """Everything that determines future behaviour (not the event log)."""
        return (
            self.ioapic.key(),
            tuple(v.key() for v in self.vcpus),
            tuple((g, tuple(es)) for g, es in sorted(self.routes.items())),
            tuple(sorted(self.resamplers.items())),
            self.time,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vm) and self.snapshot() == other.snapshot()

    __hash__ = None  # type: ignore[assignment]

    def clone(self) -> Vm:
        c = self.shell()
        c.ioapic = self.ioapic.clone()
        c.vcpus = [v.clone() for v in self.vcpus]
        return c

    def shell(self) -> Vm:
        """A copy without its IOAPIC and vCPUs, which the caller sets (clone, or the
        explorer's decoding of a shipped state: app/engine/keyparts.py)."""
        c = Vm(self.config, _empty=True)
        c.flags = self.flags
        c.apicv_intel = self.apicv_intel
        c.avic = self.avic
        c.apic_virt = self.apic_virt
        c.vmm = self.vmm
        # Shared, not copied: a routing table is replaced whole (install_routes, restore) and
        # never mutated in place, so a clone and its original may hold the same one. The
        # explorer clones once per transition and the split table has 24 routes.
        c.routes = self.routes
        c.resamplers = dict(self.resamplers)
        c.time = self.time
        c.log = self.log.clone()
        c.accepted = []
        c.outcome = "no-target"
        c.outcome_reason = None
        c._map = None
        c._scan = None
        c._vec_pins = None
        c.lazy_eoi_depth = 0
        return c

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "config": self.config.to_dict(),
            "ioapic": self.ioapic.to_dict(),
            "vcpus": [v.to_dict() for v in self.vcpus],
            "routes": [[g, [list(r) for r in es]] for g, es in sorted(self.routes.items())],
            "resamplers": [[g, c] for g, c in sorted(self.resamplers.items())],
            "time": self.time,
            "log": {
                "next_seq": self.log.next_seq,
                "base": self.log.base,
                "events": [list(e) for e in self.log.events],
            },
        }

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> Vm:
        if not isinstance(snap, dict) or snap.get("version") != SNAPSHOT_VERSION:
            raise invalid(f"snapshot version must be {SNAPSHOT_VERSION}", "version")
        try:
            vm = cls(config_from_dict(snap["config"]))
            io = IoapicState.from_dict(snap["ioapic"])
            if io.flavour != vm.ioapic.flavour or len(io.redir) != R.NUM_PINS:
                raise invalid("snapshot IOAPIC does not match its irqchip mode", "ioapic")
            vm.ioapic = io
            vcpus = [Vcpu.from_dict(d) for d in snap["vcpus"]]
            if len(vcpus) != vm.config.vcpus or any(v.idx != i for i, v in enumerate(vcpus)):
                raise invalid("snapshot vCPUs do not match its config", "vcpus")
            vm.vcpus = vcpus
            vm.routes = {int(g): [tuple(r) for r in es] for g, es in snap["routes"]}
            vm.resamplers = {int(g): int(c) for g, c in snap["resamplers"]}
            vm.time = int(snap["time"])
            _restore_log(vm, snap["log"])
        except EngineError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise invalid(f"malformed snapshot: {exc!r}", "snapshot") from exc
        return vm


APICV_MODES = ("apicv", "avic")
# vcpu_view's names for Vcpu.pv_eoi (state.PV_EOI_OFF / _ARMED / _TAKEN).
PV_EOI_STATES = ("off", "armed", "guest-eoi-pending-sync")

_HIGH: tuple[bool, ...] = (True,)
_LOW: tuple[bool, ...] = (False,)
_ACTIONS: dict[str, tuple[bool, ...]] = {"assert": _HIGH, "deassert": _LOW, "pulse": (True, False)}


def _restore_log(vm: Vm, log: dict[str, Any]) -> None:
    """Install a snapshot's event log: flat events [seq, actor, kind, cause, name, value, ...]
    with consecutive seqs below next_seq."""
    next_seq = log["next_seq"]
    if type(next_seq) is not int or next_seq < 1:
        raise invalid("log.next_seq must be a positive integer", "log.next_seq")
    events: list[tuple[Any, ...]] = []
    for i, e in enumerate(log["events"]):
        ok = (
            isinstance(e, list) and len(e) >= 4 and len(e) % 2 == 0
            and type(e[0]) is int and isinstance(e[1], str) and isinstance(e[2], str)
            and (e[3] is None or type(e[3]) is int)
            and all(isinstance(k, str) for k in e[4::2])
        )  # fmt: skip
        if not ok:
            raise invalid(
                "an event is [seq, actor, kind, cause, name, value, ...]", f"log.events[{i}]"
            )
        # JSON has no tuples: tuple-valued fields (e.g. enter's requests) come back as lists.
        events.append(tuple(tuple(x) if isinstance(x, list) else x for x in e))
    base = events[0][0] if events else log.get("base", next_seq)
    if (
        type(base) is not int
        or any(e[0] != base + i for i, e in enumerate(events))
        or (events and events[-1][0] >= next_seq)
    ):
        raise invalid("event seqs must be consecutive and below log.next_seq", "log.events")
    vm.log.events = events
    vm.log.base = base
    vm.log.next_seq = next_seq


def bitmap_view(bits: int) -> dict[str, Any]:
    return {"vectors": vectors(bits), "hex": to_hex(bits)}


def _check_pin(pin: int) -> None:
    if not 0 <= pin < R.NUM_PINS:
        raise invalid(f"pin must be 0..{R.NUM_PINS - 1}", "pin")


_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "vcpus": (int,),
    "nr_reserved_ioapic_pins": (int,),
    "ioapic_version": (int, type(None)),
    "irqchip": (str,),
    "apicv": (bool, str),
    "profile": (str,),
    "overrides": (dict,),
    **{name: (bool,) for name in ("x2apic", "x2apic_cpuid", "x2apic_format",
                                  "broadcast_quirk_disabled", "vector_hashing", "event_log")},
}


_KIND_WORDS: dict[type, str] = {int: "an integer", bool: "true or false", str: "a string",
                                dict: "an object", type(None): "null"}


def _check_config_types(values: dict[str, Any]) -> None:
    for name, value in values.items():
        kinds = _CONFIG_TYPES.get(name)
        if kinds is not None and type(value) not in kinds:
            raise invalid(f"{name} must be {' or '.join(_KIND_WORDS[k] for k in kinds)}", name)


def config_from_dict(d: dict[str, Any]) -> VmConfig:
    """A VmConfig from untrusted data (a scenario's vm block, a snapshot): a field of the wrong
    type is an EngineError naming it, before the compiled dataclass would raise TypeError.
    Unknown fields still raise TypeError, as the constructor does."""
    _check_config_types(d)
    return VmConfig(**d)


def _validate_config(c: VmConfig) -> None:
    _check_config_types(c.to_dict())  # a VmConfig built directly by pure-Python callers
    if c.irqchip not in ("kernel", "split"):
        raise invalid("irqchip must be kernel or split", "irqchip")
    if isinstance(c.apicv, str) and c.apicv not in APICV_MODES:
        raise invalid("apicv must be false, true (Intel APICv), \"apicv\" or \"avic\" "
                      "(AMD AVIC)", "apicv")
    if not 1 <= c.vcpus <= KVM_MAX_VCPUS:
        raise invalid(f"vcpus must be 1..{KVM_MAX_VCPUS} (KVM_MAX_VCPUS)", "vcpus")
    if c.vcpus > 255 and not c.x2apic:
        raise invalid(
            "more than 255 vCPUs need x2apic: true (xAPIC ids are 8-bit, 0xff is broadcast)",
            "x2apic",
        )
    if not 0 <= c.nr_reserved_ioapic_pins <= MAX_NR_RESERVED_IOAPIC_PINS:
        raise invalid(
            "nr_reserved_ioapic_pins must be <= MAX_NR_RESERVED_IOAPIC_PINS (4096), "
            "KVM_CAP_SPLIT_IRQCHIP returns -EINVAL",
            "nr_reserved_ioapic_pins",
        )
    if c.irqchip == "kernel" and c.nr_reserved_ioapic_pins != R.NUM_PINS:
        raise invalid(
            "nr_reserved_ioapic_pins applies to the split irqchip only", "nr_reserved_ioapic_pins"
        )
    if c.ioapic_version is not None:
        allowed = (0x11,) if c.irqchip == "kernel" else (0x11, 0x20)
        if c.ioapic_version not in allowed:
            raise invalid(
                "ioapic_version must be 0x11 for KVM's in-kernel IOAPIC"
                if c.irqchip == "kernel"
                else "QEMU's IOAPIC accepts version 0x11 or 0x20",
                "ioapic_version",
            )
    if c.overrides.get("split_suppress_eoi_broadcast") and c.irqchip != "split":
        raise invalid(
            "KVM_X2APIC_ENABLE_SUPPRESS_EOI_BROADCAST requires a split irqchip (-EINVAL)",
            "overrides.split_suppress_eoi_broadcast",
        )
    if c.overrides.get("split_suppress_eoi_broadcast") and c.overrides.get(
        "suppress_eoi_broadcast_disabled"
    ):
        raise invalid(
            "KVM_X2APIC_ENABLE_SUPPRESS_EOI_BROADCAST and "
            "KVM_X2APIC_DISABLE_SUPPRESS_EOI_BROADCAST together are rejected (-EINVAL)",
            "overrides.suppress_eoi_broadcast_disabled",
        )


__all__ = ["REQUEST_NAMES", "Vm", "VmConfig"]
