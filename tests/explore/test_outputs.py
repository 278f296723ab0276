"""`irqlab explore --junit FILE --svg DIR`: a JUnit file valid against the junit-10 schema
(verified passes, violation fails with the counterexample, bounded is an error) and a timeline
SVG per counterexample whose step bands are the counterexample's steps."""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from app.explore import cli

xmlschema = pytest.importorskip("xmlschema", reason="xmlschema (the test extra) validates "
                                                    "the JUnit files")
XSD = Path(__file__).resolve().parents[1] / "data" / "junit-10.xsd"


def _args(tmp_path: Path, *sources: str, profile: str, max_states: int = 1_000_000,
          svg: bool = True) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    argv = ["explore", *sources, "--profile", profile, "--max-states", str(max_states),
            "--json", "--junit", str(tmp_path / "out" / "explore.xml")]
    if svg:
        argv += ["--svg", str(tmp_path / "svg")]
    return parser.parse_args(argv)


def test_junit_and_svg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(tmp_path, "seed-race-split", profile="linux-6.1,linux-latest")
    assert cli.main(args) == 1
    capsys.readouterr()
    junit = tmp_path / "out" / "explore.xml"
    xmlschema.XMLSchema(str(XSD)).validate(str(junit))
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("2", "1", "0")
    cases = {c.get("name"): c for c in root.iter("testcase")}
    bad = cases["seed-race-split under linux-6.1"]
    failure = bad.find("failure")
    assert failure is not None
    assert "violated after" in (failure.get("message") or "")
    body = failure.text or ""
    assert "vcpu0 take 0x40" in body and "irqlab run replays it" in body
    assert "steps:" in body  # the scenario document
    good = cases["seed-race-split under linux-latest"]
    assert good.find("failure") is None and good.find("error") is None
    svgs = sorted(p.name for p in (tmp_path / "svg").iterdir())
    assert svgs == ["seed-race-split-linux-6.1.svg"]
    svg = (tmp_path / "svg" / svgs[0]).read_text(encoding="utf-8")
    ET.fromstring(svg)  # well-formed
    assert "vcpu0 take 0x40" in svg and "eoi-not-forwarded" in svg


def test_bounded_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(tmp_path, "lowest-priority-3vcpu", profile="linux-latest", max_states=10,
                 svg=False)
    assert cli.main(args) == 3
    capsys.readouterr()
    root = ET.parse(tmp_path / "out" / "explore.xml").getroot()
    error = next(root.iter("testcase")).find("error")
    assert error is not None and error.get("type") == "bounded"
    assert "no verdict" in (error.get("message") or "")
