"""Who may call the API, from where, with what: one ASGI middleware in front of every route
(the hot routes included, which skip FastAPI's dependencies), so no route can forget it.

In order:
1. Host: with IRQLAB_ALLOWED_HOSTS, any other `Host` is 400 host-not-allowed (a DNS
   rebinding page reaches the service under its own host name).
2. Origin: a browser sends `Origin` with every cross-site request, including the "simple"
   ones it sends without asking first (a form post, a body-less POST); unless it is this
   service's own origin or listed in IRQLAB_CORS_ORIGINS the request is 403
   forbidden-origin. Clients that are not browsers send no Origin.
3. Content type: POST/PUT/PATCH bodies are JSON or YAML. Anything else, or a body without a
   Content-Type, is 415: the content types a web page can send cross-site without a CORS
   preflight (text/plain, forms) never reach a route.
4. Token: with IRQLAB_TOKENS, /v1 routes need `Authorization: Bearer <token>` (401
   otherwise); the token's tenant goes into the scope, where the registry reads it. Probes,
   docs, the OpenAPI document and problem types stay open.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from .problems import problem_response
from .request_scope import REPLAY, TENANT
from .scenarios import ACCEPTED, JSON_MEDIA_TYPES, YAML_MEDIA_TYPES
from .tenants import TokenTable

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
MEDIA_TYPES = frozenset(JSON_MEDIA_TYPES + YAML_MEDIA_TYPES)


def split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _host_allowed(host: str, allowed: list[str]) -> bool:
    bare = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    for pattern in allowed:
        if pattern == "*" or host == pattern or bare == pattern:
            return True
        if pattern.startswith("*.") and (bare.endswith(pattern[1:])
                                         or host.endswith(pattern[1:])):
            return True
    return False


class AccessMiddleware:
    def __init__(self, app: ASGIApp, tokens: TokenTable | None, cors_origins: list[str],
                 allowed_hosts: list[str]) -> None:
        self.app = app
        self.tokens = tokens
        self.origins = frozenset(o.rstrip("/") for o in cors_origins)
        self.allowed_hosts = [h.lower() for h in allowed_hosts]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get(REPLAY):
            await self.app(scope, receive, send)
            return
        host = origin = ctype = auth = None
        has_body = False
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1").lower()
            elif name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"content-type":
                ctype = value.decode("latin-1")
            elif name == b"authorization":
                auth = value.decode("latin-1")
            elif name == b"content-length":
                has_body = value.strip() not in (b"0", b"")
            elif name == b"transfer-encoding":
                has_body = True
        if self.allowed_hosts and not _host_allowed(host or "", self.allowed_hosts):
            await self._refuse(scope, send, "host-not-allowed",
                               f"Host {host!r} is not one of IRQLAB_ALLOWED_HOSTS")
            return
        if origin is not None and origin.rstrip("/") not in self.origins and \
                not self._same_origin(scope, origin, host):
            await self._refuse(scope, send, "forbidden-origin",
                               f"requests from origin {origin!r} are not allowed "
                               "(IRQLAB_CORS_ORIGINS)")
            return
        if scope["method"] in BODY_METHODS and (has_body or ctype is not None):
            media = (ctype or "").split(";")[0].strip().lower()
            if media not in MEDIA_TYPES and not media.endswith("+json"):
                shown = media or "none"
                await self._refuse(scope, send, "unsupported-media-type",
                                   f"Content-Type {shown!r} is not accepted here; use "
                                   f"{ACCEPTED}")
                return
        if self.tokens is not None and scope["path"].startswith("/v1/"):
            tenant = None
            if auth is not None and auth[:7].lower() == "bearer ":
                tenant = self.tokens.tenant_of(auth[7:].strip())
            if tenant is None:
                await self._refuse(
                    scope, send, "unauthorized",
                    "a valid `Authorization: Bearer <token>` header is required"
                    if auth is None else "unknown token",
                    headers={"www-authenticate": 'Bearer realm="irqlab"'})
                return
            scope[TENANT] = tenant
        await self.app(scope, receive, send)

    @staticmethod
    def _same_origin(scope: Scope, origin: str, host: str | None) -> bool:
        scheme = scope.get("scheme", "http")
        return host is not None and origin.lower() == f"{scheme}://{host}"

    @staticmethod
    async def _refuse(scope: Scope, send: Send, slug: str, detail: str,
                      headers: dict[str, str] | None = None, **extra: Any) -> None:
        response = problem_response(slug, detail, instance=scope.get("path"),
                                    headers=headers, **extra)

        async def no_receive() -> Any:
            return {"type": "http.disconnect"}

        await response(scope, no_receive, send)
