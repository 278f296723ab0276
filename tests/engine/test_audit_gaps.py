"""Fidelity gaps found by a source audit (issue 13 item 4): each KVM history corner as a
before/after pair, the kernel-bug ones asserting both the buggy and the fixed outcome."""

from __future__ import annotations

import pytest

from app.engine import rte as R
from app.engine.flags import PRESETS
from tests.engine.conftest import exit_vectors, has, make_vm

BEFORE, AFTER = "before", "after"
E, VE = 4, 0x50  # an edge pin and its vector


# ---- 7455a8327674: split-mode scan of edge MSI routes (3159d36ad799 .. v5.6) ----


@pytest.mark.parametrize(
    ("profile", "overrides", "when"),
    [
        ("linux-4.14", {}, BEFORE),
        ("linux-4.15", {}, BEFORE),
        ("linux-latest", {"split_scan_level_routes_only": False}, BEFORE),
        ("linux-6.1", {}, AFTER),
        ("linux-latest", {}, AFTER),
    ],
)
def test_split_scan_of_edge_routes(profile: str, overrides: dict[str, bool], when: str) -> None:
    vm = make_vm(profile, "split", vcpus=2, overrides=overrides)
    vm.write_rte(0, E, R.encode(vector=VE, trigger="edge", dest=0))
    vm.enter(0)
    vm.enter(1)
    # kvm_scan_ioapic_routes: the edge route's vector is handled only while the test read
    # irq.level (always 1 for an MSI); the non-matching vCPU1 never gets it.
    assert has(vm.vcpus[0].handled, VE) == (1 if when == BEFORE else 0)
    assert has(vm.vcpus[1].handled, VE) == 0
    vm.set_line(E, 1)
    vm.set_line(E, 0)
    assert vm.ack(0)["vector"] == VE
    result = vm.eoi(0, run_exits=True)
    if when == BEFORE:
        # The EOI of an edge vector exits to userspace; QEMU's IOAPIC ignores it (edge pin).
        assert result["forwarded"] is True
        assert exit_vectors(result) == [VE]
    else:
        assert result["forwarded"] is False
        assert exit_vectors(result) == []
    assert R.remote_irr(vm.ioapic.redir[E]) == 0


def test_split_scan_of_edge_routes_does_not_touch_in_kernel_mode() -> None:
    """The bug sat in kvm_scan_ioapic_routes only; kvm_ioapic_scan_entry (in-kernel) always
    skipped edge pins that are not EOI-tracked."""
    vm = make_vm("linux-4.14", "kernel", vcpus=1)
    vm.write_rte(0, E, R.encode(vector=VE, trigger="edge", dest=0))
    vm.enter(0)
    assert has(vm.vcpus[0].handled, VE) == 0


def test_split_scan_level_routes_only_presets() -> None:
    fixed = {n for n, p in PRESETS.items() if p.flags.split_scan_level_routes_only}
    assert {n for n in PRESETS if n not in fixed} == {"linux-4.14", "linux-4.15"}
