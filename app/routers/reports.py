"""Reports: the two bitmaps, whole state, the causal event log, snapshot and restore."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.exceptions import RequestValidationError

from app.api import examples as X
from app.api import kvm_ops as KO
from app.api import models as M
from app.api import ops
from app.api.deps import VmPath, manual_path_openapi, path_vm
from app.api.problems import problem_responses
from app.api.request_only_route import RequestOnlyRoute
from app.api.run import view

router = APIRouter(prefix="/v1/vms/{vm}", tags=["reports"],
                   responses=problem_responses(422))


@router.get(
    "/state", response_model=M.VmState, summary="Everything",
    description="Configuration, IOAPIC, every vCPU, the routing table, the bitmaps and the "
                "resamplers, read atomically (KVM_GET_IRQCHIP + KVM_GET_LAPIC of every vCPU "
                "+ the routing table). Example cut to one pin and one vCPU.",
    responses={**X.response("state"), **problem_responses(404)},
)
async def get_state(vm: VmPath, request: Request) -> Response:
    return await view(request, vm, M.VmState, ops.state, KO.state)


@router.get(
    "/events", response_model=M.EventPage, summary="The causal event log",
    description="Events with seq > `after`, oldest first, at most `limit` (default and "
                "maximum IRQLAB_MAX_EVENTS_PAGE). Each event names its `cause` (the seq of "
                "the event that led to it), e.g. KVM_EXIT_IOAPIC_EOI -> QEMU's "
                "ioapic_eoi_broadcast -> Remote IRR cleared -> re-delivery. No KVM ioctl: "
                "this is the trace a kvm tracepoint session would give.",
    responses={**X.response("events"), **problem_responses(404, 422)},
)
async def list_events(
    vm: VmPath, request: Request,
    after: Annotated[int, Query(ge=0, description="Return events after this seq.")] = 0,
    limit: Annotated[int | None, Query(ge=1, description="Page size.")] = None,
) -> Response:
    settings = request.app.state.settings
    if limit is None:
        limit = settings.max_events_page
    elif limit > settings.max_events_page:
        raise RequestValidationError([{
            "type": "less_than_equal", "loc": ("query", "limit"), "input": limit,
            "msg": f"limit must be at most {settings.max_events_page} "
                   "(IRQLAB_MAX_EVENTS_PAGE)",
            "ctx": {"le": settings.max_events_page},
        }])
    page = limit
    return await view(request, vm, M.EventPage, lambda e: ops.events_page(e.vm, after, page),
                      lambda h: KO.events_page(h, after, page))


@router.get(
    "/snapshot", summary="Snapshot the VM", response_model=dict[str, Any],
    description="The VM's complete state (configuration, IOAPIC, vCPUs, routes, resamplers, "
                "time, event log) as an opaque, versioned document: what KVM_GET_IRQCHIP, "
                "KVM_GET_LAPIC and QEMU's vmstate save together. Example cut short.",
    responses={**X.response("snapshot"), **problem_responses(404)},
)
async def get_snapshot(vm: VmPath, request: Request) -> Response:
    return await view(request, vm, None, lambda e: e.vm.snapshot())


@router.put(
    "/snapshot", response_model=M.VmSummary, summary="Restore a snapshot",
    description="Replace the VM (keeping its id) with one restored from a GET …/snapshot "
                "document: KVM_SET_IRQCHIP + KVM_SET_LAPIC + QEMU's vmstate load. The "
                "snapshot may come from another VM; its vCPU count is checked against "
                "IRQLAB_MAX_VCPUS. Every field is checked as strictly as a create request "
                "(exact types, ranges; integers as JSON integers or \"0x…\" strings) and "
                "the VM it describes must be one operations could reach (its IOAPIC, vCPU "
                "indices, routing table, and a trial run of operations on a copy): a 422 "
                "naming the field otherwise; an event log KVM could not have written is 400. "
                "Large snapshots may need a larger IRQLAB_MAX_BODY_BYTES.",
    responses={**X.response("summary"), **problem_responses(400, 404, 409, 413, 422)},
)
async def put_snapshot(
    vm: VmPath, request: Request,
    snapshot: Annotated[dict[str, Any], Body(openapi_examples={"snapshot": {
        "summary": "A document from GET …/snapshot (cut short)",
        "value": X.RESPONSES["snapshot"]}})],
) -> Response:
    registry = request.app.state.registry
    return await view(request, vm, M.VmSummary, lambda e: ops.restore(e, snapshot, registry),
                      replaces=True)


# Polled after every step by scenario drivers: RequestOnlyRoute skips FastAPI's per-request
# solver (see app/api/request_only_route.py).
bitmaps_router = APIRouter(prefix="/v1/vms/{vm}", tags=["reports"],
                           route_class=RequestOnlyRoute)


@bitmaps_router.get(
    "/bitmaps", response_model=M.Bitmaps, summary="Remote IRR and handled vectors",
    description="The two bitmaps this service exists to show, in one call: the IOAPIC's "
                "Remote IRR bits (RTE bit 14, per pin) and every vCPU's "
                "ioapic_handled_vectors (the EOI-exit bitmap vcpu_scan_ioapic computed).",
    responses={**X.response("bitmaps"), **problem_responses(404)},
    openapi_extra=manual_path_openapi("vm"),
)
async def get_bitmaps(request: Request) -> Response:
    return await view(request, path_vm(request), M.Bitmaps, lambda e: e.vm.bitmaps(),
                      KO.bitmaps)
