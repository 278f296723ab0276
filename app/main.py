"""The ASGI application: `app.main:app`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute

from app import __version__
from app.api import bodies, bounded, kvm_ops, ops, problems, scenario_models
from app.api.access import AccessMiddleware, split_list
from app.api.durable import StateStore
from app.api.live import close_on_exit_signals
from app.api.metrics import Metrics, MetricsMiddleware, metrics_endpoint
from app.api.middleware import BodyLimitMiddleware
from app.api.openapi_extras import SERVERS, WALKTHROUGH, assign_operation_ids, order_paths
from app.api.registry import Registry
from app.api.replay import restore_all
from app.api.tenants import TokenTable
from app.explore.doc_models import openapi_components as exploration_components
from app.routers import ALL
from app.settings import Settings, get_settings
from app.web import dashboard, docs

DESCRIPTION = """\
Deterministic models of Linux KVM's x86 interrupt controllers (an IOAPIC per VM, a local
APIC per vCPU), in-kernel and split-irqchip modes, driven step by step over HTTP.

Integers (vectors, offsets, raw values, ids) are JSON integers or `"0x…"` strings; booleans
are never integers. Errors are RFC 9457 `application/problem+json`; GET a problem's `type`
for its description. Every operation response carries the `events` it caused.

`"backend": "kvm"` on POST /v1/vms makes a real VM on the host's /dev/kvm (in-kernel irqchip)
instead of a model; the IOAPIC, MSI, vCPU view/ack/EOI and report routes then read the kernel
(fields it does not expose are null) and the other routes answer 409 `unsupported`.
"""

TAGS = [
    {"name": "vms", "description": "VM lifecycle (KVM_CREATE_VM, irqchip, vCPUs)."},
    {"name": "profiles", "description": "Behaviour presets per kernel release, and flags."},
    {"name": "ioapic", "description": "The IOAPIC: entries, input lines, MMIO."},
    {"name": "routing", "description": "GSI routing, KVM_SIGNAL_MSI, KVM_IRQ_LINE."},
    {"name": "resamplers", "description": "irqfd with KVM_IRQFD_FLAG_RESAMPLE."},
    {"name": "clock", "description": "Logical time (EOI storm throttle)."},
    {"name": "vcpus", "description": "Local APICs, KVM_RUN, interrupt ack and EOI."},
    {"name": "reports", "description": "Bitmaps, state, event log, snapshots."},
    {"name": "scenarios", "description": "Scripted runs (handlers, steps, expectations, a "
                                         "profile/irqchip matrix) in one call; the built-in "
                                         "library of KVM/QEMU regression scenarios."},
    {"name": "explorations", "description": "Model checking: every interleaving of an "
                                            "exploration's actors and the hardware's moves, "
                                            "searched in worker processes; the built-in "
                                            "library of race explorations."},
    {"name": "campaigns", "description": "Differential campaigns: seeded random operation "
                                         "sequences on the model under several presets (and "
                                         "on real KVM), in worker processes; a census of "
                                         "where presets diverge."},
    {"name": "health", "description": "Liveness and readiness probes."},
    {"name": "meta", "description": "Problem type documentation."},
]


# Probes first, then the per-step operations of a scenario driver, then everything else.
_HOT_PATHS = (
    "/healthz", "/readyz",
    "/v1/vms/{vm}/ioapic/pins/{pin}/line", "/v1/vms/{vm}/vcpus/{n}/ack",
    "/v1/vms/{vm}/vcpus/{n}/eoi", "/v1/vms/{vm}/vcpus/{n}/enter", "/v1/vms/{vm}/bitmaps",
    "/v1/vms/{vm}/irq", "/v1/vms/{vm}/msi", "/v1/vms/{vm}/ioapic/pins/{pin}",
    "/v1/vms/{vm}/ioapic/mmio", "/v1/vms/{vm}/vcpus/{n}", "/v1/vms/{vm}/events",
)


def _route_rank(route: BaseRoute) -> int:
    path = getattr(route, "path", "")
    return _HOT_PATHS.index(path) if path in _HOT_PATHS else len(_HOT_PATHS)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Startup: the KVM watchdog's signal handler (only the main thread, where uvicorn runs
    the event loop, may install it), the exit signals' hooks (open dashboard streams end,
    expensive work is killed) and durable VMs restored from IRQLAB_STATE_DIR. Shutdown:
    close every VM, releasing the kvm ones' fds and syncing the durable ones' journals."""
    kvm_ops.install_kick_handler()
    registry: Registry = app.state.registry
    if registry.store is not None:
        await restore_all(app, registry, registry.store)
        registry.store.start()
    idle = app.state.settings.kvm_idle_seconds
    reaper = asyncio.get_running_loop().create_task(_expire_idle_kvm(registry, idle)) \
        if idle > 0 else None
    restore_signals = close_on_exit_signals(registry.hub)  # open /ui streams end on shutdown
    undo_signals = bounded.kill_work_on_stop_signals(app)
    try:
        yield
    finally:
        undo_signals()
        restore_signals()
        bounded.close_pool(app)  # kill the worker processes of expensive requests at once
        if reaper is not None:
            reaper.cancel()
        await registry.close_all()


def _running_jobs(app: FastAPI, kind: str) -> int:
    """Jobs of one kind running now (`app.state.<kind>`, the manager that exists once the
    kind's first job was started)."""
    manager = getattr(app.state, kind, None)
    return 0 if manager is None else int(manager.running())


