"""A route class for the hottest routes: the endpoint takes only the Request and returns a
Response, so FastAPI's per-request dependency solving and response serialization are skipped.

The endpoint validates its own path parameters and body (app.api.deps.path_*, app.api.bodies.
json_body, which raise FastAPI's RequestValidationError, so errors still reach the one
problem+json handler), and declares them for the OpenAPI document with `openapi_extra`; the
route stays a normal APIRoute for the docs (summary, tags, response model, examples).
Measured on the line route: about 20 µs per request of ~140 µs in the app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

from fastapi import Request, Response
from fastapi.routing import APIRoute


class RequestOnlyRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = cast(Callable[[Request], Awaitable[Response]], self.endpoint)

        async def handler(request: Request) -> Response:
            return await endpoint(request)

        return handler
