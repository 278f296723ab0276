"""VM lifecycle."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request, Response

from app.api import examples as X
from app.api import kvm_ops as KO
from app.api import models as M
from app.api import ops
from app.api.deps import RegistryDep, VmPath
from app.api.problems import ClientGone, problem_responses
from app.api.request_scope import tenant
from app.api.run import view
from app.engine.errors import EngineError, ErrorKind

router = APIRouter(prefix="/v1", tags=["vms"], responses=problem_responses(422))


@router.post(
    "/vms", status_code=201, response_model=M.VmSummary, summary="Create a VM",
    description="KVM_CREATE_VM, then KVM_CREATE_IRQCHIP (`irqchip: kernel`) or "
                "KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP, nr_reserved_ioapic_pins) with QEMU's "
                "userspace IOAPIC (`split`), then KVM_CREATE_VCPU per vCPU. Returns the VM "
                "with its resolved behaviour flags. A duplicate id is 409, more vCPUs than "
                "IRQLAB_MAX_VCPUS or more VMs than IRQLAB_MAX_VMS is 409 naming the limit; a "
                "configuration KVM refuses (e.g. nr_reserved_ioapic_pins > 4096) is 400. "
                "`backend: kvm` makes a real VM on this host's /dev/kvm instead (with "
                "`irqchip: split` irqlab is its VMM: the engine's QEMU IOAPIC answers the "
                "guest's IOAPIC MMIO exits, commits MSI routes with KVM_SET_GSI_ROUTING and "
                "handles KVM_EXIT_IOAPIC_EOI; more than IRQLAB_MAX_KVM_VCPUS vCPUs or "
                "IRQLAB_MAX_KVM_VMS such VMs is 409 limit-reached; no usable /dev/kvm or a "
                "model-only field is 409 unsupported, `detail` says why).",
    responses={**X.response("summary", 201, "The new VM"),
               **problem_responses(400, 409, 413, 422)},
)
async def create_vm(
    body: Annotated[M.VmCreate, Body(openapi_examples=X.REQUESTS["create_vm"])],
    registry: RegistryDep, request: Request,
) -> Response:
    who = tenant(request)
    if body.backend == "kvm":
        max_events = request.app.state.settings.max_events_per_vm
        entry = await registry.create_kvm(who, body.id, body.vcpus,
                                          lambda: KO.check_create(body),
                                          lambda: KO.build(body, max_events),
                                          client_gone=lambda: client_gone(request))
        if await request.is_disconnected():  # left just after the build: not kept either
            await registry.unpublish(entry)
            raise ClientGone("the client disconnected before its kvm-backend VM was "
                             "announced; the VM was deleted")
    else:
        entry = await registry.create(who, body.id, ops.vm_config(body))
    return await registry.run(who, entry.id, lambda e: ops.render(
        M.VmSummary, ops.summary(e), 201, {"Location": f"/v1/vms/{e.id}"}))


async def client_gone(request: Request) -> None:
    """Return when the client disconnects (the body was read already: the next message
    the server has for this request is http.disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.get(
    "/vms", response_model=M.VmList, summary="List VMs",
    description="Every VM (each what KVM_CREATE_VM made, as a VMM holds its VM file "
                "descriptors) with its configuration and resolved flags, oldest first.",
    responses={200: {"description": "The VMs", "content": {"application/json": {
        "example": {"vms": [X.RESPONSES["summary"]]}}}}},
)
async def list_vms(registry: RegistryDep, request: Request) -> Response:
    vms = []
    who = tenant(request)
    for vm_id in registry.ids(who):
        try:
            async with registry.locked(who, vm_id) as entry:
                vms.append(ops.summary(entry))
        except EngineError as exc:  # deleted between listing and locking
            if exc.kind != ErrorKind.NOT_FOUND:
                raise
    return ops.render(M.VmList, {"vms": vms})


@router.get(
    "/vms/{vm}", response_model=M.VmSummary, summary="Get a VM",
    description="The VM that KVM_CREATE_VM made: its configuration (irqchip from "
                "KVM_CREATE_IRQCHIP or KVM_CAP_SPLIT_IRQCHIP), resolved behaviour flags, "
                "logical time and last event seq.",
    responses={**X.response("summary"), **problem_responses(404)},
)
async def get_vm(vm: VmPath, request: Request) -> Response:
    return await view(request, vm, M.VmSummary, ops.summary, KO.summary)


@router.delete(
    "/vms/{vm}", status_code=204, response_class=Response, summary="Delete a VM",
    description="Closes the VM file descriptor (KVM destroys the VM, its irqchips and "
                "vCPUs). Waits for an operation in flight on that VM. A kvm-backend VM's "
                "file descriptors (VM, vCPUs, /dev/kvm) and guest memory are all closed.",
    responses={204: {"description": "Deleted"}, **problem_responses(404)},
)
async def delete_vm(vm: VmPath, registry: RegistryDep, request: Request) -> Response:
    await registry.delete(tenant(request), vm)
    return Response(status_code=204)


@router.post(
    "/vms/{vm}/irqchip", status_code=204, summary="Create an irqchip (always refused)",
    description="KVM_CREATE_IRQCHIP (`mode: kernel`) or KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP) "
                "(`mode: split`) on an existing VM. Every irqlab VM gets its irqchip when it "
                "is created (POST /v1/vms `irqchip`), so this answers what KVM answers for a "
                "second irqchip: 409 with `kvm_errno: EEXIST`; a split request with more than "
                "4096 reserved pins is 400 `EINVAL` first, as in kvm_vm_ioctl_enable_cap. "
                "Here so that VMM code ported to irqlab meets the same errors.",
    responses=problem_responses(400, 404, 409, 413, 422),
)
async def create_irqchip(
    vm: VmPath,
    body: Annotated[M.IrqchipRequest, Body(openapi_examples={
        "kernel": {"summary": "KVM_CREATE_IRQCHIP", "value": {"mode": "kernel"}},
        "split": {"summary": "KVM_CAP_SPLIT_IRQCHIP with 24 pins",
                  "value": {"mode": "split", "nr_reserved_ioapic_pins": 24}}})],
    request: Request,
) -> Response:
    return await view(request, vm, None,
                      lambda e: ops.create_irqchip(e.vm, body.mode, body.nr_reserved_ioapic_pins))
