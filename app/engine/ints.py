"""The one integer grammar of irqlab, shared by REST bodies, scenario documents (JSON and
YAML) and snapshots.

An integer is a JSON integer (never a boolean, although Python says True == 1) or a string
"0x…" of hex digits. Object keys, which JSON can only give as strings, may also be decimal
digits ("5"). Nothing else is an integer: not "64", "0b1000000", "6_4", "1e3" or " 7", which
Python's int(text, 0) would take.
"""

from __future__ import annotations

import re
from typing import Any

HEX_PATTERN = r"^0[xX][0-9a-fA-F]+$"
KEY_PATTERN = r"^(0[xX][0-9a-fA-F]+|[0-9]+)$"
_HEX = re.compile(HEX_PATTERN)
_KEY = re.compile(KEY_PATTERN)
# Longest digit string read: 2**64 needs 16 hex or 20 decimal digits; a longer one can only
# be out of every range (and int() on a huge digit string is quadratic).
MAX_DIGITS = 40


def int_from_text(text: str, key: bool = False) -> int | None:
    """The integer a string spells under the grammar ("0x…"; decimal too for keys), else
    None. Over-long digit strings are read as a value above every range."""
    pattern = _KEY if key else _HEX
    if len(text) > MAX_DIGITS + 2:
        return 1 << 256 if pattern.fullmatch(text) else None
    if not pattern.fullmatch(text):
        return None
    return int(text, 0) if not text.isdigit() else int(text, 10)


def grammar_int(value: Any, key: bool = False) -> int | None:
    """A value as an integer under the grammar, or None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int_from_text(value, key)
    return None
