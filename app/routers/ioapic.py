"""The IOAPIC: its view, guest writes of redirection entries, input lines, raw MMIO."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request, Response

from app.api import examples as X
from app.api import kvm_ops as KO
from app.api import models as M
from app.api import ops
from app.api.bodies import json_body, json_body_openapi
from app.api.deps import PinPath, VmPath, manual_path_openapi, path_pin, path_vm
from app.api.problems import problem_responses
from app.api.request_only_route import RequestOnlyRoute
from app.api.run import act, view

router = APIRouter(prefix="/v1/vms/{vm}/ioapic", tags=["ioapic"],
                   responses=problem_responses(422))

_WRITE_DESC = (
    " The write is guest code on `vcpu` doing what Linux's ioapic_write_entry does: IOREGSEL "
    "then IOWIN, once per dword, in `order`. In-kernel that is KVM's ioapic_mmio_write -> "
    "ioapic_write_indirect (scan requests to the old and new destinations, re-service of a "
    "pending level pin, Remote IRR rules of the profile); in split mode each access is a "
    "KVM_EXIT_MMIO that QEMU's ioapic_mem_write handles (MSI routes rewritten and committed "
    "with KVM_SET_GSI_ROUTING, so KVM requests SCAN_IOAPIC on every vCPU, then "
    "ioapic_service). `events` holds all of it."
)


@router.get(
    "", response_model=M.IoapicView, summary="Get the IOAPIC",
    description="KVM_GET_IRQCHIP(KVM_IRQCHIP_IOAPIC) in-kernel, or QEMU's IOAPIC state in "
                "split mode: id, version, IOREGSEL, the internal IRR and every pin's decoded "
                "redirection entry with its input level (example cut to one pin).",
    responses={**X.response("ioapic"), **problem_responses(404)},
)
async def get_ioapic(vm: VmPath, request: Request) -> Response:
    return await view(request, vm, M.IoapicView, lambda e: e.vm.ioapic_view(),
                      KO.ioapic_view)


@router.get(
    "/pins/{pin}", response_model=M.PinView, summary="Get one pin",
    description="One redirection-table entry decoded (as KVM_GET_IRQCHIP reports it) with "
                "the pin's input level and IRQ sources.",
    responses={**X.response("pin"), **problem_responses(404, 422)},
)
async def get_pin(vm: VmPath, pin: PinPath, request: Request) -> Response:
    return await view(request, vm, M.PinView, lambda e: e.vm.pin_view(pin),
                      lambda h: KO.pin_view(h, pin))


@router.put(
    "/pins/{pin}", response_model=M.PinWriteResult, summary="Write a whole entry",
    description="Write a whole redirection-table entry (`raw`, or fields; omitted fields are "
                "zero)." + _WRITE_DESC,
    responses={**X.response("put_pin"), **problem_responses(400, 404, 413, 422)},
)
async def put_pin(
    vm: VmPath, pin: PinPath,
    body: Annotated[M.PinPut, Body(openapi_examples=X.REQUESTS["put_pin"])],
    request: Request,
) -> Response:
    return await act(request, vm, M.PinWriteResult,
                     lambda v: ops.write_pin(v, pin, body),
                     kvm=lambda h: KO.write_pin(h, pin, body))


@router.patch(
    "/pins/{pin}", response_model=M.PinWriteResult, summary="Write some fields",
    description="Change some fields of a redirection-table entry; only the dword(s) holding "
                "them are written (dest is the high dword, everything else the low one)."
                + _WRITE_DESC,
    responses={**X.response("patch_pin"), **problem_responses(400, 404, 413, 422)},
)
async def patch_pin(
    vm: VmPath, pin: PinPath,
    body: Annotated[M.PinPatch, Body(openapi_examples=X.REQUESTS["patch_pin"])],
    request: Request,
) -> Response:
    return await act(request, vm, M.PinWriteResult,
                     lambda v: ops.patch_pin(v, pin, body),
                     kvm=lambda h: KO.patch_pin(h, pin, body))


@router.post(
    "/mmio", response_model=M.MmioResult, summary="Raw IOAPIC register access",
    description="A guest load/store on the IOAPIC page exactly as the guest does it: "
                "in-kernel KVM's ioapic_mmio_read/ioapic_mmio_write (only IOREGSEL 0x00 and "
                "IOWIN 0x10 decode; lengths 1/2/4/8); in split mode a KVM_EXIT_MMIO handled "
                "by QEMU's ioapic_mem_read/ioapic_mem_write (8-byte accesses split in two, "
                "the 0x40 EOI register with version 0x20).",
    responses={**X.response("mmio"), **problem_responses(404, 413, 422)},
)
async def ioapic_mmio(
    vm: VmPath, body: Annotated[M.MmioRequest, Body(openapi_examples=X.REQUESTS["mmio"])],
    request: Request,
) -> Response:
    return await act(request, vm, M.MmioResult, lambda v: ops.mmio(v, body),
                     kvm=lambda h: KO.mmio(h, body))


# The hottest route (a scenario driver raises and lowers lines all the time): it parses its
# path parameters and body itself, and RequestOnlyRoute skips FastAPI's per-request solver.
line_router = APIRouter(prefix="/v1/vms/{vm}/ioapic", tags=["ioapic"],
                        responses=problem_responses(422), route_class=RequestOnlyRoute)


@line_router.post(
    "/pins/{pin}/line", response_model=M.LineResult, summary="Drive an input line",
    description="A device drives the pin: kvm_ioapic_set_irq (in-kernel, as KVM_IRQ_LINE on "
                "the pin's GSI does) or QEMU's ioapic_set_irq (split; input 0 is remapped to "
                "pin 2). `level` 0/1 or `action` assert/deassert/pulse; `source` is the IRQ "
                "source id. Each level change reports its status, the vCPUs that accepted, "
                "and an `outcome`: delivered, coalesced, blocked (by Remote IRR or the mask), "
                "dropped, lowered or no-target.",
    responses={**X.response("line"), **problem_responses(404, 413, 422)},
    openapi_extra={**json_body_openapi(M.LineRequest, X.REQUESTS["line"]),
                   **manual_path_openapi("vm", "pin")},
)
async def drive_line(request: Request) -> Response:
    # The hottest route: path parameters and body are parsed here, not by FastAPI's solver.
    vm, pin = path_vm(request), path_pin(request)
    body = await json_body(request, M.LineRequest)
    return await act(request, vm, M.LineResult, lambda v: ops.set_line(v, pin, body),
                     kvm=lambda h: KO.set_line(h, pin, body))
