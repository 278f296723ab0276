"""The kvm backend of the REST API (`"backend": "kvm"`): the same operations as `ops.py`, on a
real VM on this host's /dev/kvm (`app.kvm.vm.KvmVm`, in-kernel irqchip, irqlab's own guest).

State is read from the kernel: KVM_GET_LAPIC (IRR, ISR, TMR, PPR, TPR, SVR, LDR, DFR, LVR) and
KVM_GET_IRQCHIP (the in-kernel IOAPIC with Remote IRR). What the kernel does not expose (the
handled-vector bitmap, pending requests, the PIR, ...) is reported as null. Each operation
appends one event to a small causal log holding what the kernel reported.

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
from pathlib import Path
from typing import Any

from fastapi import Request

from app.engine import rte as R
from app.engine.bitmap import to_hex, vectors
from app.engine.errors import EngineError, ErrorKind, not_found
from app.engine.events import VCPU_NAMES, EventLog
from app.engine.msi import LapicIrq, irq_to_msi
from app.kvm import detect
from app.kvm.vm import KvmVm, KvmVmError, ensure_kick_handler

from . import models as M
from .problems import KvmFailure

log = logging.getLogger("irqlab.kvm")

NUM_PINS = 24
LVR = 0x30  # LAPIC version register offset in the KVM_GET_LAPIC page
# VmCreate fields that configure the model only: on the kvm backend the host kernel decides.
MODEL_ONLY = ("profile", "overrides", "apicv", "nr_reserved_ioapic_pins", "ioapic_version",
              "x2apic", "x2apic_cpuid", "x2apic_format", "broadcast_quirk_disabled",
              "vector_hashing")


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

    def __init__(self, vm: KvmVm, event_log: bool, max_events: int | None,
                 ioapic_version: int) -> None:
        self.vm = vm
        self.id = ""  # set by the registry when the VM is published
        self.log = EventLog(event_log, max_events)
        self.lines = [0] * NUM_PINS
        self.ioapic_version = ioapic_version
        self.vendor_module = detect.vendor_module()
        self.vector_hashing = _host_vector_hashing()

    def close(self) -> None:
        """Close every fd and mapping of the VM (idempotent)."""
        self.vm.close()


# ---- creation


def check_create(body: M.VmCreate) -> None:
    """What a kvm-backend VM can be, and whether this host can make one (409 unsupported)."""
    if body.irqchip != "kernel":
        raise unsupported("irqchip 'split' is not yet supported on the kvm backend (irqlab is "
                          "not yet the VMM of a split irqchip); use irqchip 'kernel'", "irqchip")
    given = [f for f in MODEL_ONLY if f in body.model_fields_set]
    if given:
        raise unsupported(f"{given[0]} configures the model; it is not available on the kvm "
                          "backend (the host kernel decides its behaviour)", given[0])
    ok, reason = detect.kvm_available()
    if not ok:
        raise unsupported(f"backend 'kvm' is not available on this host: {reason}", "backend")
    # The watchdog's signal handler can only be installed from the main thread, which is the
    # event loop's thread under uvicorn and in the tests (the lifespan also installs it).
    if threading.current_thread() is threading.main_thread():
        try:
            ensure_kick_handler()
        except KvmVmError as exc:
            raise unsupported(f"backend 'kvm' is not available: {exc}", "backend") from exc


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
    """KVM_CREATE_VM + KVM_CREATE_IRQCHIP + the vCPUs, then read the IOAPIC version register
    through the guest. Blocks: run it in a worker thread."""
    try:
        vm = KvmVm(body.vcpus, irqchip="kernel")
    except KvmVmError as exc:
        raise unsupported(f"backend 'kvm' is not available: {exc}", "backend") from exc
    except OSError as exc:
        raise _os_failure(exc, "creating the kvm VM") from exc
    try:
        with _kernel():
            vm.mmio(0, "write", 0x00, 0x01)  # IOREGSEL = IOAPICVER
            version = vm.mmio(0, "read", 0x10) or 0
            vm.mmio(0, "write", 0x00, 0x00)
        handle = KvmHandle(vm, body.event_log, max_events, version & 0xFF)
    except BaseException:
        vm.close()
        raise
    handle.log.emit("kvm", "create-vm", None, "vcpus", body.vcpus, "irqchip", "kernel",
                    "module", handle.vendor_module)
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
    with _kernel():
        result = op()
    events = h.log.since(first - 1, limit + 1)
    result["events"] = events[:limit]
    result["events_truncated"] = len(events) > limit
    return result


def _vcpu(h: KvmHandle, n: int) -> int:
    if type(n) is not int or not 0 <= n < len(h.vm.vcpus):
        raise not_found(f"vCPU {n} does not exist (this VM has {len(h.vm.vcpus)})", "vcpu")
    return n


# ---- views


def summary(h: KvmHandle) -> dict[str, Any]:
    """The VM's configuration (no ioctl: safe on the event loop)."""
    return {
        "id": h.id, "backend": "kvm", "vcpus": len(h.vm.vcpus), "irqchip": "kernel",
        "profile": "host", "overrides": {}, "apicv": None, "nr_reserved_ioapic_pins": NUM_PINS,
        "ioapic_version": h.ioapic_version, "x2apic": False, "x2apic_cpuid": False,
        "x2apic_format": False, "broadcast_quirk_disabled": False,
        "vector_hashing": h.vector_hashing, "event_log": h.log.enabled, "flags": None,
        "time": None, "events": h.log.next_seq - 1, "kvm_vendor_module": h.vendor_module,
    }


