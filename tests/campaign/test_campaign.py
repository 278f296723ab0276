"""Differential campaigns in process: reproducible sequences, a faithful scenario form, a
census that shows what known kernel changes did, saved divergences that replay, and the same
result from worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from app.api import scenario_models as SM
from app.campaign.driver import CampaignSpec, run_local
from app.campaign.runner import aggregate, run_chunk
from app.campaign.sequences import MAX_STEPS, PINS, generate, scenario_steps, vm_block
from app.cli import main
from app.engine.scenario import run_scenario
from app.engine.vm import Vm, config_from_dict
from app.kvm.detect import kvm_available
from app.kvm.differential import run_engine

KVM_OK, KVM_REASON = kvm_available()


def test_sequences_are_a_function_of_seed_and_index() -> None:
    assert generate(7, 3) == generate(7, 3)
    assert generate(7, 3) != generate(7, 4) and generate(7, 3) != generate(8, 3)
    # ... in another process with another hash seed too (no salted hash anywhere).
    code = ("from app.campaign.sequences import generate; "
            "print(repr(generate(7, 3).steps))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONHASHSEED="123"), check=True)
    assert out.stdout.strip() == repr(generate(7, 3).steps)


def test_sequences_stay_in_bounds() -> None:
    kinds = set()
    for i in range(300):
        c = generate(1, i)
        assert 1 <= c.vcpus <= 2 and 1 <= len(c.steps) <= 2 * MAX_STEPS
        assert c.steps[0][0] == "rte"
        for s in c.steps:
            kinds.add(s[0])
            if s[0] in ("ack", "eoi", "tpr", "rte", "ioeoi"):
                assert 0 <= s[1] < c.vcpus
            if s[0] in ("rte", "line"):
                assert s[1 if s[0] == "line" else 2] in PINS
    assert kinds == {"rte", "line", "msi", "ack", "eoi", "tpr", "ioeoi"}


@pytest.mark.parametrize("irqchip", ["kernel", "split"])
@pytest.mark.parametrize("profile", ["linux-4.14", "linux-latest", "kvm-pvm"])
def test_scenario_form_replays_the_same_state(irqchip: str, profile: str) -> None:
    """scenario_steps is the same program: after the last step the scenario runner's VM has
    the state the differential harness observed."""
    for i in range(40):
        case = generate(3, i)
        obs = run_engine(list(case.steps), list(PINS), case.vcpus, profile=profile,
                         irqchip=irqchip, ioapic_version=case.ioapic_version,
                         routes_before_service=case.routes_before_service)[-1]
        vm = Vm(config_from_dict(dict(vm_block(case, irqchip), profile=profile)))
        doc = {"name": "replay", "vm": dict(vm_block(case, irqchip), profile=profile),
               "steps": scenario_steps(case.steps)}
        SM.ScenarioDocument.model_validate(doc)
        from app.engine.scenario import Runner

        runner = Runner(doc, doc["vm"], {})
        for n, step in enumerate(doc["steps"]):
            runner.run_step(step, f"steps[{n}]")
        vm = runner.vm
        assert tuple(v.irr for v in vm.vcpus) == obs.irr, i
        assert tuple(v.isr for v in vm.vcpus) == obs.isr, i
        assert tuple(bool(vm.ioapic.redir[p] >> 14 & 1) for p in PINS) == obs.remote_irr, i


PRESETS = ["linux-4.14", "linux-6.1", "linux-latest", "kvm-pvm"]


@pytest.fixture(scope="module")
def census() -> dict[str, object]:
    spec = CampaignSpec(seed=1, sequences=200, profiles=tuple(PRESETS), batch=50)
    return run_local(spec).as_dict() | {"_result": run_local(spec)}


def _pair(census: dict[str, object], chip: str, pair: str) -> dict[str, object]:
    pairs = census["pairs"]
    assert isinstance(pairs, list)
    return next(p for p in pairs if p["irqchip"] == chip and p["pair"] == pair)


def test_census_shows_known_kernel_changes(census: dict[str, object]) -> None:
    # kvm_pvm's implicit EOI (lapic_auto_eoi) shows at the first interrupt window taken.
    pvm = _pair(census, "kernel", "linux-latest|kvm-pvm")
    assert pvm["diverged"] > 50
    assert pvm["first"]["kind"] == "ack" and {"isr", "ppr"} <= set(pvm["first"]["fields"])
    # 4.14 -> 4.15 (da3fe7bdfada, a8bfec293052, b200dded0a69): in-kernel line answers differ.
    old = _pair(census, "kernel", "linux-4.14|linux-6.1")
    assert old["diverged"] > 0 and old["by_step_kind"].get("line", 0) > 0
    # Every pair is compared on every sequence.
    assert all(p["compared"] == 200 for p in census["pairs"])  # type: ignore[union-attr]


def test_saved_divergences_are_valid_scenarios_that_pass(census: dict[str, object]) -> None:
    result = census["_result"]
    scenarios = result.scenarios  # type: ignore[attr-defined]
    assert scenarios
    for name, doc in scenarios.items():
        SM.ScenarioDocument.model_validate(doc)
        out = run_scenario(json.loads(json.dumps(doc)))
        assert out["passed"], name
        # ... and each variant's expectation is its own: the two disagree at that step.
        if len(doc["matrix"]) == 2:
            a, b = (v["expect"]["divergence"] for v in doc["matrix"])
            if a == b:  # only a step answer (status/ack) differed, not the state
                assert "status" in doc["description"] or "ack" in doc["description"]


def test_workers_give_the_same_result() -> None:
    spec = CampaignSpec(seed=5, sequences=60, profiles=("linux-6.1", "linux-6.2"), batch=7)
    one = run_local(spec).as_dict()
    two = run_local(spec, workers=2).as_dict()
    assert one == two


def test_aggregate_ignores_completion_order() -> None:
    outs = run_chunk(2, list(range(30)), ["linux-4.14", "linux-latest"], ["kernel", "split"])
    a = aggregate(2, 30, ["linux-4.14", "linux-latest"], ["kernel", "split"], outs)
    b = aggregate(2, 30, ["linux-4.14", "linux-latest"], ["kernel", "split"], outs[::-1])
    assert a.as_dict() == b.as_dict() and a.scenarios == b.scenarios


def test_cli_json_and_out(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path)
    rc = main(["campaign", "40", "--profile", "linux-4.14,kvm-pvm", "--irqchip", "kernel",
               "--json", "--out", out])
    assert rc == 0
    body = json.loads(capsys.readouterr().out)
    assert body["sequences"] == 40 and body["pairs"][0]["pair"] == "linux-4.14|kvm-pvm"
    files = os.listdir(os.path.join(out, "scenarios"))
    assert files and all(f.endswith(".yaml") for f in files)
    with open(os.path.join(out, "campaign.json")) as f:
        assert json.load(f)["seed"] == 1


@pytest.mark.parametrize("argv", [
    ["campaign", "10", "--profile", "linux-nope,linux-6.1"],
    ["campaign", "10", "--profile", "linux-6.1"],
    ["campaign", "0"],
    ["campaign", "10", "--irqchip", "pic"],
])
def test_cli_refuses_bad_arguments(argv: list[str]) -> None:
    assert main(argv) == 2


@pytest.mark.skipif(not KVM_OK, reason=f"real KVM unavailable: {KVM_REASON}")
def test_model_agrees_with_this_host() -> None:
    """Model vs this host's kernel under the host's preset: a conformance campaign."""
    spec = CampaignSpec(seed=11, sequences=60, profiles=(), kvm=True, batch=30)
    result = run_local(spec)
    assert result.kvm and result.kvm["nodes"][0]["side"] == "kvm"
    assert not result.errors
    for s in result.pairs:
        assert s.compared == 60
        assert s.diverged == 0, s.as_dict()
