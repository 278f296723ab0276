"""`irqlab run` and `irqlab library`: in process (--local) and against a real server (a uvicorn
subprocess on 127.0.0.1 at a free port). Exit status 0 / 1 (an expectation failed) / 2
(malformed document, unknown scenario, unreachable server)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import cli, scenarios
from app.engine.scenario import run_scenario
from app.kvm import detect as kvm_detect
from app.kvm.differential import host_profile
from tests.uvicorn_server import irqlab_server

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = Path(scenarios.__file__).parent
SEED = "seed-race-split"

FAILING = """\
name: lost-eoi-fails
vm: {vcpus: 2, irqchip: split, profile: linux-6.1}
steps:
  - {op: write_rte, pin: 5, entry: {vector: 0x40, trigger: level, dest: 0}}
  - {op: enter, vcpu: 0}
  - {op: line, pin: 5, level: 1}
  - {op: ack, vcpu: 0}
  - {op: line, pin: 5, level: 0}
  - {op: patch_rte, vcpu: 0, pin: 5, fields: {dest: 1}}
  - {op: enter, vcpu: 0}
  - {op: eoi, vcpu: 0}
  - {op: enter, vcpu: 0}
  - {op: expect, label: after-eoi, remote_irr: []}
"""
MALFORMED = "name: bad\nsteps:\n  - {op: enter}\n  - {op: nope}\n"


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich tables on one line each, whatever the terminal


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    out = {}
    for name, text in {"failing.yaml": FAILING, "malformed.yaml": MALFORMED,
                       "broken.yaml": "steps: [{op: enter\n",
                       "lost.json": json.dumps({"vm": {"vcpus": 1},
                                                "steps": [{"op": "enter"}]})}.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        out[name] = str(tmp_path / name)
    return out


def _json(out: str) -> object:
    return json.loads(out)


# ---- in process


def test_local_library_file_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--local", str(LIBRARY / f"{SEED}.yaml")]) == 0
    out = capsys.readouterr().out
    assert "seed-race-split" in out and "3 of 3 variants passed" in out
    assert "linux-6.1 (before fceb3a36c29a)" in out and "remote-irr-stuck" in out
    assert "after-eoi" in out and "FAILED" not in out


def test_local_failing_expectation(files: dict[str, str],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--local", files["failing.yaml"]]) == 1
    out = capsys.readouterr().out
    assert "failed checks" in out and "FAILED (1 of 1 checks)" in out
    row = next(line for line in out.splitlines() if "remote_irr" in line and "step 9" in line)
    assert "[]" in row and "[5]" in row  # path, expected, actual
    assert "findings" in out and "eoi-not-forwarded" in out


def test_local_malformed(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--local", files["malformed.yaml"]]) == 2
    err = capsys.readouterr().err
    assert "malformed scenario document" in err and "steps[1].op" in err


def test_local_yaml_syntax_error_and_missing_file(files: dict[str, str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--local", files["broken.yaml"]]) == 2
    assert "line 2" in capsys.readouterr().err
    assert cli.main(["run", "--local", "/nonexistent/x.yaml"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_local_json_output(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--local", "--json", files["failing.yaml"]]) == 1
    result = _json(capsys.readouterr().out)
    doc = scenarios.get(SEED)
    assert isinstance(result, dict) and result["passed"] is False
    assert cli.main(["run", "--local", "--json", files["lost.json"],
                     str(LIBRARY / f"{SEED}.yaml")]) == 0
    both = _json(capsys.readouterr().out)
    assert isinstance(both, list) and [r["passed"] for r in both] == [True, True]
    assert both[1] == json.loads(json.dumps(run_scenario(doc or {})))


def test_several_files_worst_status_wins(files: dict[str, str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--local", files["failing.yaml"], files["lost.json"]]) == 1
    assert cli.main(["run", "--local", files["malformed.yaml"], files["failing.yaml"]]) == 2
    out = capsys.readouterr().out
    assert "lost-eoi-fails" in out  # the other files still ran


def test_local_library(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["library", "--local"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in scenarios.names())
    assert cli.main(["library", "--local", "--json"]) == 0
    listed = _json(capsys.readouterr().out)
    assert isinstance(listed, dict)
    assert [s["name"] for s in listed["scenarios"]] == scenarios.names()


def test_local_library_run_with_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["library", "run", "--local", SEED]) == 0
    capsys.readouterr()
    assert cli.main(["library", "run", SEED, "--local", "--profile", "linux-6.1",
                     "--json"]) == 1
    result = _json(capsys.readouterr().out)
    assert isinstance(result, dict)
    assert [v["passed"] for v in result["variants"]] == [True, False, False]
    assert {v["vm"]["profile"] for v in result["variants"]} == {"linux-6.1"}
    assert cli.main(["library", "--local", "run", "race1-kernel", "--irqchip", "split",
                     "--json"]) in (0, 1)
    result = _json(capsys.readouterr().out)
    assert isinstance(result, dict)
    assert {v["vm"]["irqchip"] for v in result["variants"]} == {"split"}


def test_unknown_library_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["library", "run", "--local", "nope"]) == 2
    assert "no scenario 'nope'" in capsys.readouterr().err


def test_bad_arguments() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["library", "run", SEED, "--profile", "linux-9"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["run", "--local", "--server", "http://x", "f.yaml"])


def test_unreachable_server(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    assert cli.main(["run", "--server", url, files["lost.json"]]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the irqlab server" in err and url in err
    assert cli.main(["library", "--server", url]) == 2
    assert cli.main(["library", "run", SEED, "--server", url]) == 2
    capsys.readouterr()
    assert cli.main(["run", "--server", "127.0.0.1:8000", files["lost.json"]]) == 2
    assert "not an http:// or https:// URL" in capsys.readouterr().err


def test_internal_error_is_not_an_expectation_failure(
        files: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from app.api import scenarios as S

    def boom(doc: object, observe: object = False, budget: object = None) -> dict[str, object]:
        raise RuntimeError("engine bug")

    monkeypatch.setattr(S, "run_scenario", boom)
    monkeypatch.setattr(S, "locate", lambda doc: None)
    assert cli.main(["run", "--local", files["lost.json"]]) == 2
    assert "internal error: RuntimeError: engine bug" in capsys.readouterr().err


# ---- against a real server


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with irqlab_server() as base:
        yield base


def test_server_run_files(server: str, files: dict[str, str],
                          capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--server", server, str(LIBRARY / f"{SEED}.yaml")]) == 0
    assert "3 of 3 variants passed" in capsys.readouterr().out
    assert cli.main(["run", "--server", server, files["failing.yaml"]]) == 1
    out = capsys.readouterr().out
    assert "failed checks" in out and "remote_irr" in out
    assert cli.main(["run", "--server", server, files["malformed.yaml"]]) == 2
    assert "steps[1].op" in capsys.readouterr().err


def test_server_json_equals_local(server: str, files: dict[str, str],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--server", server, "--json", files["failing.yaml"]]) == 1
    remote = _json(capsys.readouterr().out)
    assert cli.main(["run", "--local", "--json", files["failing.yaml"]]) == 1
    assert remote == _json(capsys.readouterr().out)


def test_server_library(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["library", "--server", server, "--json"]) == 0
    listed = _json(capsys.readouterr().out)
    assert isinstance(listed, dict)
    assert [s["name"] for s in listed["scenarios"]] == scenarios.names()
    assert cli.main(["library", "run", SEED, "--server", server, "--profile", "linux-6.1"]) == 1
    out = capsys.readouterr().out
    assert "1 of 3 variants passed" in out and "failed checks" in out
    assert cli.main(["library", "run", "nope", "--server", server]) == 2
    assert "no scenario 'nope'" in capsys.readouterr().err


def test_real_process_exit_status(server: str, files: dict[str, str]) -> None:
    """The console script's exit status, as a shell sees it."""
    def status(*args: str) -> int:
        return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT,
                              capture_output=True, timeout=120).returncode

    assert status("run", "--server", server, files["lost.json"]) == 0
    assert status("run", "--server", server, files["failing.yaml"]) == 1
    assert status("run", "--local", files["malformed.yaml"]) == 2


