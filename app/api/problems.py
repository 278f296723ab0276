"""RFC 9457 problem details: the one place where errors become HTTP responses.

Engine errors (`EngineError`) are mapped by kind; request validation errors, and scenario
documents the engine refuses (`DocumentError`), become 422 with the offending field's path;
unknown routes, wrong methods and unexpected exceptions get problem bodies too, so a client
only ever has to parse one error format.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.engine.errors import EngineError, ErrorKind

from .durable import StateWriteError

log = logging.getLogger("irqlab.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "/problems/"


class ProblemType(BaseModel):
    slug: str
    status: int
    title: str
    description: str


PROBLEM_TYPES: dict[str, ProblemType] = {
    p.slug: p
    for p in [
        ProblemType(slug="not-found", status=404, title="Not Found",
                    description="The VM, vCPU, resampler or route named in the request does "
                                "not exist. `field` says which (`vm`, `vcpu`, `gsi`, ...)."),
        ProblemType(slug="validation-error", status=422, title="Invalid request field",
                    description="A body, path or query field is missing, has the wrong type "
                                "or is out of range. `field` is the dotted path of the first "
                                "offending field and `errors` lists them all. Booleans are "
                                "never accepted where an integer is expected. For a scenario "
                                "document, `field` is the path of the bad element "
                                "(`steps[3].pin`); a document over a service limit also has "
                                "`limit` (the setting) and `max`, a YAML or JSON syntax error "
                                "`line` and `column`."),
        ProblemType(slug="invalid-operation", status=400, title="Invalid operation",
                    description="A well-formed request that the modelled kernel refuses: KVM "
                                "would return -EINVAL (`kvm_errno`), or the guest access "
                                "would fault (`fault`: `#GP`). `detail` gives KVM's reason. "
                                "On the kvm backend: the real kernel refused an ioctl "
                                "(`kvm_errno` is its errno), or irqlab's guest failed "
                                "(`kvm_failure`: a guest exception, an unexpected exit, the "
                                "watchdog; that vCPU then refuses further commands)."),
        ProblemType(slug="already-exists", status=409, title="Already exists",
                    description="The resource already exists (a VM id, a resampler for a "
                                "GSI). KVM would return -EEXIST where it applies."),
        ProblemType(slug="limit-reached", status=409, title="Limit reached",
                    description="A configured service limit would be exceeded. `limit` names "
                                "the setting (environment variable) and `max` its value."),
        ProblemType(slug="unsupported", status=409, title="Unsupported by this VM",
                    description="A valid request that this VM's configuration cannot do, "
                                "e.g. an operation that is not available on the kvm backend "
                                "(`backend: kvm`), or `backend: kvm` where this host has no "
                                "usable /dev/kvm (`detail` says why)."),
        ProblemType(slug="payload-too-large", status=413, title="Content Too Large",
                    description="The request body is larger than IRQLAB_MAX_BODY_BYTES."),
        ProblemType(slug="unsupported-media-type", status=415,
                    title="Unsupported Media Type",
                    description="The body's Content-Type is not one the route reads: scenario "
                                "documents are application/json, or YAML as application/yaml "
                                "or text/yaml."),
        ProblemType(slug="bad-request", status=400, title="Bad Request",
                    description="The HTTP request itself is malformed."),
        ProblemType(slug="method-not-allowed", status=405, title="Method Not Allowed",
                    description="The resource exists but does not support this method."),
        ProblemType(slug="service-unavailable", status=503, title="Service Unavailable",
                    description="The server is stopping: work in flight was cancelled. "
                                "Retry against the restarted service."),
        ProblemType(slug="unauthorized", status=401, title="Unauthorized",
                    description="Tokens are configured (IRQLAB_TOKENS) and the request has no "
                                "`Authorization: Bearer <token>` header, or an unknown token."),
        ProblemType(slug="forbidden-origin", status=403, title="Cross-site request refused",
                    description="The request carries a browser `Origin` that is neither this "
                                "service's own nor listed in IRQLAB_CORS_ORIGINS: a web page "
                                "on another site may not drive the API."),
        ProblemType(slug="host-not-allowed", status=400, title="Host not allowed",
                    description="The `Host` header is not one of IRQLAB_ALLOWED_HOSTS."),
        ProblemType(slug="state-unavailable", status=503, title="State not writable",
                    description="The operation could not be made durable (IRQLAB_STATE_DIR "
                                "could not be written), so it is not acknowledged; the VM in "
                                "memory may be ahead of what a restart would restore."),
        ProblemType(slug="internal-error", status=500, title="Internal Server Error",
                    description="A bug in irqlab. Please report it with the request."),
    ]
}


def type_uri(slug: str) -> str:
    return TYPE_PREFIX + slug


class Problem(BaseModel):
    """An RFC 9457 problem details object (media type application/problem+json)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "type": "/problems/not-found", "title": "Not Found", "status": 404,
        "detail": "no VM with id 'nope'", "field": "vm", "instance": "/v1/vms/nope",
    }]})

    type: str = Field(description="URI reference identifying the problem type; "
                                  "GET it for a description.")
    title: str
    status: int
    detail: str
    instance: str | None = Field(None, description="The request path.")
    field: str | None = Field(None, description="The offending input (dotted path), if any.")