async def _expire_idle_kvm(registry: Registry, idle_seconds: float) -> None:
    """IRQLAB_KVM_IDLE_SECONDS: delete kvm-backend VMs no request used for that long
    (checked a few times per period, so one lives at most ~1.25 periods unused)."""
    while True:
        await asyncio.sleep(max(0.05, min(idle_seconds / 4, 30.0)))
        try:
            await registry.expire_idle_kvm(idle_seconds)
        except Exception:  # keep reaping: one VM failing to close must not stop it
            logging.getLogger("irqlab.api").exception("idle kvm VM expiry failed")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logging.getLogger("irqlab").setLevel(settings.log_level.upper().replace("TRACE", "DEBUG"))
    app = FastAPI(title="irqlab", version=__version__, description=DESCRIPTION + WALKTHROUGH,
                  openapi_tags=TAGS, servers=SERVERS, lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # offline pages: app.web.docs
    app.state.settings = settings
    ops.VALIDATE_RESPONSES = settings.validate_responses
    store = None if settings.state_dir is None else StateStore(
        settings.state_dir, settings.state_fsync, settings.state_fsync_interval_ms,
        settings.state_snapshot_every)
    app.state.registry = Registry(settings.max_vms, settings.max_vcpus,
                                  settings.max_events_per_vm, settings.max_kvm_vms,
                                  settings.max_kvm_vcpus, settings.tenant_max_vms, store)
    app.state.metrics = Metrics(app.state.registry)
    app.state.metrics.count_running("exploration", lambda: _running_jobs(app, "explorations"))
    app.state.metrics.count_running("campaign", lambda: _running_jobs(app, "campaigns"))
    problems.install(app)
    docs.install(app)
    dashboard.install(app)
    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    for router in ALL:
        # The routers' prefixes, tags and responses were applied when their routes were
        # declared, so the routes go straight into the app's table: FastAPI matches an
        # included router by walking it once to find the router and again to dispatch.
        app.router.routes.extend(router.routes)
    # Starlette takes the first route whose pattern matches and FastAPI tries them in order,
    # so the table is ordered by how often a scenario driver calls each route; no two of our
    # paths can match the same request, so order changes cost, not behaviour.
    declared = list(app.router.routes)
    app.router.routes.sort(key=_route_rank)
    assign_operation_ids(app.router.routes)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    # Added last = runs first: metrics (sees every answer, 413s and refusals included),
    # CORS (answers preflights), then the access checks.
    tokens = None if settings.tokens is None else TokenTable.load(settings.tokens)
    app.state.tokens = tokens
    origins = split_list(settings.cors_origins)
    app.add_middleware(AccessMiddleware, tokens=tokens, cors_origins=origins,
                       allowed_hosts=split_list(settings.allowed_hosts))
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins,
                           allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                           allow_headers=["authorization", "content-type"],
                           expose_headers=["location"])
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    _finish_openapi(app, declared, tokens is not None)
    return app


def _finish_openapi(app: FastAPI, declared: list[BaseRoute], tokens_required: bool) -> None:
    """Six touches to the generated document: the bearer security scheme (/docs can
    authorize; required on /v1 routes when tokens are configured, optional otherwise), the
    Problem schema that error responses
    reference under application/problem+json, the scenario document's schemas (the scenario
    routes read their body themselves, JSON or YAML, so FastAPI does not see the model),
    paths in reading order (`declared`: the routers' order, see order_paths), and integral
    bounds as JSON integers (FastAPI's OpenAPI model types minimum/maximum as float,
    so `le=255` would read 255.0), and declared alternatives (anyOf) kept over the merged
    response_model $ref."""
    generate = app.openapi

    def fix(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node and "anyOf" in node:
                # A response that declares alternatives to its response_model (a run's
                # format=perfetto): FastAPI merged them; the alternatives are the schema.
                del node["$ref"]
            for key, value in node.items():
                if isinstance(value, float) and value.is_integer() and key in _BOUNDS:
                    node[key] = int(value)
                else:
                    fix(value)
        elif isinstance(node, list):
            for item in node:
                fix(item)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            schemas["Problem"] = problems.Problem.model_json_schema(
                ref_template="#/components/schemas/{model}")
            for model in bodies.MANUAL_BODY_MODELS:
                schemas.setdefault(model.__name__, model.model_json_schema(
                    ref_template="#/components/schemas/{model}"))
            for name, schema in (*scenario_models.openapi_components().items(),
                                 *exploration_components().items()):
                if schemas.setdefault(name, schema) != schema:
                    raise RuntimeError(f"two different OpenAPI schemas named {name!r}")
            problems.add_body_problems(spec)
            _security(spec, tokens_required)
            fix(spec)
            order_paths(spec, declared, TAGS)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _security(spec: dict[str, Any], required: bool) -> None:
    """The bearer scheme, the /v1 operations' security requirement, their 401, and the 415
    of every operation with a request body (app.api.access answers both before routing)."""
    spec["components"]["securitySchemes"] = {"bearer": {
        "type": "http", "scheme": "bearer",
        "description": "A token from `irqlab token add TENANT` (IRQLAB_TOKENS). Without "
                       "IRQLAB_TOKENS no token is needed."}}
    unauthorized = problems.problem_responses(401)[401]
    media = problems.problem_responses(415)[415]
    for path, item in spec["paths"].items():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            if path.startswith("/v1/"):
                operation["security"] = [{"bearer": []}] if required else \
                    [{"bearer": []}, {}]
                if required:
                    operation["responses"].setdefault("401", unauthorized)
            if "requestBody" in operation:
                operation["responses"].setdefault("415", media)


_BOUNDS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}


app = create_app()
