"""The engine: KVM's x86 irqchips as plain Python state and transitions.

The hot modules may also be present compiled by mypyc (see setup.py). This module, which is
never compiled, decides which copy the process imports: the compiled one only while the stamp
written at build time matches the source files, so that an edited module is never shadowed by
a stale extension. IRQLAB_ENGINE=python forces the pure-Python copy (the test suite compares
the two copies' event logs byte for byte).
"""

from __future__ import annotations

import hashlib
import os
import sys
from importlib.machinery import SOURCE_SUFFIXES, FileFinder, SourceFileLoader
from pathlib import Path

_DIR = Path(__path__[0])
_NOT_COMPILED = {"__init__.py", "errors.py", "scenario.py", "invariants.py"}


def _sources_digest() -> str:
    # Same recipe as setup.py's sources_digest.
    h = hashlib.sha256()
    for p in sorted(_DIR.glob("*.py"), key=lambda p: p.name):
        if p.name not in _NOT_COMPILED:
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _choose() -> str:
    if os.environ.get("IRQLAB_ENGINE", "").lower() == "python":
        return "python (IRQLAB_ENGINE=python)"
    try:
        stamp = (_DIR / "_native.stamp").read_text().strip()
    except OSError:
        return "python (not compiled)"
    if stamp != _sources_digest():
        return "python (the compiled build is stale: reinstall to recompile)"
    return "compiled (mypyc)"


ENGINE_BUILD = _choose()
"""Which copy of the engine this process runs, and why; shown by `irqlab serve` and the
benchmarks."""
NATIVE = ENGINE_BUILD.startswith("compiled")

if not NATIVE:
    # Submodules are looked up through this path entry's finder: give it one that sees only
    # .py sources, so extension modules next to them are ignored.
    sys.path_importer_cache[__path__[0]] = FileFinder(
        __path__[0], (SourceFileLoader, SOURCE_SUFFIXES)
    )
