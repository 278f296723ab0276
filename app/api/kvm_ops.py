"""The kvm backend of the REST API (`"backend": "kvm"`): the same operations as `ops.py`, on a
real VM on this host's /dev/kvm (`app.kvm.vm.KvmVm`, irqlab's own guest), with the in-kernel
irqchip or with the split irqchip, where irqlab is the VMM (app.kvm.split_vmm: QEMU's
userspace IOAPIC from the engine, on the real kernel).

State is read from the kernel: KVM_GET_LAPIC (IRR, ISR, TMR, PPR, TPR, SVR, LDR, DFR, LVR) and
KVM_GET_IRQCHIP (the in-kernel IOAPIC with Remote IRR); in split mode the IOAPIC is irqlab's
own and so is the routing table (the one it committed). What the kernel does not expose (the
handled-vector bitmap, pending requests, the PIR, ...) is reported as null. Each operation
appends one root event holding what the kernel reported; in split mode the userspace exits it
caused (KVM_EXIT_MMIO, KVM_EXIT_IOAPIC_EOI) and what the VMM did with them follow it, with
the root as their cause.

Every call here blocks in the kernel (KVM_RUN for guest-side operations), so the registry
runs kvm work in a worker thread, never on the event loop. Operations this backend cannot do
raise one EngineError kind (UNSUPPORTED -> 409 `unsupported`); a refused ioctl or a failed
guest becomes `KvmFailure` (400 with `kvm_errno` or `kvm_failure`).
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from fastapi import Request

from app.engine import flags as F
from app.engine import rte as R
from app.engine.bitmap import to_hex, vectors
from app.engine.errors import EngineError, ErrorKind, invalid, not_found
from app.engine.events import VCPU_NAMES, EventLog
from app.engine.msi import LapicIrq, irq_to_msi
from app.engine.routing import route_to_json
from app.kvm import detect
from app.kvm import guest as G
from app.kvm.split_vmm import QEMU_IOAPIC_VERSIONS
from app.kvm.vm import LAPIC_OFFSETS, KvmVm, KvmVmError, ensure_kick_handler

from . import models as M
from .problems import KvmFailure

log = logging.getLogger("irqlab.kvm")

NUM_PINS = 24
GSI_MAX = 4095  # the model's range for resampler GSIs (Vm.register_resampler)
LVR = 0x30  # LAPIC version register offset in the KVM_GET_LAPIC page
# VmCreate fields that configure the model only: on the kvm backend the host kernel decides.
# (x2apic, x2apic_cpuid, x2apic_format and broadcast_quirk_disabled are not among them: they
# are the VMM's choices, KVM_SET_CPUID2 and KVM_CAP_X2APIC_API, and irqlab's guest switches
# itself to x2APIC mode.)
MODEL_ONLY = ("profile", "overrides", "apicv", "nr_reserved_ioapic_pins", "ioapic_version",
              "vector_hashing")
# With a split irqchip irqlab is the VMM: its IOAPIC's version and QEMU's behaviour flags are
# irqlab's to choose (the kernel's flags are still the host's).
SPLIT_VMM_FIELDS = ("ioapic_version", "overrides")
QEMU_FLAGS = tuple(f.name for f in F.FLAGS.values() if f.component == "qemu")


def unsupported(detail: str, field: str | None = None) -> EngineError:
    return EngineError(ErrorKind.UNSUPPORTED, detail, field)


def unsupported_route(request: Request) -> EngineError:
    return unsupported(f"{request.method} {request.url.path} is not available on the kvm "
                       "backend (only the model backend implements it)")


def _bitmap(bits: int) -> dict[str, Any]:
    return {"vectors": vectors(bits), "hex": to_hex(bits)}


def _host_vector_hashing(path: str = "/sys/module/kvm/parameters/vector_hashing") -> bool | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return {"Y": True, "N": False}.get(text)


class KvmHandle:
    """A kvm-backend VM: the KvmVm, the line levels irqlab drove (the kernel does not report
    input levels), a small event log, and what was learnt at creation."""

    def __init__(self, vm: KvmVm, log: EventLog, ioapic_version: int,
                 overrides: dict[str, bool] | None = None) -> None:
        self.vm = vm
        self.id = ""  # set by the registry when the VM is published
        self.log = log  # shared with the split VMM, whose events it also holds
        self.lines = [0] * NUM_PINS
        self.ioapic_version = ioapic_version
        self.overrides = dict(overrides or {})
        self.vendor_module = detect.vendor_module()
        self.vector_hashing = _host_vector_hashing()
        # In-kernel resamplefd signals already written to the event log, per GSI (see
        # _resample_events: KVM signals the eventfd itself, irqlab only learns it by reading).
        self.reported_resamples: dict[int, int] = {}

    @property
    def split(self) -> bool:
        return self.vm.irqchip == "split"

    def close(self) -> None:
        """Close every fd and mapping of the VM (idempotent)."""
        self.vm.close()


# ---- creation


def check_create(body: M.VmCreate) -> None:
    """What a kvm-backend VM can be, and whether this host can make one (409 unsupported)."""
    split = body.irqchip == "split"
    given = [f for f in MODEL_ONLY if f in body.model_fields_set
             and not (split and f in SPLIT_VMM_FIELDS)]
    if given:
        raise unsupported(f"{given[0]} configures the model; it is not available on the kvm "
                          "backend (the host kernel decides its behaviour)", given[0])
    if split:
        kernel_flags = [k for k in body.overrides if k not in QEMU_FLAGS]
        if kernel_flags:
            raise unsupported(f"flag {kernel_flags[0]!r} is KVM's; on the kvm backend the host "
                              "kernel decides it (only QEMU's flags, "
                              f"{', '.join(QEMU_FLAGS)}, configure irqlab's VMM)",
                              f"overrides.{kernel_flags[0]}")
        if body.ioapic_version is not None and body.ioapic_version not in QEMU_IOAPIC_VERSIONS:
            raise invalid("QEMU's IOAPIC accepts version 0x11 or 0x20", "ioapic_version")
    if body.x2apic and not body.x2apic_cpuid:
        # The model can start a vCPU in x2APIC mode whatever its CPUID says; a real guest
        # cannot: kvm_set_apic_base refuses IA32_APIC_BASE.EXTD (#GP) unless the guest's
        # CPUID has x2APIC, so irqlab's x2APIC guest would fault on its first wrmsr.
        raise unsupported("x2apic: true needs x2apic_cpuid: true on the kvm backend (KVM "
                          "refuses IA32_APIC_BASE.EXTD unless CPUID.1:ECX.x2APIC is set)",
                          "x2apic_cpuid")
    require_kvm("backend 'kvm'")


def require_kvm(subject: str) -> None:
    """409 `unsupported` (field backend) when /dev/kvm is unusable here or the KVM_RUN
    watchdog cannot work; `subject` names what needed it."""
    ok, reason = detect.kvm_available()
    if not ok:
        raise unsupported(f"{subject} is not available on this host: {reason}", "backend")
    # The watchdog's signal handler can only be installed from the main thread, which is the
    # event loop's thread under uvicorn and in the tests (the lifespan also installs it).
    if threading.current_thread() is threading.main_thread():
        try:
            ensure_kick_handler()
        except KvmVmError as exc:
            raise unsupported(f"{subject} is not available: {exc}", "backend") from exc


def install_kick_handler() -> None:
    """At startup (lifespan, main thread): install the KVM watchdog's signal handler. Never
    fails the startup: kvm VM creation reports the problem instead."""
    if threading.current_thread() is not threading.main_thread():
        log.info("not on the main thread: the KVM watchdog handler is installed later")
        return
    try:
        ensure_kick_handler()
    except KvmVmError as exc:
        log.warning("the kvm backend will not work: %s", exc)
    else:
        log.info("KVM watchdog signal handler installed (main thread)")


def build(body: M.VmCreate, max_events: int | None) -> KvmHandle:
    """KVM_CREATE_VM + KVM_CREATE_IRQCHIP (or KVM_CAP_SPLIT_IRQCHIP and irqlab's VMM, which
    commits QEMU's 24 reserved MSI routes) + the vCPUs, then read the IOAPIC version register
    through the guest. Blocks: run it in a worker thread."""
    log = EventLog(body.event_log, max_events)
    root = log.reserve()
    overrides = {k: v for k, v in body.overrides.items() if k in QEMU_FLAGS}
    try:
        vm = KvmVm(body.vcpus, irqchip=body.irqchip,
                   ioapic_version=body.ioapic_version or 0x20,
                   routes_before_service=F.resolve(F.DEFAULT_PRESET, overrides)
                   .qemu_routes_before_service,
                   log=log, log_cause=root, x2apic=body.x2apic,
                   x2apic_format=body.x2apic_format,
                   broadcast_quirk_disabled=body.broadcast_quirk_disabled,
                   # The schema's default (true), as the model and the diff harness use it:
                   # KVM_SET_CPUID2 with x2APIC, which also decides LVR's directed EOI bit.
                   x2apic_cpuid=body.x2apic_cpuid)
    except KvmVmError as exc:
        raise unsupported(f"backend 'kvm' is not available: {exc}", "backend") from exc
    except OSError as exc:
        raise _os_failure(exc, "creating the kvm VM") from exc
    try:
        if vm.vmm is not None:
            vm.vmm.cause = root
        with _kernel():
            vm.mmio(0, "write", 0x00, 0x01)  # IOREGSEL = IOAPICVER
            version = vm.mmio(0, "read", 0x10) or 0
            vm.mmio(0, "write", 0x00, 0x00)
        handle = KvmHandle(vm, log, version & 0xFF, overrides)
    except BaseException:
        vm.close()
        raise
    log.fill(root, "kvm", "create-vm", None, "vcpus", body.vcpus, "irqchip", body.irqchip,
             "module", handle.vendor_module, "x2apic", body.x2apic,
             "x2apic_api_flags", vm.x2apic_api_flags if vm.x2apic_api_enabled else None)
    return handle


# ---- errors


def _os_failure(exc: OSError, what: str) -> KvmFailure:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return KvmFailure(f"{what}: the kernel returned -{name} ({exc.strerror or exc})",
                      {"kvm_errno": name})


class _kernel:
    """Turn what the real KVM or irqlab's guest reports into API errors."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: object) -> None:
        if isinstance(ev, KvmVmError):
            raise KvmFailure(str(ev), {"kvm_failure": type(ev).__name__}) from ev
        if isinstance(ev, OSError):
            raise _os_failure(ev, "KVM ioctl") from ev


def guarded(read: Callable[[], Any]) -> Any:
    with _kernel():
        return read()


def capture(h: KvmHandle, op: Callable[[], dict[str, Any]], limit: int) -> dict[str, Any]:
    """Run `op` and attach the events it emitted (at most `limit`), as ops.capture does."""
    first = h.log.next_seq
    if h.vm.vmm is not None:
        h.vm.vmm.cause = None  # until the operation names its root event
        h.vm.vmm.exits = []
    try:
        with _kernel():
            result = op()
    except BaseException as exc:
        # A root event reserved by the failed operation is still blank: say what happened.
        for e in h.log.since(first - 1):
            if e["actor"] == "":
                h.log.fill(e["seq"], "kvm", "operation-failed", None, "error", str(exc))
        # Resamples that happened before the failure still belong to this operation.
        with suppress(OSError, KvmVmError):
            _resample_events(h, first)
        raise
    with _kernel():
        _resample_events(h, first)
    events = h.log.since(first - 1, limit + 1)
    result["events"] = events[:limit]
    result["events_truncated"] = len(events) > limit
    return result


def _resample_events(h: KvmHandle, first: int) -> None:
    """In-kernel, KVM's ack notifier signals a resamplefd without irqlab seeing it (during
    KVM_RUN at an EOI, or on kvm_pvm at the take; in the IOAPIC write of an unmask): after
    every operation irqlab reads the eventfds and logs one `resamplefd-signalled` per signal
    (the model's event, whose `count` is the total since registration), caused by the
    operation's first event. Every signal comes from some operation (ack notifiers run in
    ioctls irqlab makes, under the VM's lock), so none is attributed to a later one. In split
    mode the VMM kicks the eventfd and logs it itself, at the EOI exit."""
    if h.vm.vmm is not None or not h.vm.irqfds:
        return
    cause = first if h.log.next_seq > first else None
    for gsi, total in h.vm.resample_counts().items():
        for count in range(h.reported_resamples.get(gsi, 0) + 1, total + 1):
            h.log.emit("device", "resamplefd-signalled", cause, "gsi", gsi, "count", count)
        h.reported_resamples[gsi] = total


def _vcpu(h: KvmHandle, n: int) -> int:
    if type(n) is not int or not 0 <= n < len(h.vm.vcpus):
        raise not_found(f"vCPU {n} does not exist (this VM has {len(h.vm.vcpus)})", "vcpu")
    return n


# ---- views


def summary(h: KvmHandle) -> dict[str, Any]:
    """The VM's configuration (no ioctl: safe on the event loop)."""
    return {
        "id": h.id, "backend": "kvm", "vcpus": len(h.vm.vcpus), "irqchip": h.vm.irqchip,
        "profile": "host", "overrides": dict(h.overrides), "apicv": None,
        "nr_reserved_ioapic_pins": NUM_PINS,
        "ioapic_version": h.ioapic_version, "x2apic": h.vm.x2apic,
        "x2apic_cpuid": h.vm.x2apic_cpuid, "x2apic_format": h.vm.x2apic_format,
        "broadcast_quirk_disabled": h.vm.broadcast_quirk_disabled,
        "vector_hashing": h.vector_hashing, "event_log": h.log.enabled, "flags": None,
        "time": None, "events": h.log.next_seq - 1, "kvm_vendor_module": h.vendor_module,
    }


def _pin(h: KvmHandle, pin: int, io: dict[str, Any]) -> dict[str, Any]:
    d = R.decode(io["redir"][pin])
    d["pin"] = pin
    d["line"] = h.lines[pin]
    d["sources"] = [0] if h.lines[pin] else []
    d["irr"] = bool(io["irr"] >> pin & 1)
    # QEMU's storm-throttle counter is irqlab's own in split mode; KVM does not expose its.
    d["eoi_count"] = io["eoi_counts"][pin] if io["eoi_counts"] is not None else None
    return d


def pin_view(h: KvmHandle, pin: int) -> dict[str, Any]:
    return _pin(h, pin, h.vm.ioapic_view())


def ioapic_view(h: KvmHandle) -> dict[str, Any]:
    """KVM_GET_IRQCHIP in-kernel; the VMM's own IOAPIC (QEMU flavour) in split mode."""
    io = h.vm.ioapic_view()
    return {
        "flavour": io["flavour"], "id": io["id"], "version": h.ioapic_version,
        "ioregsel": io["ioregsel"], "irr": io["irr"],
        "delayed_injection_at": io["delayed_injection_at"],
        "pins": [_pin(h, p, io) for p in range(NUM_PINS)],
    }


def routes_view(h: KvmHandle) -> dict[str, Any]:
    """Split only: the GSI routing table irqlab's VMM last committed with KVM_SET_GSI_ROUTING
    (KVM has no ioctl that reads routes back; the VMM is the table's only writer)."""
    if h.vm.vmm is None:
        raise unsupported("GET /routes is not available on the kvm backend with the in-kernel "
                          "irqchip: its table is the kernel's (kvm_setup_default_irq_routing) "
                          "and KVM cannot report it; a split VM shows the routes irqlab's VMM "
                          "committed")
    return {"entries": [{"gsi": g, **route_to_json(r, False)} for g, r in h.vm.vmm.routes_view()]}


def vcpu_view(h: KvmHandle, n: int) -> dict[str, Any]:
    """KVM_GET_LAPIC; what the kernel does not expose is null."""
    v = h.vm.vcpu(_vcpu(h, n))
    page = v.fd.get_lapic()
    svr = page.svr
    mode = h.vm.lapic_mode(n)  # IA32_APIC_BASE from KVM_GET_SREGS
    return {
        "vcpu": n, "apic_id": h.vm.apic_id(page, mode), "x2apic": mode == "x2apic",
        "enabled": mode != "disabled",
        "sw_enabled": bool(svr & 0x100), "ldr": page.reg(page.LDR), "dfr": page.reg(page.DFR),
        "tpr": page.tpr, "ppr": page.ppr, "svr": svr, "lvr": page.reg(LVR),
        "irr": _bitmap(page.irr), "isr": _bitmap(page.isr), "tmr": _bitmap(page.tmr),
        "pir": None, "handled_vectors": None, "eoi_exit_bitmap": None,
        "pending_requests": None, "pending_ioapic_eoi": None,
        "highest_stale_pending_ioapic_eoi": None, "highest_isr_cache": None,
        "pv_eoi_enabled": None, "pv_eoi": None, "in_guest": None, "arb_prio": None,
        "nmi_count": None, "smi_count": None, "init_count": None, "dead": v.dead,
    }


def vcpus(h: KvmHandle) -> dict[str, Any]:
    return {"vcpus": [vcpu_view(h, i) for i in range(len(h.vm.vcpus))]}


def bitmaps(h: KvmHandle) -> dict[str, Any]:
    """Remote IRR from KVM_GET_IRQCHIP; the handled-vector bitmaps are not exposed (null)."""
    redir = h.vm.redirection_table()
    pins = [p for p, e in enumerate(redir) if e & R.REMOTE_IRR_BIT]
    return {
        "remote_irr": {"pins": pins, "hex": f"0x{sum(1 << p for p in pins):06x}"},
        "handled_vectors": [{"vcpu": i, "vectors": None, "hex": None}
                            for i in range(len(h.vm.vcpus))],
    }


def state(h: KvmHandle) -> dict[str, Any]:
    routes = routes_view(h)["entries"] if h.vm.vmm is not None else None
    return {"id": h.id, "config": summary(h), "ioapic": ioapic_view(h), **vcpus(h),
            "routes": routes, "bitmaps": bitmaps(h), **resamplers(h)}


def events_page(h: KvmHandle, after: int, limit: int) -> dict[str, Any]:
    events = h.log.since(after, limit)
    return {"events": events, "next_after": events[-1]["seq"] if events else after,
            "last_seq": h.log.next_seq - 1}


# ---- operations (each appends an event with what the kernel reported)


def _root(h: KvmHandle) -> int:
    """Reserve the operation's root event (filled in once the kernel has answered), so that
    the split VMM's exit events, emitted meanwhile, follow it and name it as their cause."""
    seq = h.log.reserve()
    if h.vm.vmm is not None:
        h.vm.vmm.cause = seq
    return seq


def _exits(h: KvmHandle) -> list[dict[str, Any]]:
    """The userspace exits the split VMM handled during this operation (KVM_EXIT_MMIO on the
    IOAPIC page, KVM_EXIT_IOAPIC_EOI) with what its IOAPIC did; none in-kernel."""
    return list(h.vm.vmm.exits) if h.vm.vmm is not None else []


def _eoi_exit_fields(h: KvmHandle) -> tuple[Any, ...]:
    if h.vm.vmm is None:
        return ()
    return ("ioapic_eoi_exits", tuple(e["vector"] for e in h.vm.vmm.exits
                                      if e["reason"] == "KVM_EXIT_IOAPIC_EOI"))


def _write_rte(h: KvmHandle, n: int, pin: int, entry: int, halves: tuple[str, ...]
               ) -> dict[str, Any]:
    _vcpu(h, n)
    seq = _root(h)
    h.vm.write_rte(n, pin, entry, halves)
    view = pin_view(h, pin)
    # kernel_entry: the entry as KVM_GET_IRQCHIP reports it (in-kernel), or as irqlab's VMM
    # holds it after handling the guest's MMIO exits (split).
    h.log.fill(seq, VCPU_NAMES[n], "write-rte", None, "pin", pin, "written",
               f"0x{entry:016x}", "halves", list(halves), "kernel_entry", view["raw"],
               "remote_irr", view["remote_irr"])
    view["entry_exits"] = _exits(h)
    return view


def write_pin(h: KvmHandle, pin: int, body: M.PinPut) -> dict[str, Any]:
    """The guest on `vcpu` writes the whole RTE by MMIO (IOREGSEL then IOWIN per dword)."""
    entry = body.raw if body.raw is not None else R.encode(**body.changes())
    halves = R.entry_halves(body.order)
    return _write_rte(h, body.vcpu, pin, entry, halves)


def patch_pin(h: KvmHandle, pin: int, body: M.PinPatch) -> dict[str, Any]:
    """Only the dwords holding the changed fields, over the entry the kernel (or, split, the
    VMM) reports."""
    _vcpu(h, body.vcpu)
    changes = body.changes()
    entry = R.patch(h.vm.redirection_table()[pin], changes)
    return _write_rte(h, body.vcpu, pin, entry, R.patch_halves(changes, body.order))


_ACTIONS = {"assert": (1,), "deassert": (0,), "pulse": (1, 0)}


def set_line(h: KvmHandle, pin: int, body: M.LineRequest) -> dict[str, Any]:
    """KVM_IRQ_LINE_STATUS on GSI `pin` (the default routing: GSI n -> IOAPIC pin n); in split
    mode the VMM's IOAPIC input (QEMU's ioapic_set_irq, which issues KVM_IRQ_LINE_STATUS on
    the pin's MSI route when it services the pin)."""
    if body.source != 0:
        raise unsupported("IRQ source ids other than 0 (KVM_IRQ_LINE's userspace source) are "
                          "not available on the kvm backend", "source")
    levels = (body.level,) if body.level is not None else _ACTIONS[body.action or "assert"]
    steps = []
    remote_irr = False
    if h.vm.vmm is not None:
        for level in levels:
            out = h.vm.set_line(pin, level)  # the VMM logs the line and what followed
            h.lines[pin] = level
            remote_irr = bool(out["remote_irr"])
            # status: QEMU's ioapic_set_irq path, as the model reports it in split mode;
            # kvm_status: KVM_IRQ_LINE_STATUS's answer to the delivery, null without one.
            steps.append({"level": level, "status": out["status"],
                          "kvm_status": out["kvm_status"], "delivered_to": None,
                          "outcome": out["outcome"], "reason": out["reason"]})
        return {"pin": pin, "source": 0, "steps": steps, "remote_irr": remote_irr}
    for level in levels:
        out = h.vm.set_line(pin, level)
        h.lines[pin] = level
        status = int(out["status"])
        remote_irr = bool(out["remote_irr"])
        outcome = ("lowered" if level == 0 else "delivered" if status > 0
                   else "coalesced" if status == 0 else "dropped")
        steps.append({"level": level, "status": status, "delivered_to": None,
                      "outcome": outcome, "reason": None})
        h.log.emit("device", "KVM_IRQ_LINE_STATUS", None, "gsi", pin, "level", level,
                   "status", status, "remote_irr", remote_irr)
    return {"pin": pin, "source": 0, "steps": steps, "remote_irr": remote_irr}


def mmio(h: KvmHandle, body: M.MmioRequest) -> dict[str, Any]:
    """A guest load/store of 1, 2, 4 or 8 bytes on the IOAPIC page, by irqlab's guest on
    `vcpu` (8 bytes: one MMX movq, a single 8-byte access)."""
    n = _vcpu(h, body.vcpu)
    if body.offset not in (0x00, 0x10, 0x20, 0x40):
        raise unsupported("the kvm backend's guest accesses offsets 0x00, 0x10, 0x20 and "
                          "0x40 only", "offset")
    seq = _root(h)
    value = h.vm.mmio(n, body.op, body.offset, body.value, body.size)
    h.log.fill(seq, VCPU_NAMES[n], f"mmio-{body.op}", None, "offset", body.offset,
               "size", body.size, "value", value if body.op == "read" else body.value)
    exits = _exits(h)
    out: dict[str, Any] = {"vcpu": n, "op": body.op, "offset": body.offset, "size": body.size,
                           "value": value, "entry_exits": exits}
    if h.vm.vmm is not None and body.op == "write":
        out["writes"] = [w for e in exits if e["reason"] == "KVM_EXIT_MMIO"
                         for w in e.get("writes", ())]
    return out


def signal_msi(h: KvmHandle, body: M.MsiRequest) -> dict[str, Any]:
    """KVM_SIGNAL_MSI; `status` is the ioctl's return value."""
    if body.decoded is not None:
        d = body.decoded
        irq = LapicIrq(vector=d.vector, delivery_mode=d.delivery_mode,
                       logical=d.dest_mode == "logical", level_trig=d.trigger == "level",
                       dest=d.dest, redir_hint=d.redirection_hint)
        try:
            # With KVM_X2APIC_API_USE_32BIT_IDS KVM reads dest bits 31:8 from address_hi.
            lo, hi, data = irq_to_msi(irq, h.vm.x2apic_format)
        except EngineError as exc:
            raise EngineError(exc.kind, exc.detail,
                              f"decoded.{exc.field}" if exc.field else "decoded") from exc
    else:
        assert body.address_lo is not None and body.data is not None
        lo, hi, data = body.address_lo, body.address_hi, body.data
    status = h.vm.signal_msi(lo, hi, data)
    h.log.emit("device", "KVM_SIGNAL_MSI", None, "address_lo", lo, "address_hi", hi,
               "data", data, "status", status)
    return {"status": status, "delivered_to": None}


def _lapic_fields(h: KvmHandle, n: int) -> tuple[Any, ...]:
    page = h.vm.vcpu(n).fd.get_lapic()
    return ("irr", to_hex(page.irr), "isr", to_hex(page.isr), "ppr", page.ppr)


def ack(h: KvmHandle, n: int) -> dict[str, Any]:
    """The guest opens an interrupt window; the vector its IDT stub reported, or null.
    `entry_exits` lists the split VMM's userspace exits during the step (on kvm_pvm the
    implicit EOI's KVM_EXIT_IOAPIC_EOI arrives here)."""
    _vcpu(h, n)
    seq = _root(h)
    vector = h.vm.ack(n)
    h.log.fill(seq, VCPU_NAMES[n], "ack", None, "vector", vector, *_lapic_fields(h, n),
               *_eoi_exit_fields(h))
    return {"vcpu": n, "vector": vector, "entry_exits": _exits(h)}


def eoi(h: KvmHandle, n: int) -> dict[str, Any]:
    """The guest writes the xAPIC EOI register. `vector` is the highest ISR vector before the
    write (what the LAPIC retires), null if ISR was empty. Split: `forwarded` says whether a
    KVM_EXIT_IOAPIC_EOI reached the VMM during the step (KVM raises it before the guest's
    next instruction, so within it), `exits` what the VMM did with it."""
    _vcpu(h, n)
    isr = h.vm.vcpu(n).fd.get_lapic().isr
    vector = isr.bit_length() - 1 if isr else None
    seq = _root(h)
    h.vm.eoi(n)
    h.log.fill(seq, VCPU_NAMES[n], "eoi", None, "vector", vector, *_lapic_fields(h, n),
               *_eoi_exit_fields(h))
    exits = _exits(h)
    split = h.vm.vmm is not None
    forwarded = any(e["reason"] == "KVM_EXIT_IOAPIC_EOI" for e in exits) if split else None
    return {"vcpu": n, "vector": vector, "forwarded": forwarded, "path": None,
            "entry_exits": [], "exits": exits if split else None, "pending_requests": None}


def lapic_patch(h: KvmHandle, n: int, body: M.LapicPatch) -> dict[str, Any]:
    """The guest writes each register, in the model's order (id, dfr, ldr, tpr, svr): a 4-byte
    store to the xAPIC page, or wrmsr 0x800 + offset >> 4 in x2APIC mode (the mode KVM reports
    now, KVM_GET_SREGS' apic_base); each `value` is the guest's read-back of the register.

    All or nothing, as the model: the only writes that fault are ID, DFR and LDR in x2APIC
    mode (#GP; an MMIO store never faults), and they come before TPR and SVR in the order, so
    the first #GP is also the first write. It is the model's problem (400, `fault: #GP`,
    `field` the register), and the root event records the fault the guest took.
    IA32_APIC_BASE is refused: irqlab's guest image is built for one LAPIC mode (its set-up,
    and EOI as an MMIO store or wrmsr 0x80B), so a mode change would leave `eoi` and `ack`
    talking to a LAPIC the guest no longer addresses that way."""
    n = _vcpu(h, n)
    writes = body.writes()
    if any(reg == "apic_base" for reg, _ in writes):
        raise unsupported("apic_base: irqlab's guest on the kvm backend stays in the LAPIC "
                          "mode it was created in (its EOI is an xAPIC MMIO store or an x2APIC "
                          "wrmsr); create the VM with `x2apic` instead", "apic_base")
    x2apic = h.vm.lapic_mode(n) == "x2apic"
    results = []
    for reg, value in writes:
        offset = LAPIC_OFFSETS[reg]
        access = ("wrmsr", G.x2apic_msr(offset)) if x2apic else ("mmio", G.LAPIC_BASE + offset)
        first_exit = len(_exits(h))
        seq = _root(h)
        ok = h.vm.lapic_write(n, reg, value)
        if not ok:
            h.log.fill(seq, VCPU_NAMES[n], "lapic-write", None, "reg", reg, "value", value,
                       "access", access[0], "address", access[1], "fault", "#GP")
            seen = f"the guest's wrmsr 0x{access[1]:x} took #GP"
            if reg in ("id", "ldr", "dfr"):  # the model's words (lapic.write_register)
                raise invalid(f"{reg.upper()} is read-only in x2APIC mode (#GP): {seen}", reg)
            raise invalid(f"{reg.upper()}: {seen}", reg)
        readback = h.vm.lapic_read(n, reg)
        if readback is None:  # a register the guest just wrote without a fault
            raise KvmFailure(f"the guest's read of {reg.upper()} took #GP after its write",
                             {"kvm_failure": "GuestFault"})
        h.log.fill(seq, VCPU_NAMES[n], "lapic-write", None, "reg", reg, "value", value,
                   "access", access[0], "address", access[1], "read_back", readback)
        results.append({"reg": reg, "value": readback, "access": access[0],
                        "address": access[1], "entry_exits": _exits(h)[first_exit:]})
    return {"vcpu": n, "writes": results, "lapic": vcpu_view(h, n)}


# ---- irqfd resamplers (KvmVm.attach_irqfd with resampling, irqfd_trigger, resample_counts)


def resamplers(h: KvmHandle) -> dict[str, Any]:
    """Each resampling irqfd and how many times its resamplefd was signalled since it was
    registered: read from the eventfd (KVM's eventfd_signal in-kernel, the VMM's kick split),
    not from a count irqlab keeps."""
    return {"resamplers": [{"gsi": g, "signalled": c}
                           for g, c in sorted(h.vm.resample_counts().items())]}


def register_resampler(h: KvmHandle, gsi: int) -> dict[str, Any]:
    """KVM_IRQFD with KVM_IRQFD_FLAG_RESAMPLE (in-kernel), or, as QEMU, a plain KVM_IRQFD and
    the resamplefd registered with irqlab's VMM (split: KVM refuses the flag)."""
    if not 0 <= gsi <= GSI_MAX:
        # KVM_IRQFD takes any GSI (measured up to 2^32-1), but no route can exist at 4096 or
        # above (KVM_MAX_IRQ_ROUTES), so such a resampler could never fire; the model refuses
        # it and so does this backend, without claiming a kernel errno.
        raise EngineError(ErrorKind.INVALID, f"gsi must be 0..{GSI_MAX} (irqlab's range, as "
                          "the model's; KVM_IRQFD itself would accept it, but no GSI route can "
                          "exist there)", "gsi", irqlab_rule=True)
    if gsi in h.vm.irqfds:
        # irqlab attaches one irqfd per GSI so that a resampler's count is the GSI's; KVM
        # itself would accept another eventfd and share the GSI's resampler between them.
        raise EngineError(ErrorKind.EXISTS, f"a resampler is already registered for gsi {gsi} "
                          "(irqlab's rule, as the model's: one per GSI)", "gsi",
                          irqlab_rule=True)
    seq = _root(h)
    fd = h.vm.attach_irqfd(gsi, resample=True)
    flags = "KVM_IRQFD_FLAG_RESAMPLE" if fd.kernel_resample else None
    # resamplefd: who signals it; anchor: the second, never-written resampling irqfd that keeps
    # the in-kernel resampler alive while irqfd_trigger re-assigns the device's (KvmVm.Irqfd).
    h.log.fill(seq, "device", "KVM_IRQFD", None, "gsi", gsi, "flags", flags,
               "resamplefd", "kvm" if fd.kernel_resample else "vmm",
               "anchor", fd.anchor is not None)
    h.reported_resamples[gsi] = 0
    return {"gsi": gsi, "signalled": 0}


def irqfd(h: KvmHandle, gsi: int) -> dict[str, Any]:
    """The device writes the resampling irqfd's eventfd; irqlab returns once KVM has injected
    it (KvmVm.irqfd_trigger). An eventfd write has no status and KVM does not say which LAPIC
    accepted: both null. In-kernel the event records the pin's Remote IRR for GSIs 0..23 (the
    default routing: GSI n is IOAPIC pin n); split, the irqfd bypasses the VMM's IOAPIC."""
    fd = h.vm.irqfds.get(gsi)
    if fd is None or fd.resample is None:
        raise not_found(f"no resampler registered for gsi {gsi}", "gsi")
    seq = _root(h)
    h.vm.irqfd_trigger(gsi)
    remote_irr = h.vm.remote_irr(gsi) if h.vm.vmm is None and gsi < NUM_PINS else None
    h.log.fill(seq, "device", "irqfd", None, "gsi", gsi, "remote_irr", remote_irr)
    return {"gsi": gsi, "status": None, "delivered_to": None}
