"""Start `irqlab serve` as a real process on 127.0.0.1 at a free port, for the tests that need
a real server; bounded wait for /healthz, always terminated."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def irqlab_server(log_level: str = "warning", timeout: float = 30.0,
                  env: dict[str, str] | None = None) -> Iterator[str]:
    """Yield the base URL of a fresh `irqlab serve` (through the CLI and its IRQLAB_* env;
    `env` adds variables)."""
    with irqlab_process(log_level, timeout, env) as (base, _):
        yield base


@contextmanager
def irqlab_process(log_level: str = "warning", timeout: float = 30.0,
                   env: dict[str, str] | None = None, port: int | None = None,
                   ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """irqlab_server, also yielding the process (to signal it); stdout and stderr go to
    the process's `stdout` pipe."""
    port = port or free_port()
    env = {**os.environ, "IRQLAB_HOST": "127.0.0.1", "IRQLAB_PORT": str(port),
           "IRQLAB_LOG_LEVEL": log_level, **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"irqlab serve exited with {proc.returncode}:\n{out}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"irqlab serve did not answer /healthz within {timeout:.0f} s")
            time.sleep(0.05)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
