"""The worker pool (app/work/pool.py): results, CPU, memory and wall-clock budgets, killing
on cancel and close, replacement of killed workers."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from app.work.pool import LimitExceeded, Limits, PoolClosed, WorkerFailed, WorkerPool
from tests.work_jobs import allocate, fail, pid, spin, square, wait_dead

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_results_and_reuse() -> None:
    pool = WorkerPool(1, Limits(cpu_seconds=5, memory_bytes=0, wall_seconds=30))
    try:
        assert await pool.call(square, 7) == 49
        first = await pool.call(pid)
        assert first != os.getpid()
        assert await pool.call(pid) == first  # the worker is kept
        with pytest.raises(WorkerFailed, match="ValueError: nope"):
            await pool.call(fail, "nope")
        assert await pool.call(pid) == first
    finally:
        pool.close()


async def test_cpu_budget() -> None:
    pool = WorkerPool(1, Limits(cpu_seconds=1, memory_bytes=0, wall_seconds=60))
    try:
        with pytest.raises(LimitExceeded) as info:
            await pool.call(spin, 100.0)
        assert info.value.resource == "cpu"
        assert await pool.call(square, 3) == 9  # the same worker goes on
    finally:
        pool.close()


async def test_memory_budget_replaces_the_worker() -> None:
    pool = WorkerPool(1, Limits(cpu_seconds=30, memory_bytes=512 << 20, wall_seconds=60))
    try:
        before = await pool.call(pid)
        with pytest.raises(LimitExceeded) as info:
            await pool.call(allocate, 2 << 30)
        assert info.value.resource == "memory"
        assert await pool.call(pid) != before
    finally:
        pool.close()


async def test_wall_clock_kills_and_replaces() -> None:
    pool = WorkerPool(1, Limits(cpu_seconds=60, memory_bytes=0, wall_seconds=0.5))
    try:
        victim = await pool.call(pid)
        start = time.monotonic()
        with pytest.raises(LimitExceeded) as info:
            await pool.call(spin, 30.0)
        assert info.value.resource == "wall" and time.monotonic() - start < 5
        await wait_dead(victim)
        assert await pool.call(square, 4) == 16
    finally:
        pool.close()


async def test_cancelling_a_call_kills_its_worker() -> None:
    pool = WorkerPool(1, Limits(cpu_seconds=60, memory_bytes=0, wall_seconds=60))
    try:
        victim = await pool.call(pid)
        task = asyncio.ensure_future(pool.call(spin, 30.0))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_dead(victim)
    finally:
        pool.close()


async def test_close_ends_running_calls_at_once() -> None:
    pool = WorkerPool(2, Limits(cpu_seconds=60, memory_bytes=0, wall_seconds=60))
    task = asyncio.ensure_future(pool.call(spin, 30.0))
    while not pool.pids():
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    start = time.monotonic()
    pool.close()
    with pytest.raises(PoolClosed):
        await task
    assert time.monotonic() - start < 2
    with pytest.raises(PoolClosed):
        await pool.call(square, 1)
