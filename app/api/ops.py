"""Glue between the HTTP models and the engine: converts request models to engine calls and
engine results to response bodies. Routers call these with the VM's lock held; nothing here
decides irqchip behaviour, that is the engine's job."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NoReturn

import pydantic_core
from fastapi import Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from app.engine import flags as F
from app.engine import rte as R
from app.engine.errors import EngineError
from app.engine.msi import LapicIrq, irq_to_msi
from app.engine.state import RouteEntry
from app.engine.vm import Vm, VmConfig

from . import kvm_ops
from . import models as M
from . import snapshot_models as SN
from .registry import Registry, VmEntry

# ---- VMs and profiles


def vm_config(body: M.VmCreate) -> VmConfig:
    return VmConfig(
        vcpus=body.vcpus, irqchip=body.irqchip, profile=body.profile,
        overrides=dict(body.overrides), apicv=body.apicv,
        nr_reserved_ioapic_pins=body.nr_reserved_ioapic_pins,
        ioapic_version=body.ioapic_version, x2apic=body.x2apic,
        x2apic_cpuid=body.x2apic_cpuid, x2apic_format=body.x2apic_format,
        broadcast_quirk_disabled=body.broadcast_quirk_disabled,
        vector_hashing=body.vector_hashing, event_log=body.event_log,
    )


def summary(entry: VmEntry) -> dict[str, Any]:
    if entry.kvm is not None:
        return kvm_ops.summary(entry.kvm)
    vm = entry.vm
    return {"id": entry.id, "backend": "model", **vm.summary(),
            "ioapic_version": vm.ioapic.version}


def state(entry: VmEntry) -> dict[str, Any]:
    if entry.kvm is not None:
        return kvm_ops.state(entry.kvm)
    out = entry.vm.state()
    out["config"] = summary(entry)
    return {"id": entry.id, **out}


def profiles() -> dict[str, Any]:
    return {
        "default": F.DEFAULT_PRESET,
        "presets": [{"name": p.name, "description": p.description,
                     "flags": F.as_dict(p.flags)} for p in F.PRESETS.values()],
        "flags": [{"name": f.name, "component": f.component, "commit": f.commit,
                   "title": f.title, "release": f.release, "description": f.description}
                  for f in F.FLAGS.values()],
    }


# ---- operations with their events


def capture(vm: Vm, op: Callable[[], dict[str, Any]], limit: int) -> dict[str, Any]:
    """Run `op` and attach the events it emitted (at most `limit`)."""
    first = vm.log.next_seq
    result = op()
    events = vm.log.since(first - 1, limit + 1)
    result["events"] = events[:limit]
    result["events_truncated"] = len(events) > limit
    return result


def vcpu_set(result: dict[str, Any]) -> dict[str, Any]:
    """`delivered_to` as a set of vCPUs (sorted, each once)."""
    if "delivered_to" in result:
        result["delivered_to"] = sorted(set(result["delivered_to"]))
    return result


def write_pin(vm: Vm, pin: int, body: M.PinPut) -> dict[str, Any]:
    """The guest writes a whole RTE through IOREGSEL/IOWIN, one dword at a time."""
    entry = body.raw if body.raw is not None else R.encode(**body.changes())
    return vm.write_rte(body.vcpu, pin, entry, R.entry_halves(body.order))


def patch_pin(vm: Vm, pin: int, body: M.PinPatch) -> dict[str, Any]:
    return vm.patch_rte(body.vcpu, pin, body.changes(), body.order)


def set_line(vm: Vm, pin: int, body: M.LineRequest) -> dict[str, Any]:
    """Drive the pin; each level change reports what happened (decided by the engine)."""
    return vm.set_line(pin, level=body.level, action=body.action, source=body.source)


def mmio(vm: Vm, body: M.MmioRequest) -> dict[str, Any]:
    return vm.mmio(body.vcpu, body.op, body.offset, body.size, body.value)


# ---- routing and MSIs


def _encode(decoded: M.DecodedMsi, x2apic_format: bool, where: str) -> tuple[int, int, int]:
    irq = LapicIrq(vector=decoded.vector, delivery_mode=decoded.delivery_mode,
                   logical=decoded.dest_mode == "logical",
                   level_trig=decoded.trigger == "level", dest=decoded.dest,
                   redir_hint=decoded.redirection_hint)
    try:
        return irq_to_msi(irq, x2apic_format)
    except EngineError as exc:
        raise EngineError(exc.kind, exc.detail,
                          f"{where}.{exc.field}" if exc.field else where) from exc


def route_entries(body: M.RoutesPut, x2apic_format: bool) -> list[RouteEntry]:
    out: list[RouteEntry] = []
    for i, e in enumerate(body.entries):
        if e.irqchip is not None:
            out.append((e.gsi, "irqchip", e.irqchip.chip, e.irqchip.pin))
        elif e.msi is not None:
            out.append((e.gsi, "msi", e.msi.address_lo, e.msi.address_hi, e.msi.data))
        else:
            assert e.decoded is not None
            out.append((e.gsi, "msi", *_encode(e.decoded, x2apic_format,
                                               f"entries[{i}].decoded")))
    return out


def set_routes(vm: Vm, body: M.RoutesPut) -> dict[str, Any]:
    return vm.set_routes(route_entries(body, vm.config.x2apic_format))


def signal_msi(vm: Vm, body: M.MsiRequest) -> dict[str, Any]:
    if body.decoded is not None:
        lo, hi, data = _encode(body.decoded, vm.config.x2apic_format, "decoded")
    else:
        assert body.address_lo is not None and body.data is not None
        lo, hi, data = body.address_lo, body.address_hi, body.data
    return vcpu_set(vm.signal_msi(lo, hi, data))


def irq_line(vm: Vm, body: M.IrqLineRequest) -> dict[str, Any]:
    return vcpu_set(vm.irq_line(body.gsi, body.level, body.source))


def irqfd(vm: Vm, gsi: int) -> dict[str, Any]:
    return vcpu_set(vm.irqfd_assert(gsi))


def resamplers(vm: Vm) -> dict[str, Any]:
    return {"resamplers": [{"gsi": g, "signalled": c} for g, c in sorted(vm.resamplers.items())]}


def register_resampler(vm: Vm, gsi: int) -> dict[str, Any]:
    vm.register_resampler(gsi)
    return {"gsi": gsi, "signalled": vm.resamplers[gsi]}


# ---- vCPUs


def lapic_patch(vm: Vm, n: int, body: M.LapicPatch) -> dict[str, Any]:
    """Guest LAPIC writes, all or nothing: the writes first run on a copy of the VM, so a
    write that faults (#GP) leaves the VM untouched and the error names the register."""
    vm.vcpu(n)
    writes = body.writes()
    trial = vm.clone()
    for reg, value in writes:
        trial.lapic_write(n, reg, value)
    results = [vm.lapic_write(n, reg, value) for reg, value in writes]
    return {"vcpu": n, "writes": results, "lapic": vm.vcpu_view(n)}


def vcpus(vm: Vm) -> dict[str, Any]:
    return {"vcpus": [vm.vcpu_view(i) for i in range(len(vm.vcpus))]}


# ---- reports


def events_page(vm: Vm, after: int, limit: int) -> dict[str, Any]:
    events = vm.log.since(after, limit)
    return {"events": events, "next_after": events[-1]["seq"] if events else after,
            "last_seq": vm.log.next_seq - 1}


def restore(entry: VmEntry, snapshot: dict[str, Any], registry: Registry) -> dict[str, Any]:
    """Replace the VM with one restored from a snapshot (the id stays). The snapshot is held
    to the rules of a create request: its config to POST /v1/vms's, every other field to
    its exact type and range (snapshot_models), and the VM it describes to the invariants
    of one that operations reached (restored_vm); any failure is a 422 naming the field
    and leaves the VM as it was."""
    config = snapshot.get("config")
    if isinstance(config, dict):
        try:
            parsed = M.VmCreate.model_validate(config)
        except ValidationError as exc:
            raise _body_errors(exc, "config") from exc
        registry.check_vcpus(parsed.vcpus, "config.vcpus")
        if parsed.backend != "model":
            raise kvm_ops.unsupported("a snapshot restores a model-backend VM only",
                                      "config.backend")
    try:
        checked = SN.Snapshot.model_validate(snapshot)
    except ValidationError as exc:
        raise _body_errors(exc) from exc
    vm = SN.restored_vm(checked)
    registry.bound_log(vm)
    entry.vm = vm
    return summary(entry)


def _body_errors(exc: ValidationError, *prefix: str) -> RequestValidationError:
    return RequestValidationError(
        [{**e, "loc": ("body", *prefix, *e["loc"])} for e in exc.errors()])


# ---- responses




# Set from IRQLAB_VALIDATE_RESPONSES by create_app; the test-suite turns it on.
VALIDATE_RESPONSES = False


def render(model: type[BaseModel] | None, data: Any, status_code: int = 200,
           headers: dict[str, str] | None = None) -> Response:
    """Render `data` (plain engine results) as JSON with pydantic-core's serializer.

    With VALIDATE_RESPONSES, `data` is also validated against the route's response model and
    the model's rendering must equal the plain one, so the tests prove that what production
    sends without validating is exactly what the documented model describes."""
    body = pydantic_core.to_json(data)
    if VALIDATE_RESPONSES and model is not None:
        checked = model.model_validate(data).model_dump_json(exclude_unset=True)
        if json.loads(checked) != json.loads(body):
            raise AssertionError(f"response differs from its {model.__name__} model")
    if headers:
        return Response(body, status_code=status_code, media_type="application/json",
                        headers=headers)
    return JsonBytes(body, status_code)


class JsonBytes(Response):
    """A JSON body already rendered to bytes. Starlette's Response.__init__ works out the
    headers from media_type/charset on every response; these two are all it would send."""

    media_type = "application/json"

    def __init__(self, body: bytes, status_code: int = 200) -> None:
        self.status_code = status_code
        self.body = body
        self.background = None
        self.raw_headers = [(b"content-length", str(len(body)).encode("latin-1")),
                            (b"content-type", b"application/json")]


def create_irqchip(vm: Vm, mode: str, nr_reserved_ioapic_pins: int) -> NoReturn:
    vm.create_irqchip(mode, nr_reserved_ioapic_pins)  # KVM's answer: the VM has one
