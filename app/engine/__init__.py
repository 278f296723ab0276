"""The engine: KVM's x86 irqchips as plain Python state and transitions.

The hot modules may also be present compiled by mypyc (see setup.py). This module, which is
never compiled, decides which copy the process imports: the compiled one only while the stamp
written at build time matches the source files, so that an edited module is never shadowed by
a stale extension. IRQLAB_ENGINE=python forces the pure-Python copy (the test suite compares
the two copies' event logs byte for byte).
"""

from __future__ import annotations

import os
import sys
from importlib.machinery import SOURCE_SUFFIXES, FileFinder, SourceFileLoader
from pathlib import Path

from .native_build import STAMP, sources_digest

_DIR = Path(__path__[0])


def _choose() -> str:
    if os.environ.get("IRQLAB_ENGINE", "").lower() == "python":
        return "python (IRQLAB_ENGINE=python)"
    try:
        stamp = (_DIR / STAMP).read_text().strip()
    except OSError:
        return "python (not compiled)"
    if stamp != sources_digest(_DIR):
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
