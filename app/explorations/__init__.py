"""The built-in exploration library: YAML documents shipped with the package (programs, not
scripts: the explorer finds the bad orders)."""

from __future__ import annotations

import copy
from functools import cache
from importlib import resources
from typing import Any

import yaml


@cache
def _load_all() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for entry in sorted(resources.files(__package__).iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            doc = yaml.safe_load(entry.read_text(encoding="utf-8"))
            out[doc["name"]] = doc
    return out


def names() -> list[str]:
    return list(_load_all())


def get(name: str) -> dict[str, Any] | None:
    doc = _load_all().get(name)
    return None if doc is None else copy.deepcopy(doc)
