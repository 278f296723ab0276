"""Expensive requests in the worker pool (app/work/pool.py), from a route's point of view.

`call(request, fn, *args)` runs fn(*args) in a worker process under the run budget of the
settings (IRQLAB_MAX_RUN_CPU_SECONDS, IRQLAB_MAX_RUN_MEMORY_MB, IRQLAB_MAX_RUN_SECONDS, with
IRQLAB_WORKERS processes) while the event loop stays free; a client that disconnects cancels
it (the worker is killed), an exceeded budget is a 422 naming the setting, and a server that
is stopping answers 503. `respond` does the same for a job that returns a Rendered response.
Cheap operations never come here: a pool round trip costs about a millisecond.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response

from app.settings import Settings
from app.work.pool import LimitExceeded, Limits, PoolClosed, WorkerPool

from .problems import DocumentError, problem_response

T = TypeVar("T")

_SETTINGS = {"cpu": "IRQLAB_MAX_RUN_CPU_SECONDS", "memory": "IRQLAB_MAX_RUN_MEMORY_MB",
             "wall": "IRQLAB_MAX_RUN_SECONDS"}


def pool_for(app: FastAPI) -> WorkerPool:
    """The app's pool, made on first use (an app that runs nothing starts no process). Its
    workers exit when the pool is closed (the app's lifespan shutdown) or dropped (their
    pipe closes)."""
    pool: WorkerPool | None = getattr(app.state, "work_pool", None)
    if pool is None or pool.closed:
        settings: Settings = app.state.settings
        pool = app.state.work_pool = WorkerPool(settings.workers, Limits(
            cpu_seconds=settings.max_run_cpu_seconds,
            memory_bytes=settings.max_run_memory_mb << 20,
            wall_seconds=settings.max_run_seconds))
    return pool


def close_pool(app: FastAPI) -> None:
    """Kill the app's workers at once (shutdown): running calls end with 503."""
    pool: WorkerPool | None = getattr(app.state, "work_pool", None)
    if pool is not None:
        pool.close()


class ClientGone(Exception):
    """The client disconnected while its work ran; the work was cancelled."""


class ServerStopping(Exception):
    """The worker pool was closed under a request (the server is shutting down)."""


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body was read already: the next message the
    server sends the app is http.disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def call(request: Request, fn: Callable[..., T], *args: Any) -> T:
    settings: Settings = request.app.state.settings
    work = asyncio.ensure_future(pool_for(request.app).call(fn, *args))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, gone):
            if not task.done():
                task.cancel()
        for task in (work, gone):
            with contextlib.suppress(BaseException):
                await task
    if work.cancelled():
        raise ClientGone
    try:
        return work.result()
    except LimitExceeded as exc:
        setting = _SETTINGS[exc.resource]
        maximum: float = (settings.max_run_memory_mb if exc.resource == "memory"
                          else exc.maximum)
        if float(maximum).is_integer():
            maximum = int(maximum)
        raise DocumentError(
            f"the request needs more {exc.resource} than its budget of {maximum} allows "
            f"({setting})", "body", error_type="limit_exceeded", limit=setting,
            maximum=maximum) from None
    except PoolClosed:
        raise ServerStopping from None


async def respond(request: Request, fn: Callable[..., tuple[Any, ...]],
                  *args: Any) -> Response:
    """A job that renders its own response (status, media type, body[, headers]), in the
    pool."""
    try:
        status, media_type, body, *headers = await call(request, fn, *args)
    except ClientGone:
        return problem_response("bad-request", "the client disconnected; its work was "
                                "cancelled", instance=request.url.path)
    except ServerStopping:
        return problem_response("service-unavailable", "the server is stopping; its work "
                                "was cancelled", instance=request.url.path,
                                headers={"Retry-After": "1"})
    return Response(body, status_code=status, media_type=media_type,
                    headers=headers[0] if headers else None)


def kill_work_on_stop_signals(app: FastAPI) -> Callable[[], None]:
    """On SIGTERM/SIGINT, kill the app's running work at once (its requests answer 503) and
    then do what the signal did before (uvicorn's graceful shutdown, which would otherwise
    wait for those requests up to IRQLAB_MAX_RUN_SECONDS). Call from the lifespan startup,
    on the main thread, after the server installed its handlers; returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        # Not pool.close() here: a signal handler may interrupt the main thread inside the
        # pool's lock; the loop runs it next, which is prompt enough.
        loop.call_soon_threadsafe(close_pool, app)
        before = previous.get(signum)
        if callable(before):
            before(signum, frame)
        elif before == signal.SIG_DFL:  # no server handler: the signal's default action
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handler)

    def undo() -> None:
        for sig, before in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, before)

    return undo
