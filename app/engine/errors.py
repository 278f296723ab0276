"""Engine errors. Each carries a kind the service maps to an HTTP status in one place."""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    NOT_FOUND = "not-found"
    INVALID = "invalid"  # KVM would return -EINVAL (or the guest would #GP)
    EXISTS = "exists"  # KVM would return -EEXIST
    LIMIT = "limit"  # a configured limit was reached
    UNSUPPORTED = "unsupported"  # valid request that this VM's configuration cannot do


class EngineError(Exception):
    """An operation the modelled kernel would refuse. `field` names the offending input.
    `irqlab_rule` marks a refusal that is irqlab's own rule, not the kernel's (the service then
    attributes no KVM errno to it)."""

    def __init__(self, kind: ErrorKind, detail: str, field: str | None = None,
                 irqlab_rule: bool = False) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.field = field
        self.irqlab_rule = irqlab_rule


def invalid(detail: str, field: str | None = None) -> EngineError:
    return EngineError(ErrorKind.INVALID, detail, field)


def not_found(detail: str, field: str | None = None) -> EngineError:
    return EngineError(ErrorKind.NOT_FOUND, detail, field)
