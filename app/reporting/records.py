"""One scenario run as the CI outputs see it: which document, which matrix cell, the result or
the error, and how long it took. `irqlab run`, `irqlab library run` and `irqlab suite` make
these; junit and the report directory read them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunRecord:
    """`label` is the file path or library name given on the command line; `cell` the
    overrides of this run ({"profile": ..., "irqchip": ...}, empty when the document ran as
    written); exactly one of `result` (the POST /v1/scenarios/run body) and `error` is set."""

    label: str
    cell: dict[str, str] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0
    doc: Any = None  # the document as run (for the pictures' step texts), when known

    @property
    def document(self) -> str:
        """The scenario's name (from the result), else the label."""
        name = (self.result or {}).get("name")
        return str(name) if name else self.label

    @property
    def passed(self) -> bool:
        return self.error is None and bool((self.result or {}).get("passed"))


def cell_text(cell: dict[str, str]) -> str:
    """'profile=linux-6.1, irqchip=split', or 'as written' for no overrides."""
    return ", ".join(f"{k}={v}" for k, v in cell.items()) or "as written"
