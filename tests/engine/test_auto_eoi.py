"""lapic_auto_eoi (the kvm-pvm preset): taking an interrupt EOIs it at once, as kvm_pvm does on
this project's CI host (docs/kvm-backend-notes.md; measured through irqlab's guest in
tests/kvm/test_kvm_vm.py::test_kvm_pvm_* and compared at random in tests/kvm/test_random_diff.py).
Each case runs before (linux-latest, upstream) and after (kvm-pvm)."""

from __future__ import annotations

import pytest

from app.engine import flags as F
from app.engine import rte as R
from app.engine.invariants import event_findings
from app.engine.lapic import ppr
from app.engine.vm import Vm
from tests.engine.conftest import make_vm

PIN = 16
LEVEL = R.encode(vector=0x40, trigger="level", dest=0)
EDGE = R.encode(vector=0x41, dest=0)
B40, B41, B51 = 1 << 0x40, 1 << 0x41, 1 << 0x51


def rirr(vm: Vm, pin: int = PIN) -> bool:
    return bool(vm.ioapic.redir[pin] & R.REMOTE_IRR_BIT)


def kinds(vm: Vm, since: int) -> list[str]:
    return [e[2] for e in vm.log.events if e[0] > since]


def test_only_the_kvm_pvm_preset_sets_it() -> None:
    assert [p for p, pre in F.PRESETS.items() if pre.flags.lapic_auto_eoi] == ["kvm-pvm"]
    assert F.PRESETS["kvm-pvm"].flags == F.resolve("linux-latest", {"lapic_auto_eoi": True})
    assert F.FLAGS["lapic_auto_eoi"].component == "kvm_pvm"


@pytest.mark.parametrize("profile", ["linux-latest", "kvm-pvm"])
def test_edge_vector_skips_isr(profile: str) -> None:
    vm = make_vm(profile, vcpus=1)
    vm.write_rte(0, 17, EDGE)
    vm.set_line(17, action="pulse")
    assert vm.ack(0)["vector"] == 0x41
    v = vm.vcpus[0]
    if profile == "linux-latest":
        assert (v.irr, v.isr, ppr(v)) == (0, B41, 0x40)
        assert vm.eoi(0)["vector"] == 0x41
    else:
        assert (v.irr, v.isr, ppr(v)) == (0, 0, 0)  # PPR stays at TPR
        assert vm.eoi(0)["vector"] is None  # the guest's EOI finds ISR empty


@pytest.mark.parametrize("profile", ["linux-latest", "kvm-pvm"])
def test_level_vector_with_the_line_high_is_redelivered_at_the_ack(profile: str) -> None:
    vm = make_vm(profile, vcpus=1)
    vm.write_rte(0, PIN, LEVEL)
    vm.set_line(PIN, level=1)
    seq = vm.log.next_seq - 1
    assert vm.ack(0)["vector"] == 0x40
    v = vm.vcpus[0]
    assert rirr(vm) and v.tmr == B40
    if profile == "linux-latest":
        assert (v.irr, v.isr) == (0, B40)
    else:
        # auto-EOI: Remote IRR cleared, the still-high line re-serviced into IRR (and Remote
        # IRR set again), all before the guest runs its handler.
        assert (v.irr, v.isr, ppr(v)) == (B40, 0, 0)
        k = kinds(vm, seq)
        assert k.index("auto-eoi") < k.index("remote-irr-cleared") < k.index("deliver")
        assert vm.ack(0)["vector"] == 0x40  # and taken again while the line stays high
        assert vm.ioapic.irq_eoi[PIN] == 2  # successive re-deliveries, as after real EOIs


@pytest.mark.parametrize("profile", ["linux-latest", "kvm-pvm"])
def test_level_vector_with_the_line_low_clears_remote_irr_at_the_ack(profile: str) -> None:
    vm = make_vm(profile, vcpus=1)
    vm.write_rte(0, PIN, LEVEL)
    vm.set_line(PIN, level=1)
    vm.set_line(PIN, level=0)
    assert vm.ack(0)["vector"] == 0x40
    assert rirr(vm) is (profile == "linux-latest")  # upstream: until the guest's EOI
    vm.eoi(0)
    assert not rirr(vm)


@pytest.mark.parametrize("profile", ["linux-latest", "kvm-pvm"])
def test_a_lower_class_is_taken_without_an_eoi(profile: str) -> None:
    vm = make_vm(profile, vcpus=1)
    vm.signal_msi(0xFEE00000, 0, 0x41)
    vm.signal_msi(0xFEE00000, 0, 0x51)
    assert vm.ack(0)["vector"] == 0x51
    # Upstream, ISR holds 0x51 and PPR 0x50 blocks class 4 until the EOI.
    assert vm.ack(0)["vector"] == (None if profile == "linux-latest" else 0x41)
    vm.lapic_write(0, "tpr", 0x40)
    vm.signal_msi(0xFEE00000, 0, 0x41)
    assert vm.ack(0)["vector"] is None  # TPR still blocks, with or without the flag