def _pin(h: KvmHandle, pin: int, entry: int, ioapic_irr: int) -> dict[str, Any]:
    d = R.decode(entry)
    d["pin"] = pin
    d["line"] = h.lines[pin]
    d["sources"] = [0] if h.lines[pin] else []
    d["irr"] = bool(ioapic_irr >> pin & 1)
    d["eoi_count"] = None
    return d


def pin_view(h: KvmHandle, pin: int) -> dict[str, Any]:
    io = h.vm.vmfd.get_ioapic()
    return _pin(h, pin, int(io.redirtbl[pin]), int(io.irr))


def ioapic_view(h: KvmHandle) -> dict[str, Any]:
    io = h.vm.vmfd.get_ioapic()
    return {
        "flavour": "kvm", "id": int(io.id), "version": h.ioapic_version,
        "ioregsel": int(io.ioregsel), "irr": int(io.irr), "delayed_injection_at": None,
        "pins": [_pin(h, p, int(io.redirtbl[p]), int(io.irr)) for p in range(NUM_PINS)],
    }


def vcpu_view(h: KvmHandle, n: int) -> dict[str, Any]:
    """KVM_GET_LAPIC; what the kernel does not expose is null."""
    v = h.vm.vcpu(_vcpu(h, n))
    page = v.fd.get_lapic()
    svr = page.svr
    return {
        "vcpu": n, "apic_id": page.reg(page.ID) >> 24, "x2apic": None, "enabled": None,
        "sw_enabled": bool(svr & 0x100), "ldr": page.reg(page.LDR), "dfr": page.reg(page.DFR),
        "tpr": page.tpr, "ppr": page.ppr, "svr": svr, "lvr": page.reg(LVR),
        "irr": _bitmap(page.irr), "isr": _bitmap(page.isr), "tmr": _bitmap(page.tmr),
        "pir": None, "handled_vectors": None, "eoi_exit_bitmap": None,
        "pending_requests": None, "pending_ioapic_eoi": None,
        "highest_stale_pending_ioapic_eoi": None, "in_guest": None, "arb_prio": None,
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
    return {"id": h.id, "config": summary(h), "ioapic": ioapic_view(h), **vcpus(h),
            "routes": None, "bitmaps": bitmaps(h), "resamplers": []}


def events_page(h: KvmHandle, after: int, limit: int) -> dict[str, Any]:
    events = h.log.since(after, limit)
    return {"events": events, "next_after": events[-1]["seq"] if events else after,
            "last_seq": h.log.next_seq - 1}


# ---- operations (each appends an event with what the kernel reported)


_LOW_FIELDS = {"vector", "delivery_mode", "dest_mode", "trigger", "polarity", "masked",
               "remote_irr", "delivery_status"}


def _write_rte(h: KvmHandle, n: int, pin: int, entry: int, halves: tuple[str, ...]
               ) -> dict[str, Any]:
    h.vm.write_rte(_vcpu(h, n), pin, entry, halves)
    view = pin_view(h, pin)
    h.log.emit(VCPU_NAMES[n], "write-rte", None, "pin", pin, "written", f"0x{entry:016x}",
               "halves", list(halves), "kernel_entry", view["raw"],
               "remote_irr", view["remote_irr"])
    return view


def write_pin(h: KvmHandle, pin: int, body: M.PinPut) -> dict[str, Any]:
    """The guest on `vcpu` writes the whole RTE by MMIO (IOREGSEL then IOWIN per dword)."""
    entry = body.raw if body.raw is not None else R.encode(**body.changes())
    halves = ("high", "low") if body.order == "high-first" else ("low", "high")
    return _write_rte(h, body.vcpu, pin, entry, halves)


def patch_pin(h: KvmHandle, pin: int, body: M.PinPatch) -> dict[str, Any]:
    """Only the dwords holding the changed fields, over the entry the kernel reports."""
    _vcpu(h, body.vcpu)
    changes = body.changes()
    entry = R.patch(h.vm.redirection_table()[pin], changes)
    halves = []
    if _LOW_FIELDS & changes.keys():
        halves.append("low")
    if {"dest", "extended_dest"} & changes.keys():
        halves.append("high")
    if body.order == "high-first":
        halves.reverse()
    return _write_rte(h, body.vcpu, pin, entry, tuple(halves))


_ACTIONS = {"assert": (1,), "deassert": (0,), "pulse": (1, 0)}


def set_line(h: KvmHandle, pin: int, body: M.LineRequest) -> dict[str, Any]:
    """KVM_IRQ_LINE_STATUS on GSI `pin` (the default routing: GSI n -> IOAPIC pin n)."""
    if body.source != 0:
        raise unsupported("IRQ source ids other than 0 (KVM_IRQ_LINE's userspace source) are "
                          "not available on the kvm backend", "source")
    levels = (body.level,) if body.level is not None else _ACTIONS[body.action or "assert"]
    steps = []
    remote_irr = False
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
    """A 32-bit guest load/store on the IOAPIC page, by irqlab's guest on `vcpu`."""
    n = _vcpu(h, body.vcpu)
    if body.size != 4:
        raise unsupported("irqlab's guest makes 4-byte accesses only on the kvm backend",
                          "size")
    if body.offset not in (0x00, 0x10, 0x20, 0x40):
        raise unsupported("the kvm backend's guest accesses offsets 0x00, 0x10, 0x20 and "
                          "0x40 only", "offset")
    value = h.vm.mmio(n, body.op, body.offset, body.value)
    h.log.emit(VCPU_NAMES[n], f"mmio-{body.op}", None, "offset", body.offset,
               "value", value if body.op == "read" else body.value)
    return {"vcpu": n, "op": body.op, "offset": body.offset, "size": 4, "value": value,
            "entry_exits": []}


def signal_msi(h: KvmHandle, body: M.MsiRequest) -> dict[str, Any]:
    """KVM_SIGNAL_MSI; `status` is the ioctl's return value."""
    if body.decoded is not None:
        d = body.decoded
        irq = LapicIrq(vector=d.vector, delivery_mode=d.delivery_mode,
                       logical=d.dest_mode == "logical", level_trig=d.trigger == "level",
                       dest=d.dest, redir_hint=d.redirection_hint)
        try:
            lo, hi, data = irq_to_msi(irq, False)
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
    """The guest opens an interrupt window; the vector its IDT stub reported, or null."""
    vector = h.vm.ack(_vcpu(h, n))
    h.log.emit(VCPU_NAMES[n], "ack", None, "vector", vector, *_lapic_fields(h, n))
    return {"vcpu": n, "vector": vector, "entry_exits": []}


def eoi(h: KvmHandle, n: int) -> dict[str, Any]:
    """The guest writes the xAPIC EOI register. `vector` is the highest ISR vector before the
    write (what the LAPIC retires), null if ISR was empty."""
    _vcpu(h, n)
    isr = h.vm.vcpu(n).fd.get_lapic().isr
    vector = isr.bit_length() - 1 if isr else None
    h.vm.eoi(n)
    h.log.emit(VCPU_NAMES[n], "eoi", None, "vector", vector, *_lapic_fields(h, n))
    return {"vcpu": n, "vector": vector, "forwarded": None, "path": None, "entry_exits": [],
            "pending_requests": None}
