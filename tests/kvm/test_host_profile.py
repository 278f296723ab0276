"""The host kernel's release selects the preset the differential compares against (issue 5).
Pure functions: no /dev/kvm needed."""

from __future__ import annotations

import pytest

from app.engine import flags as F
from app.kvm.differential import behaviour_for_release, host_profile, preset_for_release


@pytest.mark.parametrize(("release", "preset"), [
    ("6.18.44-fc-v782", "linux-latest"),  # this project's hosts
    ("6.16.0", "linux-latest"),  # 87e4951e250b, the newest modelled change
    ("6.12.3-arch1-1", "linux-6.10"),
    ("6.9.9", "linux-6.9"),
    ("6.3.1", "linux-6.9"),  # unmask_resamples (v6.3) is in; f3ced000a2df (v6.10) is not
    ("6.2.16", "linux-6.2"),
    ("6.1.0-13-amd64", "linux-6.1"),
    ("5.10.0", "linux-6.1"),  # no modelled change between 5.6 and 6.2
    ("4.19.0", "linux-4.15"),
    ("4.14.300", "linux-4.14"),
])
def test_release_selects_the_preset_with_its_flags(release: str, preset: str) -> None:
    assert preset_for_release(release) == preset
    assert F.PRESETS[preset].flags == behaviour_for_release(release)


def test_a_release_no_preset_pins_gets_the_nearest_older_one() -> None:
    # 3.10 predates changes every preset has (scan_keeps_pending_edge, the directed-EOI
    # flags of v4.1/v4.8), so no preset is exact and the oldest one is the approximation.
    assert F.PRESETS["linux-4.14"].flags != behaviour_for_release("3.10.0")
    assert preset_for_release("3.10.0") == "linux-4.14"


def test_vendor_preset_only_for_the_release_it_was_measured_on() -> None:
    assert host_profile("kvm_pvm", "6.18.44-fc-v782") == "kvm-pvm"
    assert host_profile("kvm_pvm", "6.1.0") == "linux-6.1"
    assert host_profile("kvm_amd", "6.18.1") == "linux-latest"
    assert host_profile("kvm_intel", "6.2.0") == "linux-6.2"
