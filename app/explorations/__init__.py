"""The built-in exploration library: YAML documents shipped with the package (programs, not
scripts: the explorer finds the bad orders)."""

from __future__ import annotations

from app.scenarios import PackageLibrary

_LIBRARY = PackageLibrary(__package__)
names = _LIBRARY.names
get = _LIBRARY.get
