"""Fidelity gaps found by a source audit (issue 13 item 4): each KVM history corner as a
before/after pair, the kernel-bug ones asserting both the buggy and the fixed outcome."""

from __future__ import annotations

import pytest

from app.engine import rte as R
from app.engine.errors import EngineError
from app.engine.flags import PRESETS
from app.engine.state import APIC_LVR_DIRECTED_EOI, SPIV_DIRECTED_EOI
from app.engine.vm import Vm
from tests.engine.conftest import P, V, exit_vectors, has, make_vm, reqs, rirr

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


# ---- 6517dfbcc918: KVM_X2APIC_DISABLE_SUPPRESS_EOI_BROADCAST (the DISABLED mode) ----


def _restored_with_directed_eoi(vm: Vm, n: int) -> Vm:
    """KVM_SET_LAPIC with SPIV bit 12 set: a snapshot restored with the bit in the vCPU's SVR
    (the only way past an LVR that does not advertise directed EOI)."""
    snap = vm.snapshot()
    snap["vcpus"][n]["svr"] |= SPIV_DIRECTED_EOI
    return Vm.restore(snap)


@pytest.mark.parametrize(("disabled", "when"), [(False, BEFORE), (True, AFTER)])
def test_disabled_mode_in_kernel_ignores_restored_directed_eoi(disabled: bool, when: str) -> None:
    vm = make_vm(
        "linux-latest", "kernel", vcpus=1, overrides={"suppress_eoi_broadcast_disabled": disabled}
    )
    vm.write_rte(0, P, R.encode(vector=V, trigger="level", dest=0))
    vm = _restored_with_directed_eoi(vm, 0)
    assert vm.vcpus[0].svr & SPIV_DIRECTED_EOI
    vm.enter(0)
    vm.set_line(P, 1)
    assert vm.ack(0)["vector"] == V
    vm.set_line(P, 0)
    result = vm.eoi(0)
    assert result["forwarded"] is True
    # kvm_ioapic_update_eoi_one: QUIRKED honours SPIV bit 12 (Remote IRR stays set, the guest
    # would have to EOI an IOAPIC the in-kernel one cannot be); DISABLED ignores it.
    assert rirr(vm, P) == (0 if when == AFTER else 1)
    assert result["ioapic"][0]["remote_irr_cleared"] is (when == AFTER)


@pytest.mark.parametrize(("disabled", "when"), [(False, BEFORE), (True, AFTER)])
def test_disabled_mode_split_never_advertises_directed_eoi(disabled: bool, when: str) -> None:
    vm = make_vm(
        "linux-latest", "split", vcpus=1, overrides={"suppress_eoi_broadcast_disabled": disabled}
    )
    advertised = bool(vm.vcpu_view(0)["lvr"] & APIC_LVR_DIRECTED_EOI)
    assert advertised is (when == BEFORE)  # QUIRKED: advertised with the IOAPIC in userspace
    svr = vm.lapic_write(0, "svr", 0x1FF | SPIV_DIRECTED_EOI)["value"]
    assert bool(svr & SPIV_DIRECTED_EOI) is (when == BEFORE)  # masked by kvm_lapic_reg_write
    vm.write_rte(0, P, R.encode(vector=V, trigger="level", dest=0))
    vm.enter(0)
    vm.set_line(P, 1)
    assert vm.ack(0)["vector"] == V
    vm.set_line(P, 0)
    # Either way the EOI exits to userspace (QUIRKED ignores the bit in split mode too).
    assert exit_vectors(vm.eoi(0, run_exits=True)) == [V]
    assert rirr(vm, P) == 0


def test_disabled_and_enabled_together_are_rejected() -> None:
    with pytest.raises(EngineError):
        make_vm(
            "linux-latest",
            "split",
            overrides={
                "split_suppress_eoi_broadcast": True,
                "suppress_eoi_broadcast_disabled": True,
            },
        )


def test_disabled_mode_is_opt_in() -> None:
    assert not any(p.flags.suppress_eoi_broadcast_disabled for p in PRESETS.values())


# ---- kvm_bitmap_or_dest_vcpus: scan requests go through the optimized map ----


@pytest.mark.parametrize(
    ("svr1", "ldr1", "requested"),
    [
        (0x1FF, 0x02 << 24, True),  # software-enabled, LDR set: in the logical map
        (0x0FF, 0x02 << 24, False),  # software-disabled: the logical map skips it
        (0x1FF, 0, False),  # LDR 0: the logical map skips it
    ],
)
def test_rte_write_scan_request_follows_the_logical_map(
    svr1: int, ldr1: int, requested: bool
) -> None:
    vm = make_vm("linux-latest", "kernel", vcpus=3)
    vm.lapic_write(0, "ldr", 0x01 << 24)
    vm.lapic_write(1, "ldr", ldr1)
    vm.lapic_write(1, "svr", svr1)
    vm.lapic_write(2, "ldr", 0x04 << 24)
    for n in range(3):
        vm.enter(n)
    # Logical flat destination 0x03 matches vCPU0 and, by exact matching, vCPU1 (unless its LDR
    # is 0); KVM asks only the vCPUs the optimized map resolves to rescan, never vCPU2.
    vm.write_rte(0, P, R.encode(vector=V, trigger="level", dest=0x03, dest_mode="logical"))
    assert reqs(vm, 0) == "SCAN_IOAPIC"
    assert reqs(vm, 1) == ("SCAN_IOAPIC" if requested else "")
    assert reqs(vm, 2) == ""
    for n in range(3):
        vm.enter(n)
    assert has(vm.vcpus[0].handled, V) == 1
    # The scan itself matches exactly (kvm_apic_match_dest ignores the enable bit), so a
    # software-disabled vCPU1 would get the bit once anything makes it rescan.
    assert has(vm.vcpus[1].handled, V) == (1 if requested else 0)
    if svr1 == 0x0FF:
        vm.lapic_write(1, "svr", 0x1FF)  # the map is recalculated: every vCPU rescans
        vm.enter(1)
        assert has(vm.vcpus[1].handled, V) == 1


def test_broadcast_scan_request_uses_exact_matching() -> None:
    """A broadcast destination is not resolved by the map: every present vCPU that
    kvm_apic_match_dest matches is asked, software-disabled or not."""
    vm = make_vm("linux-latest", "kernel", vcpus=2)
    vm.lapic_write(1, "svr", 0x0FF)
    vm.enter(0)
    vm.enter(1)
    vm.write_rte(0, P, R.encode(vector=V, trigger="level", dest=0xFF))
    assert reqs(vm, 0) == reqs(vm, 1) == "SCAN_IOAPIC"
