"""What the job routers (explorations, campaigns) share: the app's manager of a job kind, a job
by id (404 otherwise), the job-id path parameter, and the Server-Sent Events stream of a job."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import Path, Request
from fastapi.responses import StreamingResponse

from app.engine.errors import not_found
from app.work.jobs import Job, JobManager

JobPath = Annotated[str, Path(description="The job's id (from POST's Location).",
                              pattern=r"^[0-9a-f]{16}$")]


def manager_of(request: Request, attr: str, make: Callable[[], JobManager]) -> JobManager:
    """The app's manager of one job kind (`app.state.<attr>`), made on first use."""
    manager: JobManager | None = getattr(request.app.state, attr, None)
    if manager is None:
        manager = make()
        setattr(request.app.state, attr, manager)
    return manager


def job_of(manager: JobManager, job_id: str, what: str) -> Job:
    job = manager.jobs.get(job_id)
    if job is None:
        raise not_found(f"no {what} job {job_id!r}", "id")
    return job


def sse_response(job: Job, request: Request) -> StreamingResponse:
    """`progress` when the job changes, a `result` event per result, `end` (status, error)
    last."""

    async def stream() -> AsyncIterator[bytes]:
        seen_version = -1
        sent_results = 0
        while True:
            if job.version != seen_version:
                seen_version = job.version
                yield sse("progress", job.progress)
                while sent_results < len(job.results):
                    yield sse("result", job.results[sent_results])
                    sent_results += 1
            if job.status != "running":
                yield sse("end", {"status": job.status, "error": job.error})
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.2)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
