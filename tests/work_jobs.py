"""Module-level functions the worker-pool tests send to worker processes (they must be
importable by name there), and how the tests see a worker die."""

from __future__ import annotations

import os
import time

import anyio


def square(n: int) -> int:
    return n * n


def pid() -> int:
    return os.getpid()


def fail(message: str) -> None:
    raise ValueError(message)


def spin(seconds: float) -> int:
    """Burn CPU for `seconds` of wall-clock time."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def allocate(nbytes: int) -> int:
    return len(bytearray(nbytes))


def alive(p: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{p}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


async def wait_dead(p: int, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while alive(p):
            await anyio.sleep(0.02)
