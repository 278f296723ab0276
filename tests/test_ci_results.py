"""CI results: --junit (validated against the junit-10 schema in tests/data), --report DIR,
`irqlab suite` across a profile × irqchip matrix (local worker processes and a real server),
exit status 0 / 1 / 2, and the version that `irqlab --version` and GET /readyz report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from app import __version__, cli, scenarios
from app.reporting.junit import Outcome, TestCase, TestSuite, to_xml, write_junit
from tests.uvicorn_server import irqlab_server

xmlschema = pytest.importorskip("xmlschema", reason="xmlschema (the test extra) validates "
                                                    "the JUnit files")

ROOT = Path(__file__).resolve().parents[1]
XSD = ROOT / "tests" / "data" / "junit-10.xsd"
LIBRARY = Path(scenarios.__file__).parent
SEED = "seed-race-split"
MALFORMED = "name: bad\nsteps:\n  - {op: enter}\n  - {op: nope}\n"


@pytest.fixture(scope="module")
def schema() -> object:
    return xmlschema.XMLSchema(str(XSD))


def validate(schema: object, path: Path) -> ET.Element:
    schema.validate(str(path))  # type: ignore[attr-defined]
    return ET.parse(path).getroot()


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    """A suite directory: two library documents (one in a subdirectory) and a JSON copy."""
    d = tmp_path / "suite"
    (d / "more").mkdir(parents=True)
    shutil.copy(LIBRARY / f"{SEED}.yaml", d / f"{SEED}.yaml")
    shutil.copy(LIBRARY / "kut-edge-intr.yaml", d / "more" / "kut-edge-intr.yaml")
    (d / "notes.txt").write_text("not a document\n")
    return d


def cases(root: ET.Element) -> dict[str, ET.Element]:
    return {f"{s.get('name')}::{c.get('name')}": c
            for s in root.iter("testsuite") for c in s.iter("testcase")}


# ---------------------------------------------------------------- the generic writer


def test_generic_writer_is_valid_and_counts(schema: object, tmp_path: Path) -> None:
    suites = [TestSuite("explore: seed", [
        TestCase("ok", "explore"),
        TestCase("bad", "explore", 0.25, failure=Outcome("2 states violate", "trace\x00 \x1b")),
        TestCase("broken", "explore", error=Outcome("budget exhausted")),
        TestCase("later", "explore", skipped="not modelled"),
    ], properties={"profile": "linux-6.1"})]
    path = tmp_path / "out" / "j.xml"
    write_junit(path, suites)
    root = validate(schema, path)
    s = root.find("testsuite")
    assert s is not None
    assert (s.get("tests"), s.get("failures"), s.get("errors"), s.get("skipped")) == \
        ("4", "1", "1", "1")
    assert root.get("tests") == "4" and root.get("failures") == "1"
    failure = root.find(".//testcase[@name='bad']/failure")
    assert failure is not None and failure.get("message") == "2 states violate"
    # control characters XML cannot carry are replaced, not written
    assert failure.text == "trace\ufffd \ufffd"
    assert list(tmp_path.joinpath("out").iterdir()) == [path]  # no temporary file left
    assert to_xml([]).startswith(b"<?xml")


# ---------------------------------------------------------------- run / library run


def test_library_run_junit_and_report(schema: object, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    junit, report = tmp_path / "r.xml", tmp_path / "report"
    # linux-6.1 everywhere: the seed's 6.2 and latest variants must fail, 6.1 passes
    status = cli.main(["library", "run", SEED, "--local", "--profile", "linux-6.1",
                       "--junit", str(junit), "--report", str(report)])
    assert status == 1
    root = validate(schema, junit)
    [suite] = root.findall("testsuite")
    assert suite.get("name") == SEED
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "2", "0")
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["profile"] == "linux-6.1" and props["irqchip"] == "split"
    assert props["source"] == SEED and "fceb3a36c29a" in props["commits"]
    by_name = {c.get("name"): c for c in suite.iter("testcase")}
    passed = by_name["linux-6.1 (before fceb3a36c29a) [split, linux-6.1]"]
    assert passed.find("failure") is None
    out = passed.findtext("system-out") or ""
    assert "profile: linux-6.1" in out and "eoi-will-be-lost" in out
    failed = by_name["linux-6.2 (fceb3a36c29a) [split, linux-6.1]"]
    failure = failed.find("failure")
    assert failure is not None
    message = failure.get("message") or ""
    assert "step 12 (rescanned)" in message and "findings: eoi-not-forwarded" in message
    body = failure.text or ""
    assert "vcpus.0.handled_vectors: expected [0x40], actual []" in body
    assert "step 13: remote-irr-stuck: pin 5 has Remote IRR set" in body
    assert failed.get("classname") == SEED

    index = json.loads((report / "index.json").read_text())
    assert index["irqlab"] == __version__ and index["passed"] is False
    assert (index["runs"], index["failed"], index["errors"]) == (1, 1, 0)
    [run] = index["results"]
    assert run["cell"] == {"profile": "linux-6.1"} and run["document"] == SEED
    result = json.loads((report / run["files"]["result"]).read_text())
    assert result["name"] == SEED and len(result["variants"]) == 3
    assert [v["passed"] for v in run["variants"]] == [True, False, False]
    for v, full in zip(run["variants"], result["variants"], strict=True):
        assert json.loads((report / v["files"]["json"]).read_text()) == full
        assert v["profile"] == "linux-6.1"


def test_run_files_junit_with_an_error(schema: object, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MALFORMED)
    junit = tmp_path / "r.xml"
    status = cli.main(["run", "--local", str(LIBRARY / "kut-edge-intr.yaml"), str(bad),
                       "--junit", str(junit)])
    assert status == 2
    root = validate(schema, junit)
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert suites["kut-edge-intr"].get("failures") == "0"
    assert int(suites["kut-edge-intr"].get("tests") or 0) == 9
    err = suites[str(bad)].find("testcase/error")
    assert err is not None and "malformed scenario document" in (err.get("message") or "")
    assert root.get("errors") == "1"


def test_unwritable_outputs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    status = cli.main(["library", "run", "kut-edge-intr", "--local",
                       "--junit", str(blocker / "x.xml")])
    assert status == 2
    assert "--junit" in capsys.readouterr().err


# ---------------------------------------------------------------- irqlab suite


def test_suite_matrix_local_workers(schema: object, docs: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    junit, report = tmp_path / "suite.xml", tmp_path / "report"
    status = cli.main(["suite", str(docs), "race1-kernel", "--local", "--workers", "2",
                       "--profile", "linux-6.1,linux-6.2", "--irqchip", "kernel",
                       "--irqchip", "split", "--junit", str(junit), "--report", str(report)])
    out = capsys.readouterr().out
    assert status == 1  # the overrides break the variants written for another profile
    assert "3 documents × 4 cells = 12 runs, 2 workers, local" in out
    root = validate(schema, junit)
    names = [s.get("name") for s in root.findall("testsuite")]
    assert names == ["kut-edge-intr", SEED, "race1-kernel"]  # sorted paths, then names
    cs = cases(root)
    # every variant × every cell, each cell visible in the case name
    seed = [k for k in cs if k.startswith(f"{SEED}::")]
    assert len(seed) == 3 * 4
    for irqchip in ("kernel", "split"):
        for profile in ("linux-6.1", "linux-6.2"):
            k = f"{SEED}::linux-6.1 (before fceb3a36c29a) [{irqchip}, {profile}]"
            assert k in cs
    assert cs[f"{SEED}::linux-6.1 (before fceb3a36c29a) [split, linux-6.1]"] \
        .find("failure") is None
    assert cs[f"{SEED}::linux-6.1 (before fceb3a36c29a) [split, linux-6.2]"] \
        .find("failure") is not None
    index = json.loads((report / "index.json").read_text())
    assert index["runs"] == 12 and index["profiles"] == ["linux-6.1", "linux-6.2"]
    assert index["irqchips"] == ["kernel", "split"]
    assert [r["cell"] for r in index["results"][:4]] == [
        {"profile": p, "irqchip": m} for p in ("linux-6.1", "linux-6.2")
        for m in ("kernel", "split")]
    assert len({r["files"]["result"] for r in index["results"]}) == 12


def test_suite_exit_status(docs: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    # as written every expectation holds
    assert cli.main(["suite", str(docs), "kut-edge-mask", "--local", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "irqlab suite: 3 runs, 3 passed, 0 failed, 0 errors" in out
    # a malformed document or an unknown name: 2, and the others still run
    (docs / "bad.json").write_text('{"steps": 3}')
    assert cli.main(["suite", str(docs), "--local", "--workers", "1"]) == 2
    captured = capsys.readouterr()
    assert "bad.json: malformed scenario document" in captured.err
    assert "PASS  kut-edge-intr" in captured.out
    assert cli.main(["suite", "no-such-scenario", "--local"]) == 2
    assert cli.main(["suite", str(tmp_path / "missing.yaml"), "--local"]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["suite", str(empty), "--local"]) == 2
    assert cli.main(["suite", SEED, "--local", "--profile", "linux-9.9"]) == 2
    assert "--profile: unknown value 'linux-9.9'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["suite", "--local"])
    assert exc.value.code == 2


def test_suite_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.uvicorn_server import free_port

    assert cli.main(["suite", SEED, "--server", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "cannot reach the irqlab server" in capsys.readouterr().err


def test_suite_wait_for_a_server_that_never_comes(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.uvicorn_server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["suite", SEED, "--server", url, "--wait", "1"]) == 2
    assert f"--wait: {url}/readyz was not ready within 1 s" in capsys.readouterr().err


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with irqlab_server() as base:
        yield base


def test_suite_against_a_server_equals_local(server: str, docs: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    common = [str(docs), "kut-level-intr", "--profile", "linux-6.1", "--irqchip", "split",
              "--workers", "2", "--json"]
    assert cli.main(["suite", *common, "--server", server]) == 1
    remote = json.loads(capsys.readouterr().out)
    assert cli.main(["suite", *common, "--local"]) == 1
    local = json.loads(capsys.readouterr().out)
    assert [(r["source"], r["cell"]) for r in remote] == [(r["source"], r["cell"])
                                                           for r in local]
    for r, lo in zip(remote, local, strict=True):
        assert r["result"] == lo["result"]
        vms = {(v["vm"]["profile"], v["vm"]["irqchip"]) for v in r["result"]["variants"]}
        assert vms == {("linux-6.1", "split")}  # the file overrides reached the server


def test_suite_real_process(server: str, docs: Path, tmp_path: Path, schema: object) -> None:
    junit = tmp_path / "p.xml"
    p = subprocess.run([sys.executable, "-m", "app.cli", "suite", str(docs), "--server",
                        server, "--wait", "30", "--junit", str(junit)], cwd=ROOT,
                       capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert validate(schema, junit).get("failures") == "0"


# ---------------------------------------------------------------- pictures


def test_report_has_pictures(tmp_path: Path) -> None:
    """--report writes each run's HTML report (app.pictures) and a timeline SVG per variant,
    drawn with step bands (the run is observed) from the document's steps."""
    report = tmp_path / "report"
    assert cli.main(["library", "run", SEED, "--local", "--report", str(report)]) == 0
    index = json.loads((report / "index.json").read_text())
    [run] = index["results"]
    html = (report / run["files"]["html"]).read_text()
    assert html.startswith("<!DOCTYPE html>") and SEED in html
    first = run["variants"][0]
    svg = (report / first["files"]["svg"]).read_text()
    ET.fromstring(svg)  # well-formed
    assert "linux-6.1" in svg and "write_rte" in svg


# ---------------------------------------------------------------- version


def test_version_everywhere(server: str) -> None:
    assert __version__ == version("irqlab")
    p = subprocess.run([sys.executable, "-m", "app.cli", "--version"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == f"irqlab {__version__}"
    ready = httpx.get(f"{server}/readyz", timeout=10).json()
    assert ready["version"] == __version__
