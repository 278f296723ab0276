"""The compiled engine (mypyc, see setup.py) and the pure-Python one are the same program:
the same scenarios and operations give the same results and event logs, byte for byte."""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import app.engine
from tests.engine.engine_probe import fingerprint

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not app.engine.NATIVE,
                    reason=f"the engine is not compiled here: {app.engine.ENGINE_BUILD}")
def test_compiled_and_pure_engines_log_the_same_bytes() -> None:
    native = fingerprint()
    env = {**os.environ, "IRQLAB_ENGINE": "python", "PYTHONPATH": str(ROOT)}
    probe = subprocess.run(
        [sys.executable, "-c",
         "import app.engine, sys; assert not app.engine.NATIVE, app.engine.ENGINE_BUILD; "
         "from tests.engine.engine_probe import fingerprint; sys.stdout.write(fingerprint())"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=True,
    )
    pure = probe.stdout
    assert len(native) > 100_000  # the probe really ran the library and the script
    if native != pure:
        a, b = native.replace("}, ", "},\n").splitlines(), pure.replace("}, ", "},\n").splitlines()
        diff = "\n".join(list(difflib.unified_diff(a, b, "compiled", "pure", lineterm=""))[:40])
        pytest.fail(f"compiled and pure engines differ:\n{diff}")


def test_pure_python_is_forced_by_environment() -> None:
    out = subprocess.run(
        [sys.executable, "-c",
         "import app.engine, app.engine.lapic as l; print(app.engine.ENGINE_BUILD); "
         "print(l.__file__)"],
        cwd=ROOT, env={**os.environ, "IRQLAB_ENGINE": "python", "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.splitlines()
    assert out[0] == "python (IRQLAB_ENGINE=python)"
    assert out[1].endswith("lapic.py")


@pytest.mark.skipif(not app.engine.NATIVE,
                    reason=f"the engine is not compiled here: {app.engine.ENGINE_BUILD}")
def test_an_edited_source_is_not_shadowed_by_its_stale_extension(tmp_path: Path) -> None:
    import shutil

    pkg = tmp_path / "app"
    shutil.copytree(ROOT / "app" / "engine", pkg / "engine",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "__init__.py").write_text("")
    probe = ("import app.engine, app.engine.lapic as l; print(app.engine.ENGINE_BUILD); "
             "print(l.__file__)")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("IRQLAB_ENGINE", None)
    fresh = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60, check=True)
    assert fresh.stdout.splitlines()[0] == "compiled (mypyc)"
    lapic = pkg / "engine" / "lapic.py"
    lapic.write_text(lapic.read_text() + "\n# edited\n")
    stale = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60, check=True)
    build, path = stale.stdout.splitlines()
    assert build.startswith("python (the compiled build is stale")
    assert path.endswith("lapic.py")
