"""Level-synchronous search in worker processes (interim: not implemented yet)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.explore.checker import CheckOptions, CheckResult, Progress
from app.explore.model_api import ModelFactory


def check_parallel(
    factory: ModelFactory[Any],
    opts: CheckOptions,
    progress: Callable[[Progress], None] | None,
    cancel: object,
) -> CheckResult:
    raise NotImplementedError("workers > 1 is not implemented yet")
