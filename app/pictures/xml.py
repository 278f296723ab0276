"""Escaping for text put into SVG/HTML: the five XML specials, and characters XML 1.0 cannot
hold at all (control characters, lone surrogates) replaced, since titles and labels come from
user documents."""

from __future__ import annotations

import re

_SPECIAL = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}
_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def esc(text: object) -> str:
    s = _INVALID.sub("\ufffd", str(text))
    return "".join(_SPECIAL.get(c, c) for c in s) if any(c in _SPECIAL for c in s) else s


def clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: max(1, n - 1)] + "…"
