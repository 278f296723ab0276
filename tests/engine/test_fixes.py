"""Spec §4: known bugs and their fixes, each as a before/after pair (the preset before the fix
or a flag override, against the preset/flag with it)."""

from __future__ import annotations

from typing import Any

import pytest

from app.engine import rte as R
from app.engine.errors import EngineError
from app.engine.state import APIC_LVR_DIRECTED_EOI, SPIV_DIRECTED_EOI
from app.engine.vm import Vm
from tests.engine.conftest import P, V, accepts_during, exit_vectors, has, make_vm, rirr

BEFORE, AFTER = "before", "after"


def level_pin_in_service(
    profile: str, irqchip: str = "kernel", vcpus: int = 1, line_after: int = 0, **config: Any
) -> Vm:
    """Pin P level -> vCPU0 with vector V, delivered and acknowledged (V in ISR0, RIRR=1);
    then the line is left at `line_after`."""
    vm = make_vm(profile, irqchip, vcpus=vcpus, **config)
    vm.write_rte(0, P, R.encode(vector=V, trigger="level", dest=0))
    vm.enter(0)
    vm.set_line(P, 1)
    assert vm.ack(0)["vector"] == V
    if not line_after:
        vm.set_line(P, 0)
    assert rirr(vm, P) == 1
    return vm


# ---- item 1: db2bdcbbbd32, EOI tracking of edge pins with an ack notifier ----


@pytest.mark.parametrize(("flag", "forwarded"), [(False, False), (True, True)])
def test_item1_edge_pin_with_ack_notifier_retargeted_before_eoi(
    flag: bool, forwarded: bool
) -> None:
    E, VE = 4, 0x50  # GSI 4 -> IOAPIC pin 4 (default in-kernel table)
    vm = make_vm("linux-latest", "kernel", vcpus=2, overrides={"scan_keeps_pending_edge": flag})
    vm.write_rte(0, E, R.encode(vector=VE, trigger="edge", dest=0))
    vm.register_resampler(E)  # ack notifier on the pin -> the scan tracks this edge pin
    vm.enter(0)
    vm.enter(1)
    assert has(vm.vcpus[0].handled, VE) == 1

    assert accepts_during(vm, lambda: vm.irqfd_assert(E)) == [0]
    assert vm.ack(0)["vector"] == VE
    vm.patch_rte(0, E, {"dest": 1})  # retarget before the EOI -> SCAN on vCPU0 and vCPU1
    vm.enter(0)
    vm.enter(1)
    assert has(vm.vcpus[0].handled, VE) == int(flag)

    result = vm.eoi(0)
    assert result["vector"] == VE
    assert result["forwarded"] is forwarded
    # The ack notifier (irqfd resampler) runs only when the EOI reaches the IOAPIC.
    assert vm.resamplers[E] == (1 if forwarded else 0)
    # The resampler deasserts its source: without the EOI the latched edge stays high and the
    # device's next assertion is coalesced; with it, the next assertion reaches vCPU1.
    statuses: list[int] = []
    who = accepts_during(vm, lambda: statuses.append(vm.irqfd_assert(E)["status"]))
    assert who == ([1] if forwarded else [])
    assert statuses == [1 if forwarded else 0]


# ---- item 6: a8bfec293052, switching the RTE to edge clears Remote IRR ----
#
# Until b200dded0a69 (same series, same release) every low-dword write zeroed Remote IRR, so
# the trick below worked by accident in linux-4.14. The bug a8bfec293052 fixes exists only
# once Remote IRR is read-only, hence the flag override for "before".


