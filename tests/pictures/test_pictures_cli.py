"""`irqlab run / library run --svg DIR --trace DIR --html FILE`, in process and against a real
server (the run is observed over HTTP and drawn locally); README's committed picture is up to
date."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from app import cli
from tests.pictures.signals import read_vcd
from tests.pictures.trace_rules import check_trace
from tests.uvicorn_server import irqlab_server

ROOT = Path(__file__).resolve().parents[2]
SEED = "seed-race-split"


def check_outputs(out: Path, html: Path) -> None:
    svgs = sorted((out / "svg").glob("*.svg"))
    assert [p.name for p in svgs] == [
        "seed-race-split--linux-6.1-before-fceb3a36c29a.svg",
        "seed-race-split--linux-6.2-fceb3a36c29a.svg",
        "seed-race-split--linux-latest-87e4951e250b-clears-the-stale-bit.svg",
    ]
    for p in svgs:
        ET.parse(p)
    assert "never cleared: Remote IRR pin 5" in svgs[0].read_text()
    trace = json.loads((out / "trace" / "seed-race-split.perfetto.json").read_text())
    assert check_trace(trace) == []
    assert len(read_vcd((out / "trace" / "seed-race-split.vcd").read_text())) > 0
    assert "First divergence after <b>step 10</b>" in html.read_text()


def test_library_run_local_writes_pictures(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    html = tmp_path / "report.html"
    code = cli.main(["library", "run", SEED, "--local", "--svg", str(tmp_path / "svg"),
                     "--trace", str(tmp_path / "trace"), "--html", str(html)])
    assert code == 0
    check_outputs(tmp_path, html)
    assert f"irqlab: wrote {html}" in capsys.readouterr().err


def test_run_files_against_a_server_writes_pictures(tmp_path: Path) -> None:
    doc = ROOT / "app" / "scenarios" / f"{SEED}.yaml"
    html = tmp_path / "r.html"
    with irqlab_server() as url:
        code = cli.main(["run", str(doc), str(doc), "--server", url, "--svg",
                         str(tmp_path / "svg"), "--trace", str(tmp_path / "trace"),
                         "--html", str(html)])
    assert code == 0
    # Two sources: each report gets the scenario's name in its file name.
    check_outputs(tmp_path, tmp_path / "r-seed-race-split.html")


def test_unwritable_picture_directory_is_an_error(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = cli.main(["library", "run", SEED, "--local", "--svg", str(blocker / "svg")])
    assert code == 2
    assert "cannot write pictures" in capsys.readouterr().err


def test_readme_picture_is_up_to_date() -> None:
    r = subprocess.run([sys.executable, "scripts/seed_race_timeline.py", "--check"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