# ---------------------------------------------------------------- irqlab diff

KVM_OK, KVM_REASON = kvm_detect.kvm_available()
needs_kvm = pytest.mark.skipif(not KVM_OK, reason=f"real KVM unavailable: {KVM_REASON}")
ON_PVM = kvm_detect.vendor_module() == "kvm_pvm"
EDGE_DIFF = """\
name: edge-ack
vm: {vcpus: 1, irqchip: kernel}
steps:
  - {op: write_rte, pin: 3, entry: {vector: 0x41, dest: 0}}
  - {op: line, pin: 3, action: pulse}
  - {op: ack, vcpu: 0}
  - {op: expect, remote_irr: []}
matrix:
  - {name: kernel-variant, vm: {irqchip: kernel}}
  - {name: split-variant, vm: {irqchip: split}}
"""


@pytest.fixture
def edge_diff(tmp_path: Path) -> str:
    path = tmp_path / "edge-diff.yaml"
    path.write_text(EDGE_DIFF, encoding="utf-8")
    return str(path)


@needs_kvm
def test_diff_local_table_and_exit_status(edge_diff: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["diff", "--local", edge_diff])
    out = capsys.readouterr().out
    assert "variant kernel-variant" in out and "variant split-variant" in out
    assert "skipped" not in out
    assert "ignored" in out
    if ON_PVM:  # kvm_pvm's implicit EOI: ISR stays empty after the take (both variants)
        assert status == 1
        assert "vcpus.0.isr" in out and "[0x41]" in out and "2 differences" in out
    else:
        assert status == 0 and "no difference" in out


