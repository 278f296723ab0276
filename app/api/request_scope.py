"""What the middlewares leave in the ASGI scope for the routes: the request's tenant, its
body as received (for the journal), and whether the request is a start-up replay."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from fastapi import Request

from .registry import DEFAULT_TENANT, OpRecord

TENANT = "irqlab.tenant"  # set by app.api.access when tokens are configured
BODY = "irqlab.body"  # set by app.api.middleware.BodyLimitMiddleware
REPLAY = "irqlab.replay"  # set by app.api.replay: apply, but do not journal again


def tenant(request: Request) -> str:
    scope: MutableMapping[str, Any] = request.scope
    name: str = scope.get(TENANT, DEFAULT_TENANT)
    return name


def op_record(request: Request) -> OpRecord | None:
    """The request as a journal record, or None when nothing is journaled (no state
    directory, or this is a replay)."""
    scope: MutableMapping[str, Any] = request.scope
    if scope["app"].state.registry.store is None or scope.get(REPLAY):
        return None
    ctype = ""
    for name, value in scope["headers"]:
        if name == b"content-type":
            ctype = value.decode("latin-1")
    path: str = scope["path"]
    if scope.get("query_string"):
        path += "?" + scope["query_string"].decode("latin-1")
    return (scope["method"], path, ctype, scope.get(BODY, b""))
