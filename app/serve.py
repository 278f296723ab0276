"""`irqlab serve`: uvicorn with a graceful shutdown that answers what it has been sent.

On SIGTERM uvicorn stops accepting connections, lets requests in flight finish (within
IRQLAB_SHUTDOWN_TIMEOUT) and closes idle keep-alive connections at once. That last step
loses a request: a client that has just sent its next request on an idle connection finds
it reset (the kernel answers unread data with RST), and cannot tell whether the request
was applied. Here an idle connection is instead kept for a short drain period: a request
arriving on it is served, answered with `Connection: close`, and the connection closed; a
connection still idle at the end of the period is closed. New connections are refused from
the start (the listening socket is closed first), which tells a client unambiguously that
its request was not applied.
"""

from __future__ import annotations

import asyncio

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# How long an idle keep-alive connection stays open after SIGTERM for a request already on
# its way (capped by IRQLAB_SHUTDOWN_TIMEOUT).
DRAIN_IDLE_SECONDS = 1.0


class DrainingHttpToolsProtocol(HttpToolsProtocol):
    draining = False
    drain_seconds = DRAIN_IDLE_SECONDS
    _drain_timer: asyncio.TimerHandle | None = None

    def shutdown(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.draining = True
            self._drain_timer = self.loop.call_later(self.drain_seconds, self._close_if_idle)
        else:
            self.cycle.keep_alive = False

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered with Connection: close, then closed

    def connection_lost(self, exc: Exception | None) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        super().connection_lost(exc)

    def _close_if_idle(self) -> None:
        idle = self.cycle is None or self.cycle.response_complete
        if idle and not self.transport.is_closing():
            self.transport.close()


def serve(host: str, port: int, log_level: str, shutdown_timeout: int) -> None:
    DrainingHttpToolsProtocol.drain_seconds = min(DRAIN_IDLE_SECONDS, shutdown_timeout)
    uvicorn.run("app.main:app", host=host, port=port, log_level=log_level,
                http=DrainingHttpToolsProtocol, timeout_graceful_shutdown=shutdown_timeout)
