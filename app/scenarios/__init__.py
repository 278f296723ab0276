"""The built-in scenario library: YAML documents shipped with the package."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from app.api.safe_load import DocumentLimits, load_yaml


@cache
def _load_all() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for entry in sorted(resources.files(__package__).iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            doc = load_yaml(entry.read_text(encoding="utf-8"), DocumentLimits())
            out[doc["name"]] = doc
    return out


def names() -> list[str]:
    return list(_load_all())


def get(name: str) -> dict[str, Any] | None:
    doc = _load_all().get(name)
    return None if doc is None else _copy(doc)


def _copy(doc: dict[str, Any]) -> dict[str, Any]:
    import copy

    return copy.deepcopy(doc)
