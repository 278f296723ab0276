"""The timeline SVG as a browser draws it: headless Chromium (Debian's `chromium`) renders
the seed race's timeline to a PNG. Skips where Chromium is missing."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from app import scenarios
from app.engine.scenario import run_scenario
from app.pictures import from_variant, timeline_svg

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"))
                 if p), None)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: chromium)")
def test_chromium_renders_the_seed_race_timeline(tmp_path: Path) -> None:
    doc = scenarios.get("seed-race-split")
    result = run_scenario(doc, observe=True)
    svg = tmp_path / "seed.svg"
    svg.write_text(timeline_svg(from_variant(result["variants"][0], "seed-race-split", doc)))
    png = tmp_path / "seed.png"
    assert CHROMIUM is not None
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", "--window-size=1224,1500", f"--screenshot={png}",
                    svg.as_uri()], check=True, capture_output=True, timeout=120)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1224, 1500)
    # A blank page compresses to a few kB; lanes, text and spans do not.
    assert len(data) > 50_000