class LimitError(EngineError):
    """A configured service limit (not a KVM one) would be exceeded."""

    def __init__(self, detail: str, field: str | None, limit: str, maximum: int) -> None:
        super().__init__(ErrorKind.LIMIT, detail, field)
        self.limit = limit
        self.maximum = maximum


class KvmFailure(EngineError):
    """The real KVM refused an operation (an ioctl errno) or irqlab's guest failed: a 400
    invalid-operation whose extra members (`kvm_errno` or `kvm_failure`) say which."""

    def __init__(self, detail: str, extra: dict[str, Any], field: str | None = None) -> None:
        super().__init__(ErrorKind.INVALID, detail, field)
        self.extra = extra


class DocumentError(EngineError):
    """A scenario document that cannot run: malformed (the engine's EngineError(invalid),
    whose field is the element's path), unparsable, or over a service limit. It is a 422
    validation problem, not a KVM refusal (those are results inside a run)."""

    def __init__(self, detail: str, field: str | None, *, error_type: str = "scenario_invalid",
                 limit: str | None = None, maximum: float | None = None,
                 line: int | None = None, column: int | None = None) -> None:
        super().__init__(ErrorKind.INVALID, detail, field or "body")
        self.error_type = error_type
        self.extra: dict[str, Any] = {
            k: v for k, v in (("limit", limit), ("max", maximum), ("line", line),
                              ("column", column)) if v is not None}


class ClientGone(Exception):
    """The client of a request that creates a VM disconnected before it was answered."""


class UnsupportedMediaType(Exception):
    def __init__(self, media_type: str, accepted: str) -> None:
        super().__init__(media_type)
        self.detail = f"Content-Type {media_type!r} is not accepted here; use {accepted}"


_KIND_SLUG = {
    ErrorKind.NOT_FOUND: "not-found",
    ErrorKind.INVALID: "invalid-operation",
    ErrorKind.EXISTS: "already-exists",
    ErrorKind.LIMIT: "limit-reached",
    ErrorKind.UNSUPPORTED: "unsupported",
}