@pytest.mark.parametrize(
    ("overrides", "when"),
    [({"rte_edge_clears_remote_irr": False}, BEFORE), ({}, AFTER)],
)
def test_item6_mask_edge_level_unmask_emulates_an_ioapic_eoi(overrides: dict, when: str) -> None:
    """The Linux/Xen EOI emulation on an IOAPIC without an EOI register. Every write is a
    read-modify-write, so the guest writes back the Remote IRR bit it read (1)."""
    vm = level_pin_in_service("linux-latest", overrides=overrides)
    vm.patch_rte(0, P, {"masked": True})
    vm.patch_rte(0, P, {"trigger": "edge"})
    assert rirr(vm, P) == (1 if when == BEFORE else 0)
    vm.patch_rte(0, P, {"trigger": "level"})
    vm.patch_rte(0, P, {"masked": False})
    assert rirr(vm, P) == (1 if when == BEFORE else 0)
    # The device asserts again.
    vm.set_line(P, 1)
    assert rirr(vm, P) == 1
    assert has(vm.vcpus[0].irr, V) == (0 if when == BEFORE else 1)  # before: pin dead


def test_item6_trick_worked_in_4_14_because_low_writes_cleared_remote_irr() -> None:
    """linux-4.14 ioapic_write_indirect, low dword: `e->bits |= (u32) val;
    e->fields.remote_irr = 0;` - the masking write already clears Remote IRR."""
    vm = level_pin_in_service("linux-4.14")
    vm.patch_rte(0, P, {"masked": True})  # writes back bit 14 = 1 as read
    assert rirr(vm, P) == 0
    vm.patch_rte(0, P, {"trigger": "edge"})
    vm.patch_rte(0, P, {"trigger": "level"})
    vm.patch_rte(0, P, {"masked": False})
    vm.set_line(P, 1)
    assert has(vm.vcpus[0].irr, V) == 1


# ---- item 7: b200dded0a69, Remote IRR and delivery status are read-only ----
#
# Before it, the low-dword branch of ioapic_write_indirect stored the written value and then
# forced `remote_irr = 0`: Remote IRR was cleared by every low write whatever bit 14 said,
# delivery status (bit 12) was stored as written. High-dword writes never touched either.


@pytest.mark.parametrize("bit14", [0, 1])
@pytest.mark.parametrize(("profile", "when"), [("linux-4.14", BEFORE), ("linux-4.15", AFTER)])
def test_item7_low_dword_write_on_in_service_pin(profile: str, when: str, bit14: int) -> None:
    vm = level_pin_in_service(profile)
    entry = vm.ioapic.redir[P] & ~R.REMOTE_IRR_BIT | (R.REMOTE_IRR_BIT if bit14 else 0)
    vm.write_rte(0, P, entry, halves=("low",))
    assert rirr(vm, P) == (0 if when == BEFORE else 1)
    vm.set_line(P, 1)  # a second interrupt while the first is still in ISR0
    v0 = vm.vcpus[0]
    assert has(v0.isr, V) == 1
    assert has(v0.irr, V) == (1 if when == BEFORE else 0)


@pytest.mark.parametrize(("profile", "when"), [("linux-4.14", BEFORE), ("linux-4.15", AFTER)])
def test_item7_high_dword_write_never_touches_remote_irr(profile: str, when: str) -> None:
    vm = level_pin_in_service(profile)
    vm.write_rte(0, P, vm.ioapic.redir[P] & ~R.REMOTE_IRR_BIT, halves=("high",))
    assert rirr(vm, P) == 1


@pytest.mark.parametrize(("profile", "when"), [("linux-4.14", BEFORE), ("linux-4.15", AFTER)])
def test_item7_read_only_bits_written_on_idle_pin(profile: str, when: str) -> None:
    """Spec §4.7 says writing bit 14 = 1 "could wedge an idle pin" before the fix. KVM's code
    never allowed that (the low-dword write forced remote_irr = 0); only delivery status was
    writable, and KVM never interprets it."""
    vm = make_vm(profile, "kernel", vcpus=1)
    entry = R.encode(vector=V, trigger="level", dest=0, remote_irr=True, delivery_status=True)
    vm.write_rte(0, P, entry)
    vm.enter(0)
    assert rirr(vm, P) == 0
    assert R.decode(vm.ioapic.redir[P])["delivery_status"] is (when == BEFORE)
    assert accepts_during(vm, lambda: vm.set_line(P, 1)) == [0]  # not wedged
    assert has(vm.vcpus[0].irr, V) == 1


