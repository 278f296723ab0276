"""Test helper: a VCD read back with pyvcd's tokenizer into each signal's value changes."""

from __future__ import annotations

import io
from typing import Any

from vcd.reader import TokenKind, tokenize


def read_vcd(text: str) -> dict[str, list[tuple[int, Any]]]:
    """{"scope.path.name": [(time, value), ...]} with the $dumpvars values at the first time."""
    scopes: list[str] = []
    names: dict[str, str] = {}
    out: dict[str, list[tuple[int, Any]]] = {}
    time = 0
    for tok in tokenize(io.BytesIO(text.encode())):
        if tok.kind is TokenKind.SCOPE:
            scopes.append(tok.scope.ident)
        elif tok.kind is TokenKind.UPSCOPE:
            scopes.pop()
        elif tok.kind is TokenKind.VAR:
            full = ".".join([*scopes, tok.var.reference])
            names[tok.var.id_code] = full
            out[full] = []
        elif tok.kind is TokenKind.CHANGE_TIME:
            time = tok.time_change
        elif tok.kind is TokenKind.CHANGE_SCALAR:
            out[names[tok.scalar_change.id_code]].append((time, int(tok.scalar_change.value)))
        elif tok.kind is TokenKind.CHANGE_VECTOR:
            out[names[tok.vector_change.id_code]].append((time, tok.vector_change.value))
    return out


def value_at(changes: list[tuple[int, Any]], t: int) -> Any:
    """The value after every change at time <= t."""
    value: Any = None
    for time, v in changes:
        if time > t:
            break
        value = v
    return value