@needs_kvm
def test_diff_local_json(edge_diff: str, capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["diff", "--local", "--json", edge_diff])
    result = json.loads(capsys.readouterr().out)
    assert result["name"] == "edge-ack"
    assert result["host"]["vendor_module"] == kvm_detect.vendor_module()
    assert status == (1 if result["differences"] else 0)
    assert [(v["irqchip"], v["skipped"]) for v in result["variants"]] == [("kernel", None),
                                                                          ("split", None)]


@needs_kvm
def test_diff_with_the_host_profile_agrees(edge_diff: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """--profile replaces vm.profile in every variant before the diff: the profile that
    models this host (kvm-pvm on kvm_pvm) leaves no difference, where linux-latest had two."""
    profile = host_profile()
    status = cli.main(["diff", "--local", "--json", "--profile", profile, edge_diff])
    result = json.loads(capsys.readouterr().out)
    assert [v["profile"] for v in result["variants"]] == [profile, profile]
    assert status == 0 and result["differences"] == 0


@needs_kvm
def test_diff_server_with_a_profile(server: str, edge_diff: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["diff", "--server", server, "--json", "--profile", host_profile(),
                       edge_diff])
    result = json.loads(capsys.readouterr().out)
    assert status == 0 and result["variants"][0]["profile"] == host_profile()


def test_diff_rejects_an_unknown_profile(edge_diff: str) -> None:
    with pytest.raises(SystemExit):
        cli.main(["diff", "--local", "--profile", "linux-0.1", edge_diff])


def test_diff_malformed_no_kvm_unreachable_exit_2(files: dict[str, str], edge_diff: str,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.main(["diff", "--local", files["malformed.yaml"]]) == 2
    assert "malformed scenario document: steps[1].op" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli.main(["diff", "--server", f"http://127.0.0.1:{port}", edge_diff]) == 2
    assert "cannot reach the irqlab server" in capsys.readouterr().err
    monkeypatch.setattr(kvm_detect, "kvm_available", lambda *a: (False, "no /dev/kvm (test)"))
    assert cli.main(["diff", "--local", edge_diff]) == 2
    assert "real KVM is not available here: no /dev/kvm (test)" in capsys.readouterr().err


@needs_kvm
def test_diff_server(server: str, edge_diff: str, files: dict[str, str],
                     capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["diff", "--server", server, "--json", edge_diff])
    result = json.loads(capsys.readouterr().out)
    assert status == (1 if result["differences"] else 0)
    assert result["variants"][1]["irqchip"] == "split"
    assert result["variants"][1]["skipped"] is None
    assert cli.main(["diff", "--server", server, files["malformed.yaml"]]) == 2
    assert "malformed scenario document" in capsys.readouterr().err
