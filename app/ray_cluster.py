"""Joining a Ray cluster (the optional 'ray' extra), for campaigns and explorations alike."""

from __future__ import annotations

import logging
import os

import ray


def connect(address: str, num_cpus: int | None = None) -> None:
    """Join a cluster: "auto" (the one RAY_ADDRESS or this machine's running head names),
    "local" (start a private one on this machine), or an address ("HOST:6379",
    "ray://HOST:10001"). Idempotent within a process."""
    if ray.is_initialized():
        return
    env = {"env_vars": {"PYTHONHASHSEED": "0"}}
    if address == "local":
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 runtime_env=env, logging_level=logging.WARNING, log_to_driver=False)
    else:
        ray.init(address=address, runtime_env=env, logging_level=logging.WARNING,
                 log_to_driver=False)
