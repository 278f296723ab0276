"""README's seed-race walkthrough (the shell block under "The seed race over HTTP") runs as
written against a real `irqlab serve`, twice in a row (it deletes its VM first), and its
`irqlab events` line prints what README shows."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.uvicorn_server import irqlab_server

ROOT = Path(__file__).resolve().parent.parent


def readme_blocks() -> tuple[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## The seed race over HTTP"):]
    script = re.search(r"```sh\n(.*?)```", section, re.S)
    shown = re.search(r"```\n(47 .*?)```", section, re.S)
    assert script and shown
    return script.group(1), shown.group(1)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_walkthrough_reruns_cleanly() -> None:
    script, shown = readme_blocks()
    linux61 = shown.split("\n\n")[0].splitlines()
    with irqlab_server() as base:
        script = script.replace("http://127.0.0.1:8000", base)
        assert base in script
        script = script.replace("irqlab events race", f"irqlab events --server {base} race")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        for _ in range(2):
            out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env,
                                 capture_output=True, text=True, timeout=120, check=True).stdout
            # curl's answers have no trailing newline: the events start mid-line.
            assert out.endswith("\n".join(linux61) + "\n")
            assert '"remote_irr":{"pins":[5]' in out