# ---- item 8: da3fe7bdfada, an RTE write does not re-fire an in-service level IRQ ----

REWRITES = {
    "same entry": [lambda vm: vm.write_rte(0, P, vm.ioapic.redir[P])],
    "mask, unmask": [
        lambda vm: vm.patch_rte(0, P, {"masked": True}),
        lambda vm: vm.patch_rte(0, P, {"masked": False}),
    ],
    "retarget to the same vCPU": [lambda vm: vm.patch_rte(0, P, {"dest": 0})],
}


@pytest.mark.parametrize("rewrite", sorted(REWRITES))
@pytest.mark.parametrize(("profile", "when"), [("linux-4.14", BEFORE), ("linux-4.15", AFTER)])
def test_item8_rte_rewrite_while_in_service_and_line_high(
    profile: str, when: str, rewrite: str
) -> None:
    vm = level_pin_in_service(profile, line_after=1)
    v0 = vm.vcpus[0]
    assert (has(v0.irr, V), has(v0.isr, V)) == (0, 1)
    for op in REWRITES[rewrite]:
        op(vm)
    assert has(v0.isr, V) == 1
    assert has(v0.irr, V) == (1 if when == BEFORE else 0)  # duplicate delivery before
    assert rirr(vm, P) == 1


# ---- item 9: 0bcc3fb95b97, no directed EOI with the in-kernel IOAPIC ----


@pytest.mark.parametrize(("hide", "when"), [(False, BEFORE), (True, AFTER)])
def test_item9_directed_eoi_hidden_with_in_kernel_ioapic(hide: bool, when: str) -> None:
    vm = make_vm(
        "linux-latest",
        "kernel",
        vcpus=1,
        x2apic_cpuid=True,
        overrides={"hide_directed_eoi_with_kernel_ioapic": hide},
    )
    lvr = vm.vcpu_view(0)["lvr"]
    assert bool(lvr & APIC_LVR_DIRECTED_EOI) is (when == BEFORE)
    assert lvr & 0xFF == 0x14

    written = vm.lapic_write(0, "svr", 0x1FF | SPIV_DIRECTED_EOI)
    assert bool(written["value"] & SPIV_DIRECTED_EOI) is (when == BEFORE)
    assert written["value"] & 0x1FF == 0x1FF

    vm.register_resampler(P)  # to see the ack notifiers run (c806a6ad35bf)
    vm.write_rte(0, P, R.encode(vector=V, trigger="level", dest=0))
    vm.set_line(P, 1)
    assert vm.ack(0)["vector"] == V
    vm.set_line(P, 0)
    result = vm.eoi(0)
    assert result["forwarded"] is True
    assert vm.resamplers[P] == 1  # notifiers run under directed EOI too
    assert rirr(vm, P) == (1 if when == BEFORE else 0)  # T10 skips with SPIV bit 12
    vm.set_line(P, 1)
    assert has(vm.vcpus[0].irr, V) == (0 if when == BEFORE else 1)  # before: the pin hangs


# ---- item 12: fef8f2b90edb, resample on unmask instead of re-delivering ----


