"""GSI routing, KVM_SIGNAL_MSI, KVM_IRQ_LINE, irqfd resamplers and the logical clock."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Request, Response

from app.api import examples as X
from app.api import kvm_ops as KO
from app.api import models as M
from app.api import ops
from app.api.deps import VmPath
from app.api.problems import problem_responses
from app.api.run import act, view

router = APIRouter(prefix="/v1/vms/{vm}", responses=problem_responses(422))


@router.get(
    "/routes", response_model=M.RoutesView, tags=["routing"], summary="Get the GSI routing "
    "table",
    description="KVM's current GSI routing table (what the last KVM_SET_GSI_ROUTING "
                "installed: kvm_setup_default_irq_routing in-kernel, QEMU's MSI routes in "
                "split mode). MSI entries are also shown decoded (kvm_msi_to_lapic_irq). "
                "Example cut to two entries. On the kvm backend: a split VM shows the table "
                "irqlab's VMM last committed (KVM cannot report routes); an in-kernel one is "
                "409 unsupported.",
    responses={**X.response("routes"), **problem_responses(404, 409)},
)
async def get_routes(vm: VmPath, request: Request) -> Response:
    return await view(request, vm, M.RoutesView, lambda e: e.vm.routes_view(),
                      KO.routes_view)


@router.put(
    "/routes", response_model=M.RoutesPutResult, tags=["routing"],
    summary="Replace the GSI routing table",
    description="KVM_SET_GSI_ROUTING: the whole table is replaced. Entries are `irqchip` "
                "{chip, pin} (refused with -EINVAL in split mode, as is a second entry for "
                "the same chip), `msi` {address_lo, address_hi, data}, or `decoded` {dest, "
                "dest_mode, vector, trigger, delivery_mode} encoded to address/data. In split "
                "mode kvm_arch_irq_routing_update requests SCAN_IOAPIC on every vCPU.",
    responses={**X.response("set_routes"), **problem_responses(400, 404, 413, 422)},
)
async def put_routes(
    vm: VmPath, body: Annotated[M.RoutesPut, Body(openapi_examples=X.REQUESTS["routes"])],
    request: Request,
) -> Response:
    return await act(request, vm, M.RoutesPutResult,
                     lambda v: ops.set_routes(v, body))


@router.post(
    "/msi", response_model=M.DeliveryResult, tags=["routing"], summary="Signal an MSI",
    description="KVM_SIGNAL_MSI: kvm_set_msi delivers the message to the local APICs it "
                "addresses (kvm_irq_delivery_to_apic). Give address_lo/address_hi/data or "
                "`decoded`.",
    responses={**X.response("msi"), **problem_responses(400, 404, 413, 422)},
)
async def signal_msi(
    vm: VmPath, body: Annotated[M.MsiRequest, Body(openapi_examples=X.REQUESTS["msi"])],
    request: Request,
) -> Response:
    return await act(request, vm, M.DeliveryResult,
                     lambda v: ops.signal_msi(v, body),
                     kvm=lambda h: KO.signal_msi(h, body))


@router.post(
    "/irq", response_model=M.DeliveryResult, tags=["routing"], summary="Set a GSI's level",
    description="KVM_IRQ_LINE_STATUS: kvm_set_irq through the routing table (every entry of "
                "the GSI; the PIC is not modelled). `status` is the ioctl's status field.",
    responses={**X.response("irq"), **problem_responses(400, 404, 413, 422)},
)
async def irq_line(
    vm: VmPath, body: Annotated[M.IrqLineRequest, Body(openapi_examples=X.REQUESTS["irq"])],
    request: Request,
) -> Response:
    return await act(request, vm, M.DeliveryResult,
                     lambda v: ops.irq_line(v, body))


@router.get(
    "/resamplers", response_model=M.ResamplerList, tags=["resamplers"],
    summary="List irqfd resamplers",
    description="The GSIs with a resampling irqfd (KVM_IRQFD with KVM_IRQFD_FLAG_RESAMPLE, "
                "or a QEMU resamplefd in split mode) and how often each resamplefd was "
                "signalled. On the kvm backend the counts are read from the resamplefds.",
    responses={**X.response("resamplers"), **problem_responses(400, 404)},
)
async def list_resamplers(vm: VmPath, request: Request) -> Response:
    return await view(request, vm, M.ResamplerList, lambda e: ops.resamplers(e.vm),
                      KO.resamplers)


@router.post(
    "/resamplers", status_code=201, response_model=M.ResamplerCreated, tags=["resamplers"],
    summary="Register an irqfd resampler",
    description="KVM_IRQFD with KVM_IRQFD_FLAG_RESAMPLE on `gsi` (in-kernel: registers an "
                "ack notifier, which rescans every vCPU), or a resamplefd QEMU signals on "
                "the EOI broadcast (split). A second one for the same GSI is 409. On the kvm "
                "backend the real ioctl: in-kernel with the flag; split (KVM refuses it there) "
                "a plain irqfd and the resamplefd kept by irqlab's VMM, as QEMU does.",
    responses={**X.response("resampler", 201, "Registered"),
               **problem_responses(400, 404, 409, 413, 422)},
)
async def add_resampler(
    vm: VmPath,
    body: Annotated[M.ResamplerRequest, Body(openapi_examples=X.REQUESTS["resampler"])],
    request: Request,
) -> Response:
    return await act(request, vm, M.ResamplerCreated,
                     lambda v: ops.register_resampler(v, body.gsi), status_code=201,
                     kvm=lambda h: KO.register_resampler(h, body.gsi))


@router.post(
    "/resamplers/{gsi}/irqfd", response_model=M.IrqfdResult, tags=["resamplers"],
    summary="Fire the irqfd",
    description="The device signals its resampling irqfd: irqfd_inject -> kvm_set_irq("
                "KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID, gsi, 1). The line stays asserted until the "
                "EOI makes the resampler deassert it and signal the resamplefd. On the kvm "
                "backend the device writes the eventfd and the call returns once KVM has "
                "injected it; `status` and `delivered_to` are null (an eventfd write has no "
                "answer).",
    responses={**X.response("irqfd"), **problem_responses(400, 404, 422)},
)
async def fire_irqfd(
    vm: VmPath, request: Request,
    gsi: int = Path(ge=0, description="GSI of a registered resampler.", examples=[5]),
) -> Response:
    return await act(request, vm, M.IrqfdResult, lambda v: ops.irqfd(v, gsi),
                     kvm=lambda h: KO.irqfd(h, gsi))


@router.post(
    "/clock", response_model=M.ClockResult, tags=["clock"], summary="Advance logical time",
    description="Move the VM's logical clock forward. Runs the delayed re-injection of an "
                "interrupt storm when it is due: KVM's kvm_ioapic_eoi_inject_work (in-kernel, "
                "after IOAPIC_SUCCESSIVE_IRQ_MAX_COUNT re-deliveries, HZ/100 later) or QEMU's "
                "delayed_ioapic_service_cb (split).",
    responses={**X.response("clock"), **problem_responses(404, 413, 422)},
)
async def advance_clock(
    vm: VmPath, body: Annotated[M.ClockRequest, Body(openapi_examples=X.REQUESTS["clock"])],
    request: Request,
) -> Response:
    return await act(request, vm, M.ClockResult,
                     lambda v: v.advance_time(body.advance_us))
