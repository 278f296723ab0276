"""irqlab probe's pure parts: the documents it runs, matching presets (no /dev/kvm)."""

from __future__ import annotations

from app import scenarios as library
from app.engine import flags as F
from app.engine.scenario import run_scenario, variants
from app.kvm.probe import PROBES, matching_presets, overrides_for, probe_document


def test_every_probe_names_a_flag_and_a_library_variant() -> None:
    for p in PROBES:
        assert p.flag in F.FLAGS, p
        doc = library.get(p.scenario)
        assert doc is not None, p
        assert 0 <= p.variant < len(list(variants(doc))), p


def test_probe_document_pins_only_the_flag() -> None:
    p = next(p for p in PROBES if p.flag == "split_scan_keeps_pending_level")
    for value in (True, False):
        doc = probe_document(p, "linux-6.10", value)
        ((name, cfg, _),) = list(variants(doc))
        assert cfg["profile"] == "linux-6.10" and cfg["overrides"] == {p.flag: value}
        assert cfg["irqchip"] == "split" and name.endswith(f"[{p.flag}={value}]")
        run_scenario(doc)  # a valid document


def test_each_probe_discriminates_in_the_model() -> None:
    """With the flag on and off the model's runs differ (else the probe could never tell):
    checked on the final state of the engine run, flags that only KVM internals show aside."""
    for p in PROBES:
        runs = [run_scenario(probe_document(p, "linux-latest", v)) for v in (True, False)]
        finals = [r["variants"][0]["final_state"] for r in runs]
        logs = [r["variants"][0]["events"] for r in runs]
        assert finals[0] != finals[1] or logs[0] != logs[1], p.flag


def test_presets_matching_measured_flags() -> None:
    measured = {"split_scan_keeps_pending_level": False, "scan_keeps_pending_level": True,
                "unmask_resamples": False}
    assert "linux-6.1" in matching_presets(measured)
    assert "linux-6.2" not in matching_presets(measured)
    assert overrides_for("linux-6.1", measured) == {}
    # A 6.1 kernel with fceb3a36c29a backported: linux-6.1 plus one override.
    assert overrides_for("linux-6.1", {**measured, "split_scan_keeps_pending_level": True}) == {
        "split_scan_keeps_pending_level": True}