@pytest.mark.parametrize("profile", ["linux-latest", "kvm-pvm"])
def test_auto_eoi_is_filtered_by_the_handled_vectors(profile: str) -> None:
    """The auto-EOI takes kvm_ioapic_send_eoi's path: a vCPU whose last scan did not give it
    the vector (the pin targets another vCPU and the vector was not pending then) does not
    reach the IOAPIC, so Remote IRR stays set; upstream the same happens at the guest's EOI."""
    vm = make_vm(profile, vcpus=2)
    vm.write_rte(0, PIN, R.encode(vector=0x40, trigger="level", dest=1))
    vm.set_line(PIN, level=1)
    assert vm.ack(0)["vector"] is None  # vCPU0 enters: its rescan leaves 0x40 out
    assert not vm.vcpus[0].handled & B40
    vm.signal_msi(0xFEE00000, 0, 0xC040)  # a level MSI with the pin's vector, to vCPU0
    seq = vm.log.next_seq - 1
    assert vm.ack(0)["vector"] == 0x40
    if profile == "linux-latest":
        assert "eoi-not-forwarded" not in kinds(vm, seq)
        assert vm.eoi(0)["forwarded"] is False
    assert "eoi-not-forwarded" in kinds(vm, seq)
    assert rirr(vm) and vm.vcpus[1].irr == B40 and vm.vcpus[0].isr == 0
    # The invariant sees the auto-EOI as it sees a guest EOI (a level vector retired while its
    # pin has Remote IRR set, no IOAPIC told).
    assert [f["kind"] for f in event_findings(vm, seq)] == ["eoi-not-forwarded"]


@pytest.mark.parametrize("profile", ["linux-latest", "kvm-pvm"])
def test_auto_eoi_of_a_stale_level_vector_is_a_finding(profile: str) -> None:
    """linux-4.14-style lost EOI, seen at the ack under the flag: the vector was retargeted away
    from vCPU0 while pending, the rescan dropped its handled bit, and its EOI is not forwarded."""
    vm = make_vm(profile, vcpus=2, overrides={"scan_keeps_pending_level": False})
    vm.write_rte(0, PIN, LEVEL)
    vm.set_line(PIN, level=1)
    vm.write_rte(0, PIN, R.encode(vector=0x40, trigger="level", dest=1), ("high",))
    seq = vm.log.next_seq - 1
    assert vm.ack(0)["vector"] == 0x40
    vm.eoi(0)
    found = {f["kind"] for f in event_findings(vm, seq)}
    assert "eoi-not-forwarded" in found and rirr(vm)


@pytest.mark.parametrize("profile", ["linux-latest", "kvm-pvm"])
def test_split_eoi_exit_comes_within_the_ack(profile: str) -> None:
    """Split irqchip: the auto-EOI requests KVM_EXIT_IOAPIC_EOI, handled when the vCPU re-enters
    after the handler's first exit, so the VMM's Remote IRR is clear when Vm.ack returns."""
    vm = make_vm(profile, irqchip="split", vcpus=1)
    vm.write_rte(0, PIN, LEVEL)
    vm.set_line(PIN, level=1)
    vm.set_line(PIN, level=0)
    got = vm.ack(0)
    assert got["vector"] == 0x40
    if profile == "linux-latest":
        assert "exits" not in got and rirr(vm)
        eoi = vm.eoi(0, run_exits=True)
        assert [x["reason"] for x in eoi["exits"]] == ["KVM_EXIT_IOAPIC_EOI"]
    else:
        assert [(x["reason"], x["vector"]) for x in got["exits"]] == [
            ("KVM_EXIT_IOAPIC_EOI", 0x40)]
        assert vm.eoi(0, run_exits=True)["exits"] == []  # the guest's EOI: no exit
    assert not rirr(vm)


def test_override_on_an_upstream_preset_behaves_as_kvm_pvm() -> None:
    a = make_vm("linux-latest", vcpus=1, overrides={"lapic_auto_eoi": True})
    b = make_vm("kvm-pvm", vcpus=1)
    for vm in (a, b):
        vm.write_rte(0, PIN, LEVEL)
        vm.set_line(PIN, level=1)
        vm.ack(0)
        vm.set_line(PIN, level=0)
        vm.ack(0)
    assert a.key() == b.key()
