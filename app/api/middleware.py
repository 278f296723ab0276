"""ASGI middleware that refuses request bodies over the configured size with 413.

It checks Content-Length up front and counts the bytes of bodies without one (chunked), so a
client cannot get around the limit by streaming. The body is buffered (it is at most the limit)
and replayed to the application.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import problem_response


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length: str | None = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                length = value.decode("latin-1")
        if length is not None:
            if not length.strip().isdigit():
                await self._reply(scope, send, "bad-request", "invalid Content-Length header")
                return
            if int(length) > self.max_body_bytes:
                await self._too_large(scope, send)
                return
        messages: list[Message] = []
        total = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            total += len(message.get("body", b""))
            if total > self.max_body_bytes:
                await self._too_large(scope, send)
                return
            if not message.get("more_body", False):
                break

        # The body as received, for the journal of a durable VM (app.api.durable).
        scope["irqlab.body"] = b"".join(m.get("body", b"") for m in messages
                                        if m["type"] == "http.request")

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        await self._reply(
            scope, send, "payload-too-large",
            f"request body exceeds {self.max_body_bytes} bytes (IRQLAB_MAX_BODY_BYTES)",
            limit="IRQLAB_MAX_BODY_BYTES", max=self.max_body_bytes,
        )

    async def _reply(self, scope: Scope, send: Send, slug: str, detail: str,
                     **extra: Any) -> None:
        response = problem_response(slug, detail, instance=scope.get("path"),
                                    headers={"connection": "close"}, **extra)
        await response(scope, self._no_receive, send)

    @staticmethod
    async def _no_receive() -> Message:
        return {"type": "http.disconnect"}
