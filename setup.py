"""Build hook: compile the engine's hot modules with mypyc.

Everything else about the package is declared in pyproject.toml. The engine stays plain,
type-annotated Python; mypyc turns the same source into a C extension, which runs the level
round trip about 1.7 times as fast (bench/engine_roundtrip.py; figures in README.md).

The compiled build is best-effort: set IRQLAB_PURE_PYTHON=1 to skip it, and a machine without a
C compiler or Python headers gets a warning and the pure-Python engine. app/engine/__init__.py
uses the compiled modules only while `_native.stamp` (written here) matches the sources, so an
edited source file is never shadowed by a stale extension.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
ENGINE = Path("app", "engine")


def _native_build() -> ModuleType:
    # By path: the package is not importable while it is being built.
    spec = importlib.util.spec_from_file_location("irqlab_native_build",
                                                  ROOT / ENGINE / "native_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NB = _native_build()
COMPILED = [str(p) for p in NB.compiled_sources(ROOT / ENGINE)]


class BuildExtWithStamp(build_ext):
    """build_ext that never fails the install and records what it compiled."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, no Python.h, ...: fall back to pure Python
            print(f"irqlab: compiling the engine failed ({exc}); using pure Python",
                  file=sys.stderr)
            return
        out = Path(self.build_lib) if not self.inplace else ROOT
        stamp = out / ENGINE / NB.STAMP
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(NB.sources_digest(ROOT / ENGINE) + "\n")

    def get_outputs(self) -> list[str]:
        return [*super().get_outputs(), str(Path(self.build_lib) / ENGINE / NB.STAMP)]


def ext_modules() -> list[Any]:
    if os.environ.get("IRQLAB_PURE_PYTHON") == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        print(f"irqlab: mypyc unavailable ({exc}); using pure Python", file=sys.stderr)
        return []
    cwd = os.getcwd()
    os.chdir(ROOT)  # mypyc names modules after paths relative to the working directory
    try:
        exts: list[Any] = mypycify(
            [str(Path(p).relative_to(ROOT)) for p in COMPILED],
            group_name="app.engine._native",
            opt_level="3",
        )
    finally:
        os.chdir(cwd)
    return exts


setup(ext_modules=ext_modules(), cmdclass={"build_ext": BuildExtWithStamp})
