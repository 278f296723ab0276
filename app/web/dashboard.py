"""The live dashboard: GET /ui (a server-rendered page) and GET /ui/stream (Server-Sent
Events), with its script and stylesheet served from /static/ui.

Why plain HTML and a small vanilla script, not htmx or Alpine: the page's work is flipping a
few of 1024 cells per vCPU when a bitmap changes, which a 200-line script does from one JSON
message per update; swapping server-rendered fragments (htmx) would re-send and re-lay out the
whole grids each time, and neither library would remove the script that decodes the bitmaps.
So nothing is vendored and the page loads three small files from this server.

The stream: one subscriber (app/api/live.py) per open page. When the registry reports that
the watched VM (or the set of VMs) changed, the stream reads the VM under its lock, at most
once per IRQLAB_UI_INTERVAL_MS, and sends the IOAPIC's pins, the first IRQLAB_UI_VCPUS vCPUs'
bitmaps and pending requests, and the events the page has not seen (at most IRQLAB_UI_EVENTS).
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydantic_core
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from app.api import kvm_ops as KO
from app.api import ops
from app.api.live import VM_LIST
from app.api.registry import Registry, VmEntry
from app.api.request_scope import tenant
from app.engine.errors import EngineError, ErrorKind
from app.settings import Settings

STATIC = Path(__file__).with_name("static")
STATIC_URL = "/static/ui"
KEEPALIVE_S = 15.0
# The pictures branch's SVG timeline route; embedded when the app has it.
TIMELINE_PATH = "/v1/vms/{vm}/timeline.svg"

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'self'")

router = APIRouter(include_in_schema=False)


def _vcpu(view: dict[str, Any]) -> dict[str, Any]:
    """What a vCPU card shows: the four bitmaps as hex, pending requests, a few registers."""
    return {
        "vcpu": view["vcpu"], "apic_id": view.get("apic_id"), "in_guest": view.get("in_guest"),
        "ppr": view.get("ppr"), "tpr": view.get("tpr"),
        "irr": (view.get("irr") or {}).get("hex"), "isr": (view.get("isr") or {}).get("hex"),
        "tmr": (view.get("tmr") or {}).get("hex"),
        "handled": (view.get("handled_vectors") or {}).get("hex"),
        "pending": view.get("pending_requests") or [],
    }


def vm_view(entry: VmEntry, vcpus: int, after: int, events: int) -> dict[str, Any]:
    """The VM as the dashboard draws it, with the events after seq `after` (the last
    `events` of them). Caller holds the VM's lock."""
    if entry.kvm is not None:
        h = entry.kvm
        ioapic = KO.ioapic_view(h)
        total = len(KO.vcpus(h)["vcpus"])
        cards = [_vcpu(KO.vcpu_view(h, n)) for n in range(min(total, vcpus))]
        log = h.log
    else:
        vm = entry.vm
        ioapic = vm.ioapic_view()
        total = len(vm.vcpus)
        cards = [_vcpu(vm.vcpu_view(n)) for n in range(min(total, vcpus))]
        log = vm.log
    last = log.next_seq - 1
    return {
        "id": entry.id, "summary": ops.summary(entry), "ioapic": ioapic, "vcpus": cards,
        "vcpus_total": total, "last_seq": last,
        "events": log.since(max(after, last - events), events),
    }


async def vm_list(registry: Registry, who: str) -> list[dict[str, Any]]:
    """The VMs of tenant `who` (the dashboard shows the requesting tenant's VMs only)."""
    out = []
    for vm_id in registry.ids(who):
        try:
            async with registry.locked(who, vm_id) as entry:
                s = ops.summary(entry)
        except EngineError as exc:  # deleted meanwhile
            if exc.kind != ErrorKind.NOT_FOUND:
                raise
            continue
        out.append({k: s.get(k) for k in ("id", "backend", "vcpus", "irqchip", "profile",
                                          "events")})
    return out


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + pydantic_core.to_json(data) + b"\n\n"


