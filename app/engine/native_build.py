"""What of the engine mypyc compiles, and the stamp that ties a compiled build to its sources.

Shared by setup.py (which loads this file by path, before the package is importable) and
app/engine/__init__.py (which compares the stamp with the sources at import). Never compiled.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# Not compiled: __init__ (it chooses between compiled and pure), this module, errors
# (EngineError is subclassed outside the engine, which compiled classes forbid), and the
# modules off the hot path whose inputs are untyped documents (scenario, invariants).
NOT_COMPILED = frozenset({"__init__.py", "native_build.py", "errors.py", "scenario.py",
                          "invariants.py"})
STAMP = "_native.stamp"


def compiled_sources(engine_dir: Path) -> list[Path]:
    return sorted(p for p in engine_dir.glob("*.py") if p.name not in NOT_COMPILED)


def sources_digest(engine_dir: Path) -> str:
    """sha256 over each compiled module's name and bytes, in name order."""
    h = hashlib.sha256()
    for p in compiled_sources(engine_dir):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()
