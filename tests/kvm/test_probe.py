"""irqlab probe on this machine's /dev/kvm: each observable flag measured with one library
scenario run against the model with the flag on and off."""

from __future__ import annotations

import pytest

from app.cli import main
from app.kvm.probe import PROBES, measured_host_profile, probe

from .conftest import ON_PVM, needs_kvm


@needs_kvm
def test_probe_reports_every_flag_and_a_matching_preset() -> None:
    result = probe()
    assert [r["flag"] for r in result["probes"]] == [p.flag for p in PROBES]
    for r in result["probes"]:
        assert r["verdict"] in ("has", "lacks", "not-distinguished", "neither"), r
        assert (r["value"] is None) == (r["verdict"] in ("not-distinguished", "neither"))
    # Whatever the kernel, its measured flags leave at least one preset (or the release's
    # preset with overrides) that describes it.
    assert result["matching_presets"] or result["release_preset_overrides"]


@needs_kvm
@pytest.mark.skipif(not ON_PVM, reason="the values below are kvm_pvm's")
def test_probe_on_kvm_pvm_measures_the_implicit_eoi() -> None:
    result = probe()
    verdicts = {r["flag"]: r["verdict"] for r in result["probes"]}
    assert verdicts["lapic_auto_eoi"] == "has"
    # The implicit EOI hides the races: a vector never stays in ISR across a rescan.
    assert verdicts["split_scan_keeps_pending_level"] == "not-distinguished"
    assert verdicts["hide_directed_eoi_with_kernel_ioapic"] == "has"
    assert result["matching_presets"] == ["kvm-pvm"]
    assert result["release_preset_overrides"] == {"lapic_auto_eoi": True}
    assert measured_host_profile() == ("kvm-pvm", {})


@needs_kvm
@pytest.mark.skipif(not ON_PVM, reason="the exit status below is kvm_pvm's")
def test_probe_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe"]) == 1  # the release's preset (linux-latest) needs an override
    out = capsys.readouterr().out
    assert "lapic_auto_eoi" in out and "recommended: --profile kvm-pvm" in out