async def _updates(request: Request, vm_id: str | None) -> AsyncIterator[bytes]:
    registry: Registry = request.app.state.registry
    settings: Settings = request.app.state.settings
    interval = settings.ui_interval_ms / 1000
    who = tenant(request)
    sub = registry.hub.subscribe()
    sent = 0  # seq of the last event sent
    try:
        dirty = {VM_LIST, vm_id} if vm_id else {VM_LIST}
        while True:
            if VM_LIST in dirty:
                yield _sse("vms", {"vms": await vm_list(registry, who)})
            if vm_id is not None and (vm_id in dirty or VM_LIST in dirty):
                try:
                    async with registry.locked(who, vm_id) as entry:
                        view = vm_view(entry, settings.ui_vcpus, sent, settings.ui_events)
                except EngineError as exc:
                    if exc.kind != ErrorKind.NOT_FOUND:
                        raise
                    yield _sse("vm", {"id": vm_id, "gone": True})
                else:
                    if view["last_seq"] < sent:  # restored from an older snapshot
                        view["reset"] = True
                    sent = view["last_seq"]
                    yield _sse("vm", view)
            if interval:
                await asyncio.sleep(interval)  # what changes meanwhile goes in one update
            try:
                await asyncio.wait_for(sub.wake.wait(), KEEPALIVE_S)
            except TimeoutError:
                yield b": keepalive\n\n"
            if registry.hub.closed:
                return
            dirty = sub.take()
    finally:
        registry.hub.unsubscribe(sub)


@router.get("/ui/stream")
async def ui_stream(request: Request, vm: str | None = None) -> StreamingResponse:
    return StreamingResponse(_updates(request, vm or None), media_type="text/event-stream",
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})


def _has_timeline(request: Request) -> bool:
    return any(getattr(r, "path", None) == TIMELINE_PATH for r in request.app.router.routes)


@router.get("/ui")
async def ui(request: Request, vm: str | None = None) -> HTMLResponse:
    registry: Registry = request.app.state.registry
    settings: Settings = request.app.state.settings
    vms = await vm_list(registry, tenant(request))
    if vm is None and vms:
        vm = vms[0]["id"]
    items = "".join(
        f'<li><a href="/ui?vm={html.escape(v["id"], True)}"'
        f'{" aria-current=page" if v["id"] == vm else ""}>{html.escape(v["id"])}</a> '
        f'<small>{html.escape(str(v["irqchip"]))} {html.escape(str(v["profile"]))} '
        f'{v["vcpus"]} vCPU</small></li>' for v in vms)
    timeline = ""
    if vm is not None and _has_timeline(request):
        timeline = ('<section id="timeline-svg"><h2>Timeline</h2>'
                    f'<img alt="timeline" data-src="{TIMELINE_PATH}"></section>')
    vm_attr = html.escape(vm or "", True)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>irqlab dashboard{" - " + html.escape(vm) if vm else ""}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{STATIC_URL}/dashboard.css">
<script defer src="{STATIC_URL}/dashboard.js"></script>
</head><body data-vm="{vm_attr}" data-events="{settings.ui_events}">
<header><h1>irqlab</h1><span id="status">connecting…</span>
<nav><a href="/docs">API docs</a> <a href="/redoc">ReDoc</a> <a href="/metrics">metrics</a></nav>
</header>
<aside><h2>VMs</h2><ul id="vms">{items or "<li>No VM yet: POST /v1/vms</li>"}</ul></aside>
<main>
<section id="vm"><h2 id="vm-title">{html.escape(vm) if vm else "No VM selected"}</h2>
<p id="vm-summary"></p></section>
<section><h2>IOAPIC</h2><table id="ioapic"><thead><tr><th>pin</th><th>vector</th>
<th>delivery</th><th>dest mode</th><th>dest</th><th>trigger</th><th>polarity</th>
<th>masked</th><th>line</th><th>Remote IRR</th><th>IRR</th><th>status</th><th>EOIs</th>
</tr></thead><tbody></tbody></table></section>
<section><h2>vCPUs</h2><p class="legend">16×16 grids, vector = row×16 + column
(row 0 at the top): <b class="irr">IRR</b> <b class="isr">ISR</b> <b class="tmr">TMR</b>
<b class="handled">handled vectors</b></p><div id="vcpus"></div></section>
{timeline}
<section id="events-section"><h2>Events <small>(last {settings.ui_events}; click one
for its cause chain)</small></h2>
<div id="chain" hidden><h3>Cause chain</h3><ol></ol></div>
<table id="events"><thead><tr><th>seq</th><th>actor</th><th>kind</th><th>fields</th>
<th>cause</th></tr></thead><tbody></tbody></table></section>
</main></body></html>
"""
    return HTMLResponse(page, headers={"content-security-policy": CSP,
                                       "cache-control": "no-store"})


def install(app: FastAPI) -> None:
    app.mount(STATIC_URL, StaticFiles(directory=STATIC), name="ui-static")
    app.router.routes.extend(router.routes)
