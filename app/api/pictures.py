"""Glue between HTTP and app.pictures: a VM's log window, or a scenario run, as an SVG
timeline, a Perfetto/Chrome trace, a VCD or an HTML report.

A VM's window is copied under the VM's lock (cheap), then drawn in a worker thread; a run is
run and drawn in a worker thread. The size of what is drawn is held to
IRQLAB_MAX_PICTURE_EVENTS."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import Query, Request, Response
from starlette.concurrency import run_in_threadpool

from app import pictures as P
from app.settings import Settings

from .kvm_ops import KvmHandle
from .problems import DocumentError
from .registry import Registry, VmEntry
from .request_scope import tenant

TraceFormat = Literal["perfetto", "vcd"]
RunFormat = Literal["json", "svg", "html", "perfetto", "vcd"]

MEDIA = {
    "svg": "image/svg+xml",
    "html": "text/html; charset=utf-8",
    "perfetto": "application/json",
    "vcd": "text/x-vcd; charset=utf-8",
}
SUFFIX = {"svg": "svg", "html": "html", "perfetto": "perfetto.json", "vcd": "vcd"}
ACCEPT_FORMATS = (("text/html", "html"), ("image/svg+xml", "svg"), ("text/x-vcd", "vcd"))


def _file_name(title: str, fmt: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", title).strip("-") or "irqlab"
    return f"{stem}.{SUFFIX[fmt]}"


def picture_response(body: str, fmt: str, title: str) -> Response:
    headers = {"content-disposition": f'inline; filename="{_file_name(title, fmt)}"'}
    return Response(body.encode(), media_type=MEDIA[fmt], headers=headers)


def check_limit(limit: int | None, settings: Settings) -> int:
    """The window size: `limit`, by default and at most IRQLAB_MAX_PICTURE_EVENTS."""
    cap = settings.max_picture_events
    if limit is None:
        return cap
    if limit > cap:
        raise DocumentError(f"limit must be at most {cap} (IRQLAB_MAX_PICTURE_EVENTS)",
                            "limit", error_type="limit_exceeded",
                            limit="IRQLAB_MAX_PICTURE_EVENTS", maximum=cap)
    return limit


def _draw(fmt: str, recs: list[P.Recording]) -> str:
    if fmt == "svg":
        return P.timelines_svg(recs)
    if fmt == "perfetto":
        return P.perfetto(recs)
    return P.vcd(recs)


async def vm_picture(request: Request, vm_id: str, fmt: str, after: int,
                     limit: int | None) -> Response:
    """A VM's events after `after` (at most `limit`) drawn as `fmt` (svg, perfetto, vcd).
    A kvm-backend VM is drawn from its log alone (no model state, no findings)."""
    settings: Settings = request.app.state.settings
    registry: Registry = request.app.state.registry
    page = check_limit(limit, settings)

    def window(entry: VmEntry) -> P.Recording:
        h: KvmHandle | None = entry.kvm
        if h is not None:
            return P.from_events(h.log.since(after, page), entry.id, len(h.vm.vcpus),
                                 complete=after < h.log.base and h.log.base == 1)
        return P.from_vm(entry.vm, entry.id, after, page)

    rec: P.Recording = await registry.run(tenant(request), vm_id, window)
    body = await run_in_threadpool(_draw, fmt, [rec])
    return picture_response(body, fmt, f"{vm_id}-timeline" if fmt == "svg" else vm_id)


def negotiate(fmt: str | None, accept: str | None) -> str:
    """`format` when given; else the first media type of the Accept header that names a
    picture (text/html, image/svg+xml, text/x-vcd) or JSON, in the order listed; else
    json."""
    if fmt is not None:
        return fmt
    for item in (accept or "").split(","):
        media = item.split(";")[0].strip().lower()
        if media in ("application/json", "application/problem+json"):
            return "json"
        for known, name in ACCEPT_FORMATS:
            if media == known:
                return name
    return "json"


def pick_variants(result: dict[str, Any], variant: str | None) -> list[dict[str, Any]]:
    variants: list[dict[str, Any]] = list(result["variants"])
    if variant is None:
        return variants
    for i, v in enumerate(variants):
        if v["name"] == variant or variant == str(i):
            return [v]
    names = ", ".join(repr(v["name"]) for v in variants)
    raise DocumentError(f"no variant {variant!r} in this run (its variants: {names}; or "
                        "an index from 0)", "variant")


def render_picture(result: dict[str, Any], doc: Any, fmt: str, variant: str | None,
                   cap: int) -> tuple[int, str, bytes, dict[str, str]]:
    """An observed run's picture in `fmt` as (status, media type, body, headers); drawn where
    the run ran (a worker process of app/work/pool.py)."""
    chosen = pick_variants(result, variant)
    for v in chosen:
        if len(v["events"]) > cap:
            raise DocumentError(f"variant {v['name']!r} logged {len(v['events'])} events; "
                                f"pictures draw at most {cap} (IRQLAB_MAX_PICTURE_EVENTS): "
                                "ask for format=json, or run fewer steps", "format",
                                error_type="limit_exceeded",
                                limit="IRQLAB_MAX_PICTURE_EVENTS", maximum=cap)
    name = str(result.get("name") or "scenario")
    if fmt == "html":
        body = P.render_html({**result, "variants": chosen}, doc)
    else:
        body = _draw(fmt, [P.from_variant(v, name, doc) for v in chosen])
    r = picture_response(body, fmt, name)
    headers = {"content-disposition": r.headers["content-disposition"]}
    return 200, MEDIA[fmt], bytes(r.body), headers


# ---- what the routes declare

FormatQuery = Annotated[RunFormat | None, Query(
    alias="format",
    description="json (the result, default), or a picture of the run: svg (every variant's "
                "timeline, stacked), html (a self-contained report: steps, expect checks, "
                "findings, timelines, neighbouring variants side by side), perfetto "
                "(Chrome trace-event JSON, a process per variant) or vcd (a scope per "
                "variant). Without it, an Accept header naming text/html, image/svg+xml or "
                "text/x-vcd picks that picture.")]
ObserveQuery = Annotated[bool, Query(
    description="json: add to every step its `last_seq` (the log's last seq after it) and "
                "`state` (Remote IRR pins; each vCPU's IRR, ISR, handled vectors, pending "
                "requests), what the pictures are drawn from.")]
VariantQuery = Annotated[str | None, Query(
    description="Only this variant (its name, or its index from 0).",
    examples=["linux-6.1 (before fceb3a36c29a)"])]
AfterQuery = Annotated[int, Query(ge=0, description="Draw events after this seq.")]
LimitQuery = Annotated[int | None, Query(
    ge=1, description="Most events drawn (default and maximum IRQLAB_MAX_PICTURE_EVENTS).")]


_EXAMPLES: dict[str, Any] = {
    "svg": '<svg xmlns="http://www.w3.org/2000/svg" width="1236" height="1512" ...>'
           "<title>seed-race-split — linux-6.1 (before fceb3a36c29a)</title>…</svg>",
    "html": "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>irqlab "
            "report: seed-race-split</title>…</html>",
    "perfetto": {"traceEvents": [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "vm-1"}},
        {"ph": "M", "pid": 1, "tid": 2, "name": "thread_name", "args": {"name": "ioapic"}},
        {"ph": "M", "pid": 1, "tid": 1, "name": "thread_name", "args": {"name": "device"}},
        {"ph": "X", "name": "line", "cat": "device", "pid": 1, "tid": 1, "ts": 25, "dur": 1,
         "args": {"seq": 25, "pin": 5, "level": 1, "source": 0}},
        {"ph": "X", "name": "deliver", "cat": "ioapic", "pid": 1, "tid": 2, "ts": 26,
         "dur": 1, "args": {"seq": 26, "pin": 5, "vector": 64, "cause": 25}},
        {"ph": "s", "name": "cause", "cat": "cause", "id": 4294967322, "pid": 1, "tid": 1,
         "ts": 25},
        {"ph": "f", "bp": "e", "name": "cause", "cat": "cause", "id": 4294967322, "pid": 1,
         "tid": 2, "ts": 26}],
        "otherData": {"generator": "irqlab", "time": "1 µs = 1 event seq"}},
    "vcd": "$timescale 1 us $end\n$scope module irqlab $end\n$scope module vm_1 $end\n"
           "$scope module ioapic $end\n$var wire 1 ! pin5_line $end\n"
           "$var wire 1 \" pin5_remote_irr $end\n$upscope $end\n…\n#25\n1!\n#26\n1\"\n",
}


def picture_content(*formats: str) -> dict[str, Any]:
    """OpenAPI `content` entries of the picture media types, with examples."""
    schemas = {"svg": {"type": "string", "description": "An SVG document."},
               "html": {"type": "string", "description": "A self-contained HTML page."},
               "perfetto": {"type": "object", "description": "Chrome trace-event JSON "
                            "({traceEvents: [...]}); open it in Perfetto's UI."},
               "vcd": {"type": "string", "description": "A Value Change Dump."}}
    return {MEDIA[f].split(";")[0]: {"schema": schemas[f], "example": _EXAMPLES[f]}
            for f in formats}