def problem_response(slug: str, detail: str, *, instance: str | None = None,
                     field: str | None = None, status: int | None = None,
                     headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    pt = PROBLEM_TYPES[slug]
    body: dict[str, Any] = {
        "type": type_uri(slug), "title": pt.title, "status": status or pt.status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    if field is not None:
        body["field"] = field
    body.update(extra)
    return JSONResponse(body, status_code=body["status"], media_type=PROBLEM_MEDIA_TYPE,
                        headers=headers)


def engine_problem(exc: EngineError, instance: str | None = None) -> JSONResponse:
    """EngineError -> problem: not-found 404, invalid 400 (KVM's -EINVAL or a guest #GP),
    exists 409, limit 409 (naming the setting), unsupported 409; a scenario DocumentError is
    422 at the element's path."""
    if isinstance(exc, DocumentError):
        field = exc.field or "body"
        return problem_response(
            "validation-error", f"{field}: {exc.detail}", instance=instance, field=field,
            errors=[{"field": field, "message": exc.detail, "type": exc.error_type}],
            **exc.extra)
    slug = _KIND_SLUG.get(exc.kind, "invalid-operation")
    extra: dict[str, Any] = {}
    if isinstance(exc, KvmFailure):
        extra.update(exc.extra)
    elif exc.irqlab_rule:
        pass
    elif exc.kind == ErrorKind.INVALID:
        if "#GP" in exc.detail:
            extra["fault"] = "#GP"
        else:
            extra["kvm_errno"] = "EINVAL"
    elif exc.kind == ErrorKind.EXISTS and exc.field != "id":
        extra["kvm_errno"] = "EEXIST"
    if isinstance(exc, LimitError):
        extra["limit"] = exc.limit
        extra["max"] = exc.maximum
    return problem_response(slug, exc.detail, instance=instance, field=exc.field, **extra)


_LOCATIONS = {"body", "query", "path", "header", "cookie"}


def field_path(loc: tuple[Any, ...] | list[Any], ctx: dict[str, Any] | None = None) -> str:
    """('body', 'entries', 0, 'msi', 'data') -> 'entries[0].msi.data'. A model-level check
    that names its field in ctx['field'] is reported at that field."""
    parts = list(loc)
    if parts and parts[0] in _LOCATIONS:
        parts = parts[1:]
    if ctx and isinstance(ctx.get("field"), str) and ctx["field"] != "body":
        parts.append(ctx["field"])
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "body"


def validation_problem(errors: list[dict[str, Any]] | Any, instance: str | None) -> JSONResponse:
    items = []
    for err in errors:
        ctx = err.get("ctx") if isinstance(err.get("ctx"), dict) else None
        # A JSON syntax error is located at a character offset (FastAPI's loc is ("body",
        # offset)): it is the body's fault, not an element's.
        field = "body" if err.get("type") == "json_invalid" else field_path(
            err.get("loc", ()), ctx)
        items.append({"field": field, "message": err.get("msg"), "type": err.get("type")})
    first = items[0] if items else {"field": "body", "message": "invalid request"}
    return problem_response("validation-error", f"{first['field']}: {first['message']}",
                            instance=instance, field=first["field"], errors=items)


async def _on_engine_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EngineError)
    limit = (exc.limit if isinstance(exc, LimitError)
             else exc.extra.get("limit") if isinstance(exc, DocumentError) else None)
    if limit is not None:
        count_refusal(request, limit)
    return engine_problem(exc, request.url.path)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_problem(exc.errors(), request.url.path)


async def _on_media_type(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UnsupportedMediaType)
    return problem_response("unsupported-media-type", exc.detail, instance=request.url.path)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    slug = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large",
            415: "unsupported-media-type"}.get(
        exc.status_code, "bad-request")
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route for {request.method} {request.url.path}"
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 405:
        # Starlette's Allow names the methods of the first route whose path matched; a path
        # served by several routes (GET and DELETE /v1/vms/{vm}) allows all of theirs.
        allowed = allowed_methods(request)
        headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        detail = f"{request.method} is not allowed here; allowed: {', '.join(allowed)}"
    return problem_response(slug, detail, instance=request.url.path, status=exc.status_code,
                            headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method served at this request's path: by the routes whose path is this one
    literally if there are any (POST /v1/scenarios/run), else by the templated ones."""
    literal: set[str] = set()
    templated: set[str] = set()
    for route in request.app.router.routes:
        if getattr(route, "refuses_methods", False):  # a literal path's 405 guard
            continue
        for method in getattr(route, "methods", None) or ():
            if route.matches({**request.scope, "method": method})[0] == Match.FULL:
                path = getattr(route, "path", "")
                (templated if "{" in path else literal).add(method)
    return sorted(literal or templated)


async def _on_state_write(request: Request, exc: Exception) -> JSONResponse:
    log.error("state directory write failed on %s %s: %s", request.method, request.url.path,
              exc)
    return problem_response("state-unavailable", str(exc), instance=request.url.path)


async def _on_client_gone(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    # Nobody reads it: 499 (client closed request) for the access log.
    return problem_response("bad-request", str(exc), instance=request.url.path, status=499)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response("internal-error", f"{type(exc).__name__}: an irqlab bug",
                            instance=request.url.path)


def count_refusal(request: Request, limit: str) -> None:
    """A service limit or budget refused the request: irqlab_budget_refusals_total{limit}
    (app/api/metrics.py), on apps that have metrics."""
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.refused(limit)


def install(app: FastAPI) -> None:
    app.add_exception_handler(EngineError, _on_engine_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(UnsupportedMediaType, _on_media_type)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(StateWriteError, _on_state_write)
    app.add_exception_handler(ClientGone, _on_client_gone)
    app.add_exception_handler(Exception, _on_unexpected)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries documenting the problem bodies a route can return."""
    by_status: dict[int, list[ProblemType]] = {}
    for pt in PROBLEM_TYPES.values():
        by_status.setdefault(pt.status, []).append(pt)
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        types = by_status[status]
        examples = {
            pt.slug: {"summary": pt.title, "value": {
                "type": type_uri(pt.slug), "title": pt.title, "status": status,
                "detail": _EXAMPLE_DETAIL.get(pt.slug, pt.description),
                **_EXAMPLE_EXTRA.get(pt.slug, {}),
            }}
            for pt in types
        }
        out[status] = {
            "description": " / ".join(pt.title for pt in types),
            "content": {PROBLEM_MEDIA_TYPE: {
                "schema": {"$ref": "#/components/schemas/Problem"}, "examples": examples}},
        }
    return out


_EXAMPLE_DETAIL = {
    "not-found": "no VM with id 'nope'",
    "validation-error": "vector: booleans are not accepted as integers",
    "invalid-operation": "irqchip routes are rejected with a split irqchip (-EINVAL)",
    "already-exists": "a VM with id 'race' already exists",
    "limit-reached": "at most 64 VMs may exist (IRQLAB_MAX_VMS)",
    "payload-too-large": "request body exceeds 1048576 bytes (IRQLAB_MAX_BODY_BYTES)",
    "unsupported-media-type": "Content-Type 'text/plain' is not accepted here; use "
                              "application/json, application/yaml or text/yaml",
}
_EXAMPLE_EXTRA: dict[str, dict[str, Any]] = {
    "not-found": {"field": "vm"},
    "validation-error": {"field": "vector", "errors": [
        {"field": "vector", "message": "booleans are not accepted as integers",
         "type": "int_not_bool"}]},
    "invalid-operation": {"field": "entries[0].irqchip", "kvm_errno": "EINVAL"},
    "already-exists": {"field": "id"},
    "limit-reached": {"field": "id", "limit": "IRQLAB_MAX_VMS", "max": 64},
    "payload-too-large": {"limit": "IRQLAB_MAX_BODY_BYTES", "max": 1048576},
}


def add_body_problems(spec: dict[str, Any]) -> None:
    """Document on every operation with a request body the problems BodyLimitMiddleware
    answers before any route sees it: 400 (a malformed Content-Length) and 413 (a body over
    IRQLAB_MAX_BODY_BYTES)."""
    extra = problem_responses(400, 413)
    for item in spec.get("paths", {}).values():
        for operation in item.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                responses = operation.setdefault("responses", {})
                for status, entry in extra.items():
                    responses.setdefault(str(status), entry)
