"""Module-level functions the worker-pool tests send to worker processes (they must be
importable by name there)."""

from __future__ import annotations

import os
import time


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
