"""Long jobs of the HTTP service (explorations, campaigns): each runs in its own worker process
(never on the event loop, never in the server's threads); a reader thread per job turns the
worker's messages into the job's status, progress and results. Cancelling kills the process.

A job kind is a module-level worker function `target(out, *args)` that puts on `out`:
`("progress", dict)` as often as it likes, `("result", dict)` per result, then `("done", None)`
or `("error", message)`. The manager of each kind (one per app and kind) caps how many of its
jobs run at once and stops a job that outlives its time budget."""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("running", "done", "failed", "cancelled")
GRACE_SECONDS = 30.0  # past the budget, for the worker to start and shape its answer
Worker = Callable[..., None]  # target(out, *args)


class JobsFull(Exception):
    """As many jobs of this kind as allowed are running already."""


@dataclass
class Job:
    id: str
    info: dict[str, Any]  # the kind's own fields, shown after `id` (what the job runs)
    created: float
    status: str = "running"
    progress: dict[str, Any] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    finished: float | None = None
    version: int = 0  # bumped on every change (the events stream waits for it)
    process: Any = None

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id, **self.info,
            "status": self.status, "progress": self.progress, "results": self.results,
            "error": self.error,
            "seconds": round((self.finished or time.time()) - self.created, 3),
        }


class JobManager:
    def __init__(self, kind: str, max_jobs: int, keep: int = 64) -> None:
        self.kind = kind
        self.max_jobs = max_jobs
        self.keep = keep  # finished jobs kept for GET (the oldest go first)
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.ctx = mp.get_context("spawn")  # no fork of a threaded server

    def running(self) -> int:
        return sum(1 for j in self.jobs.values() if j.status == "running")

    def start(self, target: Worker, args: tuple[Any, ...], info: dict[str, Any],
              budget_seconds: float, progress: dict[str, Any] | None = None) -> Job:
        """Start `target(out, *args)` in a new process, or raise JobsFull. The job is stopped
        (failed) if it runs GRACE_SECONDS past `budget_seconds`."""
        job = Job(uuid.uuid4().hex[:16], info, time.time(), progress=dict(progress or {}))
        out = self.ctx.Queue()
        proc = self.ctx.Process(target=target, args=(out, *args), daemon=True,
                                name=f"irqlab-{self.kind}-{job.id}")
        job.process = proc
        with self.lock:  # counted and registered together: two POSTs cannot both pass
            if self.running() >= self.max_jobs:
                out.close()
                raise JobsFull(self.max_jobs)
            self.jobs[job.id] = job
            self._trim()
        proc.start()
        deadline = time.monotonic() + budget_seconds + GRACE_SECONDS
        threading.Thread(target=self._read, args=(job, out, deadline), daemon=True,
                         name=f"irqlab-{self.kind}-reader-{job.id}").start()
        return job

    def _read(self, job: Job, out: Any, deadline: float) -> None:
        while True:
            try:
                kind, payload = out.get(timeout=0.25)
            except queue_mod.Empty:
                if job.status != "running":
                    return
                if not job.process.is_alive() or time.monotonic() > deadline:
                    self._finish(job, "failed", "the worker process ended without an answer"
                                 if not job.process.is_alive() else
                                 "the job outlived its time budget and was stopped")
                    job.process.kill()
                    return
                continue
            with self.lock:
                if job.status != "running":
                    return
                if kind == "progress":
                    job.progress = payload
                elif kind == "result":
                    job.results.append(payload)
                job.version += 1
            if kind == "done":
                self._finish(job, "done", None)
                job.process.join(timeout=5)
                return
            if kind == "error":
                self._finish(job, "failed", payload)
                job.process.join(timeout=5)
                return

    def _finish(self, job: Job, status: str, error: str | None) -> None:
        with self.lock:
            if job.status != "running":
                return
            job.status = status
            job.error = error
            job.finished = time.time()
            job.version += 1

    def cancel(self, job: Job) -> None:
        if job.status == "running":
            self._finish(job, "cancelled", None)
            job.process.kill()
            job.process.join(timeout=5)

    def _trim(self) -> None:
        done = [j for j in self.jobs.values() if j.status != "running"]
        for j in sorted(done, key=lambda j: j.created)[:max(0, len(done) - self.keep)]:
            del self.jobs[j.id]

    def close(self) -> None:
        for job in list(self.jobs.values()):
            self.cancel(job)
