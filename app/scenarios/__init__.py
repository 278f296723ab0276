"""The built-in scenario library: YAML documents shipped with the package."""

from __future__ import annotations

import copy
from functools import cached_property
from importlib import resources
from typing import Any

from app.api.safe_load import DocumentLimits, load_yaml


class PackageLibrary:
    """The *.yaml documents shipped in a package, by their `name`, in file-name order, read
    once (the exploration library, app.explorations, is one too)."""

    def __init__(self, package: str) -> None:
        self.package = package

    @cached_property
    def documents(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for entry in sorted(resources.files(self.package).iterdir(), key=lambda p: p.name):
            if entry.name.endswith(".yaml"):
                doc = load_yaml(entry.read_text(encoding="utf-8"), DocumentLimits())
                out[doc["name"]] = doc
        return out

    def names(self) -> list[str]:
        return list(self.documents)

    def get(self, name: str) -> dict[str, Any] | None:
        """A copy of the document (callers may change it)."""
        doc = self.documents.get(name)
        return None if doc is None else copy.deepcopy(doc)


_LIBRARY = PackageLibrary(__package__)
names = _LIBRARY.names
get = _LIBRARY.get
