"""A small pool of worker processes that runs expensive, CPU-bound calls under a budget.

Why processes: a scenario run is pure Python; in a thread it holds the GIL and the event loop
(and /healthz) waits behind it, and a thread can be neither killed nor capped in memory. Each
worker here is a process with RLIMIT_AS (memory) set once at start and RLIMIT_CPU (soft) set
per call, whose SIGXCPU ends the call with CpuExceeded; the parent adds a wall clock: past it,
or when the caller is cancelled (a client that disconnected, a server that is stopping), the
worker is killed with SIGKILL and replaced lazily. A worker whose call ran out of memory is
replaced too (its heap may be fragmented).

Interface (function level, reused by scenario runs and later by the explorer's jobs):

    pool = WorkerPool(size=2, limits=Limits(cpu_seconds=10, memory_bytes=1 << 30,
                                            wall_seconds=30))
    result = await pool.call(fn, *args)   # fn and args picklable, fn a module-level function
    await pool.close()

`call` returns fn's return value or raises LimitExceeded (resource "cpu", "memory" or
"wall", with the limit) or WorkerFailed (the worker died, or fn raised: fn should turn its own
expected failures into return values, since exceptions cross the process boundary as text).
Workers run at niceness +10, below the server. The engine stays importable without any of
this; workers import fn's module on first use
(forkserver: started from a clean process, never a fork of the threaded server).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")
WORKER_NICENESS = 10


@dataclass(frozen=True, slots=True)
class Limits:
    """Per call: CPU seconds (RLIMIT_CPU), address space in bytes (RLIMIT_AS, per worker;
    0: unlimited) and wall-clock seconds (the parent kills the worker past it)."""

    cpu_seconds: float
    memory_bytes: int
    wall_seconds: float


class LimitExceeded(Exception):
    """A call needed more of `resource` ("cpu", "memory", "wall") than `maximum`."""

    def __init__(self, resource: str, maximum: float) -> None:
        super().__init__(f"the call needed more than {maximum} ({resource})")
        self.resource = resource
        self.maximum = maximum


class WorkerFailed(Exception):
    """The worker died or the function raised (its text is the message)."""


class PoolClosed(Exception):
    """The pool was closed (the server is stopping) before or while the call ran."""


# ---------------------------------------------------------------- the worker process


class _CpuExceeded(BaseException):
    """Raised in the worker by SIGXCPU; a BaseException so that fn's `except Exception`
    cannot swallow it."""


def _on_xcpu(signum: int, frame: FrameType | None) -> None:
    raise _CpuExceeded


def _worker_main(conn: multiprocessing.connection.Connection, memory_bytes: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server's Ctrl-C is the parent's
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGXCPU, _on_xcpu)
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    # Below the server in the scheduler's eyes: on a busy machine the event loop (probes,
    # cheap operations) gets the CPU first and the heavy work takes what is left.
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    while True:
        try:
            fn, args, cpu_seconds = conn.recv()
        except (EOFError, OSError):
            return  # the parent closed its end (or died): nothing more to do
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = int(usage.ru_utime + usage.ru_stime + cpu_seconds) + 1
        if cpu_hard != resource.RLIM_INFINITY:
            soft = min(soft, cpu_hard)
        reply: tuple[str, Any]
        recycle = False
        try:
            resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_hard))
            reply = ("ok", fn(*args))
        except _CpuExceeded:
            reply = ("cpu", None)
        except MemoryError:
            reply, recycle = ("memory", None), True
        except Exception as exc:
            reply = ("error", f"{type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(_CpuExceeded):
                resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, cpu_hard))
        try:
            conn.send(reply)
        except MemoryError:
            conn.send(("memory", None))
            recycle = True
        if recycle:
            return


# ---------------------------------------------------------------- the parent side


class _Worker:
    def __init__(self, ctx: Any, memory_bytes: int) -> None:
        parent, child = ctx.Pipe()
        self.conn: multiprocessing.connection.Connection = parent
        self.process: BaseProcess = ctx.Process(
            target=_worker_main, args=(child, memory_bytes), daemon=True,
            name="irqlab-worker")
        self.process.start()
        child.close()

    def exchange(self, message: tuple[Any, ...]) -> tuple[str, Any]:
        """Send a call and wait for its reply (in a pool thread, never on the event loop)."""
        self.conn.send(message)
        reply: tuple[str, Any] = self.conn.recv()
        return reply

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        with contextlib.suppress(OSError):
            self.conn.close()

    @property
    def alive(self) -> bool:
        return self.process.is_alive()


_CTX_LOCK = threading.Lock()


def _context() -> Any:
    with _CTX_LOCK:
        ctx = multiprocessing.get_context("forkserver")
        # Modules every worker needs, imported once in the fork server, so a new worker
        # (after a kill) is ready in milliseconds.
        ctx.set_forkserver_preload(["app.work.pool", "app.api.scenarios"])
        return ctx


class WorkerPool:
    """At most `size` workers; calls beyond that wait for one to be free. Not tied to an event
    loop (threading primitives only), so one pool serves every loop of the process."""

    def __init__(self, size: int, limits: Limits) -> None:
        self.size = max(1, size)
        self.limits = limits
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._slots = threading.BoundedSemaphore(self.size)
        self._threads = ThreadPoolExecutor(max_workers=self.size,
                                           thread_name_prefix="irqlab-work")
        self.closed = False

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a worker, under the limits (module docstring)."""
        worker = await self._acquire()
        loop = asyncio.get_running_loop()
        try:
            exchange = loop.run_in_executor(
                self._threads, worker.exchange, (fn, args, self.limits.cpu_seconds))
        except RuntimeError:  # closed while the worker was starting
            self._release(worker, False)
            raise PoolClosed from None
        # If the wait below is abandoned, the worker is killed and this future fails: its
        # exception is expected, not "never retrieved".
        exchange.add_done_callback(lambda f: f.cancelled() or f.exception())
        keep = False
        try:
            kind, value = await asyncio.wait_for(asyncio.shield(exchange),
                                                 self.limits.wall_seconds)
        except TimeoutError:
            raise LimitExceeded("wall", self.limits.wall_seconds) from None
        except Exception as exc:
            if self.closed:  # killed under the call (its pipe closed mid-read, whatever
                raise PoolClosed from None  # that raised)
            raise WorkerFailed(f"the worker died ({type(exc).__name__}; a hard memory or "
                               "CPU limit?)") from None
        else:
            keep = kind != "memory"
            if kind == "ok":
                result: T = value
                return result
            if kind == "cpu":
                raise LimitExceeded("cpu", self.limits.cpu_seconds)
            if kind == "memory":
                raise LimitExceeded("memory", self.limits.memory_bytes)
            raise WorkerFailed(str(value))
        finally:
            # Cancelled (client gone, server stopping), timed out or failed: the worker may
            # still be computing, so it is killed; the thread waiting on it then ends.
            self._release(worker, keep)

    async def _acquire(self) -> _Worker:
        # Polling a threading semaphore keeps the pool free of any one loop; a cancelled
        # waiter simply stops polling, holding nothing.
        while not self._slots.acquire(blocking=False):
            if self.closed:
                raise PoolClosed
            await asyncio.sleep(0.005)
        try:
            if self.closed:
                raise PoolClosed
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is None or not worker.alive:
                if worker is not None:
                    worker.kill()
                worker = await asyncio.get_running_loop().run_in_executor(
                    None, _Worker, _context(), self.limits.memory_bytes)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._busy.add(worker)
        return worker

    def _release(self, worker: _Worker, keep: bool) -> None:
        with self._lock:
            self._busy.discard(worker)
            keep = keep and not self.closed and worker.alive
            if keep:
                self._idle.append(worker)
        if not keep:
            worker.kill()
        self._slots.release()
        multiprocessing.active_children()  # reaps killed workers

    def close(self) -> None:
        """Kill every worker, idle or busy (their calls raise PoolClosed); the server is
        stopping. Safe to call more than once."""
        self.closed = True
        with self._lock:
            workers = [*self._idle, *self._busy]
            self._idle.clear()
        for worker in workers:
            worker.kill()
        self._threads.shutdown(wait=False, cancel_futures=True)

    def pids(self) -> list[int]:
        """The worker processes' pids (for tests and diagnostics)."""
        with self._lock:
            return [w.process.pid for w in [*self._idle, *self._busy] if w.process.pid]
