"""Exploration jobs for the HTTP service: each runs in its own worker process (never on the
event loop, never in the server's threads), under the service's limits on concurrent jobs,
states, seconds and memory; a reader thread per job turns the worker's messages into the
job's status, progress and results. Cancelling terminates the process."""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from app.engine.errors import EngineError

STATUSES = ("running", "done", "failed", "cancelled")
GRACE_SECONDS = 30.0  # past the budget, for the worker to start and shape its answer


def _worker(doc: dict[str, Any], profiles: list[str], max_states: int, max_seconds: float,
            memory_mb: int, out: Any, ray: str | None = None, ray_workers: int = 1) -> None:
    """Runs in the child process: one exploration per profile, progress and results sent
    back on `out`. With `ray`, the search runs on that cluster (this process only drives it,
    and Ray's own processes need more address space than a search's limit)."""
    import resource

    if memory_mb > 0 and ray is None:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from .run import Options, explore

    options = Options(max_states=max_states, max_seconds=max_seconds, ray=ray,
                      workers=ray_workers if ray else 1)
    try:
        for prof in profiles:
            last = [0.0]

            def progress(stats: dict[str, Any], prof: str = prof,
                         last: list[float] = last) -> None:
                now = time.monotonic()
                if now - last[0] >= 0.2:
                    last[0] = now
                    out.put(("progress", {"profile": prof, **stats}))

            out.put(("progress", {"profile": prof, "states": 0}))
            out.put(("result", explore(doc, prof, options, progress)))
        out.put(("done", None))
    except MemoryError:
        out.put(("error", f"the search exceeded IRQLAB_MAX_EXPLORATION_MEMORY_MB "
                          f"({memory_mb} MB)"))
    except EngineError as exc:
        out.put(("error", f"{exc.detail} (at {exc.field})" if exc.field else exc.detail))
    except (RuntimeError, ConnectionError) as exc:  # a Ray search that lost an actor
        out.put(("error", str(exc)))
    except Exception as exc:  # an irqlab bug: report it rather than dying silently
        out.put(("error", f"internal error: {type(exc).__name__}: {exc}"))


@dataclass
class Job:
    id: str
    name: str
    profiles: list[str]
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
            "id": self.id, "exploration": self.name, "profiles": self.profiles,
            "status": self.status, "progress": self.progress, "results": self.results,
            "error": self.error,
            "seconds": round((self.finished or time.time()) - self.created, 3),
        }


class JobManager:
    def __init__(self, max_jobs: int, max_states: int, max_seconds: float, memory_mb: int,
                 keep: int = 64, ray: str | None = None, ray_workers: int = 1) -> None:
        self.max_jobs = max_jobs
        self.ray, self.ray_workers = ray, ray_workers
        self.max_states = max_states
        self.max_seconds = max_seconds
        self.memory_mb = memory_mb
        self.keep = keep
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.ctx = mp.get_context("spawn")  # no fork of a threaded server

    def running(self) -> int:
        return sum(1 for j in self.jobs.values() if j.status == "running")

    def start(self, doc: dict[str, Any], name: str, profiles: list[str], max_states: int,
              max_seconds: float) -> Job:
        """The caller checked the limits (running() < max_jobs) under its own lock."""
        job = Job(uuid.uuid4().hex[:16], name, profiles, time.time())
        out = self.ctx.Queue()
        proc = self.ctx.Process(
            target=_worker, args=(doc, profiles, max_states, max_seconds, self.memory_mb, out,
                                  self.ray, self.ray_workers),
            daemon=True, name=f"irqlab-explore-{job.id}")
        job.process = proc
        with self.lock:
            self.jobs[job.id] = job
            self._trim()
        proc.start()
        deadline = time.monotonic() + max_seconds * len(profiles) + GRACE_SECONDS
        threading.Thread(target=self._read, args=(job, out, deadline), daemon=True,
                         name=f"irqlab-explore-reader-{job.id}").start()
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
