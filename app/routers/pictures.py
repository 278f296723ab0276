"""Pictures of a VM's event log: the timeline as SVG, and traces for Perfetto and GTKWave."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app.api import pictures as PIC
from app.api.deps import VmPath
from app.api.problems import problem_responses

router = APIRouter(prefix="/v1/vms/{vm}", tags=["reports"],
                   responses=problem_responses(404, 422))

_WINDOW = (
    " Events with seq > `after`, at most `limit` (default and maximum "
    "IRQLAB_MAX_PICTURE_EVENTS). When the window reaches the log's end, what is still set "
    "(Remote IRR, IRR, ISR, pending requests) is drawn open to the bottom and the invariant "
    "findings are marked; a signal cleared in the window but set before it starts at the top. "
    "A kvm-backend VM is drawn from its log alone."
)


@router.get(
    "/timeline.svg", summary="The event log as an SVG timeline",
    description="A sequence diagram of the log: a lane per actor (device/pins, IOAPIC, "
                "VMM/KVM, each vCPU; beyond 4 vCPUs the ones without interrupt traffic share "
                "one lane), a row per event (time runs down), arrows from each event's cause, "
                "spans for line level, Remote IRR, IRR, ISR and pending requests, and the "
                "findings as red bands where they arise: a lost EOI is a red ✕ with no "
                "continuation, and a Remote IRR that never clears runs red to the bottom."
                + _WINDOW,
    response_class=Response,
    responses={200: {"description": "The SVG", "content": PIC.picture_content("svg")}},
)
async def timeline_svg(vm: VmPath, request: Request, after: PIC.AfterQuery = 0,
                       limit: PIC.LimitQuery = None) -> Response:
    return await PIC.vm_picture(request, vm, "svg", after, limit)


@router.get(
    "/trace", summary="The event log as a Perfetto trace or a VCD",
    description="The log of KVM and VMM work as a trace. `format=perfetto`: Chrome "
                "trace-event JSON for Perfetto's UI or "
                "chrome://tracing (a track per actor, an X slice per event, flow arrows for "
                "causes, slices for Remote IRR / IRR / ISR / pending-request spans on their "
                "own tracks, instants for findings, counters for IRR/ISR population); time is "
                "the event seq (1 µs per event). `format=vcd`: a Value Change Dump for "
                "GTKWave or Surfer (per pin line and Remote IRR, per vCPU IRR and ISR as "
                "256-bit registers and their population), timescale 1 us = 1 event." + _WINDOW,
    response_class=Response,
    responses={200: {"description": "The trace",
                     "content": PIC.picture_content("perfetto", "vcd")}},
)
async def trace(vm: VmPath, request: Request,
                fmt: Annotated[PIC.TraceFormat, Query(
                    alias="format", description="perfetto or vcd.")] = "perfetto",
                after: PIC.AfterQuery = 0, limit: PIC.LimitQuery = None) -> Response:
    return await PIC.vm_picture(request, vm, fmt, after, limit)
