"""`irqlab explore`: exit status 0 verified / 1 violation / 3 bounded / 2 error, --json lines,
the census table, and a saved counterexample that `irqlab run --local` replays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from app import cli, explorations
from app.kvm import detect as kvm_detect
from app.kvm.differential import host_profile


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["explore", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_violation_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "seed-race-split", "--profile", "linux-6.1,linux-6.2", "--json")
    assert code == 1
    lines = [json.loads(x) for x in out.splitlines()]
    assert [(r["profile"], r["verdict"]) for r in lines] == [
        ("linux-6.1", "violation"), ("linux-6.2", "verified")]
    bad = lines[0]
    assert bad["property"] == "eoi-not-forwarded"
    assert bad["stats"]["states"] > 0 and bad["counterexample"]["length"] == len(
        bad["counterexample"]["steps"])
    assert lines[1]["counterexample"] is None


def test_verified_and_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "seed-race-split", "--profile", "linux-latest")[0] == 0
    code, out, _ = run(capsys, "seed-race-split", "--profile", "linux-latest",
                       "--max-states", "5", "--json")
    assert code == 3
    assert json.loads(out)["verdict"] == "bounded"


def test_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "no-such-exploration")
    assert code == 2 and "no such file" in err
    code, _, err = run(capsys, "seed-race-split", "--profile", "linux-9")
    assert code == 2 and "unknown profile" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("actors: {d: {steps: [{op: take, vcpu: 0}]}}\nproperties: [remote-irr-stuck]\n")
    code, _, err = run(capsys, str(bad))
    assert code == 2 and "actors.d.steps[0].op" in err


def test_table_and_census(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "race1-kernel", "race2b-posted", "--profile",
                       "linux-4.14,linux-6.9,linux-latest")
    assert code == 1
    assert "shortest counterexample" in out and "race census" in out
    assert "vcpu0 take 0x40" in out


def test_counterexample_replays_with_irqlab_run(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    code, _, _ = run(capsys, "race2b-posted", "--profile", "linux-6.9",
                     "--counterexample-dir", str(tmp_path))
    assert code == 1
    saved = tmp_path / "race2b-posted-linux-6.9.yaml"
    doc = yaml.safe_load(saved.read_text())
    assert doc["steps"][-1]["op"] == "expect"
    assert "eoi-not-forwarded" in doc["steps"][-1]["findings"]
    assert cli.main(["run", "--local", str(saved)]) == 0


def test_file_source(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    doc = explorations.get("race1-kernel")
    path.write_text(json.dumps(doc))
    assert run(capsys, str(path), "--profile", "linux-4.15")[0] == 0


KVM_OK, KVM_REASON = kvm_detect.kvm_available()


@pytest.mark.skipif(not KVM_OK, reason=f"real KVM unavailable: {KVM_REASON}")
@pytest.mark.parametrize(("name", "profile"), [("seed-race-split", "linux-6.1"),
                                               ("race1-kernel", "linux-4.14")])
def test_counterexample_runs_on_real_kvm(name: str, profile: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`irqlab diff` runs a counterexample on this host's KVM; with the engine on the host's
    own preset, model and kernel agree on every step of the bad order."""
    assert run(capsys, name, "--profile", profile, "--counterexample-dir", str(tmp_path))[0] == 1
    saved = tmp_path / f"{name}-{profile}.yaml"
    code = cli.main(["diff", "--local", "--json", "--profile", host_profile(), str(saved)])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["differences"] == 0, out
    assert out["variants"][0]["skipped"] is None