@pytest.mark.parametrize(("profile", "when"), [("linux-6.2", BEFORE), ("linux-latest", AFTER)])
def test_item12_oneshot_unmask_resamples(profile: str, when: str) -> None:
    vm = make_vm(profile, "kernel", vcpus=1)
    vm.write_rte(0, P, R.encode(vector=V, trigger="level", dest=0))
    vm.register_resampler(P)
    vm.enter(0)

    assert accepts_during(vm, lambda: vm.irqfd_assert(P)) == [0]
    assert vm.ack(0)["vector"] == V
    vm.patch_rte(0, P, {"masked": True})  # IRQF_ONESHOT: mask before the EOI
    vm.eoi(0)  # ack notifier: resampler deasserts its source and signals the resamplefd
    assert vm.resamplers[P] == 1
    assert vm.ioapic.irr >> P & 1 == 0
    assert rirr(vm, P) == 0

    assert accepts_during(vm, lambda: vm.irqfd_assert(P)) == []  # masked: latched in irr
    assert vm.ioapic.irr >> P & 1 == 1

    # The threaded handler acked the device and unmasks.
    delivered = accepts_during(vm, lambda: vm.patch_rte(0, P, {"masked": False}))
    if when == BEFORE:
        assert delivered == [0]  # spurious second interrupt
        assert has(vm.vcpus[0].irr, V) == 1
        assert rirr(vm, P) == 1
        assert vm.resamplers[P] == 1
    else:
        assert delivered == []
        assert has(vm.vcpus[0].irr, V) == 0
        assert vm.ioapic.irr >> P & 1 == 0
        assert rirr(vm, P) == 0
        assert vm.resamplers[P] == 2


# ---- item 14: suppress EOI broadcast in split mode ----


@pytest.mark.parametrize(("suppress", "when"), [(False, BEFORE), (True, AFTER)])
def test_item14_split_directed_eoi(suppress: bool, when: str) -> None:
    vm = make_vm(
        "linux-latest", "split", vcpus=1, overrides={"split_suppress_eoi_broadcast": suppress}
    )
    assert vm.vcpu_view(0)["lvr"] & APIC_LVR_DIRECTED_EOI  # advertised in split mode
    assert vm.lapic_write(0, "svr", 0x1FF | SPIV_DIRECTED_EOI)["value"] & SPIV_DIRECTED_EOI
    vm.write_rte(0, P, R.encode(vector=V, trigger="level", dest=0))
    vm.enter(0)
    vm.set_line(P, 1)
    assert vm.ack(0)["vector"] == V

    # The guest EOIs the LAPIC early, while the device still asserts the line.
    result = vm.eoi(0, run_exits=True)
    v0 = vm.vcpus[0]
    if when == BEFORE:
        assert exit_vectors(result) == [V]  # quirk: KVM_EXIT_IOAPIC_EOI anyway
        assert rirr(vm, P) == 1  # ... cleared by the broadcast and set by re-delivery
        assert has(v0.irr, V) == 1  # the still-asserted line was re-delivered
    else:
        assert exit_vectors(result) == []
        assert result["forwarded"] is False
        assert rirr(vm, P) == 1
        assert has(v0.irr, V) == 0

    # The guest handles the device, then EOIs the IOAPIC through QEMU's EOI register.
    vm.set_line(P, 0)
    if when == BEFORE:
        assert vm.ack(0)["vector"] == V  # the re-delivered copy
        assert exit_vectors(vm.eoi(0, run_exits=True)) == [V]  # the quirk again
        assert rirr(vm, P) == 0
    assert vm.ioapic.version == 0x20
    vm.mmio(0, "write", 0x40, 4, V)  # harmless second broadcast in the quirked case
    assert rirr(vm, P) == 0
    assert has(v0.irr, V) == 0
    assert v0.isr == 0


def test_item14_flag_is_split_only() -> None:
    with pytest.raises(EngineError):
        make_vm("linux-latest", "kernel", overrides={"split_suppress_eoi_broadcast": True})


def test_item14_lvr_needs_x2apic_in_cpuid_even_when_enabled() -> None:
    """6517dfbcc918 kvm_apic_set_version: LVR bit 24 is set only if the guest CPUID has x2APIC
    *and* the VM advertises suppress-EOI-broadcast (ENABLED -> true)."""
    vm = make_vm(
        "linux-latest",
        "split",
        vcpus=1,
        x2apic_cpuid=False,
        overrides={"split_suppress_eoi_broadcast": True},
    )
    assert vm.vcpu_view(0)["lvr"] & APIC_LVR_DIRECTED_EOI == 0
    vm2 = make_vm("linux-latest", "split", vcpus=1, x2apic_cpuid=False)
    assert vm2.vcpu_view(0)["lvr"] & APIC_LVR_DIRECTED_EOI == 0
