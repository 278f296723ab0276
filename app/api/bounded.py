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
from collections.abc import Callable
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


async def respond(request: Request, fn: Callable[..., tuple[int, str, bytes]],
                  *args: Any) -> Response:
    """A job that renders its own response (status, media type, body), in the pool."""
    try:
        status, media_type, body = await call(request, fn, *args)
    except ClientGone:
        return problem_response("bad-request", "the client disconnected; its work was "
                                "cancelled", instance=request.url.path)
    except ServerStopping:
        return problem_response("service-unavailable", "the server is stopping; its work "
                                "was cancelled", instance=request.url.path,
                                headers={"Retry-After": "1"})
    return Response(body, status_code=status, media_type=media_type)
