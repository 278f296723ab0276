"""Spec §5: the in-kernel IOAPIC (KVM) and the userspace IOAPIC (QEMU, split irqchip) fed the
same input. Every test runs both modes and asserts each mode's own answer."""

from __future__ import annotations

import pytest

from app.engine import rte as R
from app.engine.vm import Vm
from tests.engine.conftest import (
    P,
    V,
    accepts_during,
    exit_vectors,
    has,
    make_vm,
    rirr,
)

KERNEL, SPLIT = "kernel", "split"
BOTH = pytest.mark.parametrize("irqchip", [KERNEL, SPLIT])
IOREGSEL, IOWIN, IOEOI = 0x00, 0x10, 0x40


def read_indirect(vm: Vm, index: int, size: int = 4) -> int:
    vm.mmio(0, "write", IOREGSEL, 4, index)
    return vm.mmio(0, "read", IOWIN, size)["value"]


def programmed(irqchip: str, entry: int, vcpus: int = 2, **config: object) -> Vm:
    vm = make_vm("linux-latest", irqchip, vcpus=vcpus, **config)
    vm.write_rte(0, P, entry)
    for v in range(vcpus):
        vm.enter(v)
    return vm


# ---- when Remote IRR is set ----


def no_target_physical(vm: Vm) -> None:
    """Physical destination 5 on a 2-vCPU VM: KVM's fast path resolves it to nobody, ret 0."""
    vm.patch_rte(0, P, {"dest": 5})


def no_target_slow_path(vm: Vm) -> None:
    """Logical destination with the logical map disabled (flat and cluster mixed): the slow
    path finds no match, ret -1."""
    vm.lapic_write(0, "ldr", 0x01 << 24)
    vm.lapic_write(1, "dfr", 0x0FFFFFFF)
    vm.lapic_write(1, "ldr", 0x11 << 24)
    vm.patch_rte(0, P, {"dest_mode": "logical", "dest": 0x80})


def target_refuses(vm: Vm) -> None:
    """The only target has its APIC software-disabled: it refuses, ret 0."""
    vm.lapic_write(0, "svr", 0xFF)


@pytest.mark.parametrize(
    ("setup", "irqchip", "want_rirr"),
    [
        (no_target_physical, KERNEL, 0),
        (no_target_slow_path, KERNEL, 1),
        (target_refuses, KERNEL, 0),
        (no_target_physical, SPLIT, 1),
        (no_target_slow_path, SPLIT, 1),
        (target_refuses, SPLIT, 1),
    ],
)
def test_remote_irr_when_nobody_accepts(setup, irqchip: str, want_rirr: int) -> None:
    vm = programmed(irqchip, R.encode(vector=V, trigger="level", dest=0))
    setup(vm)
    for v in range(2):
        vm.enter(v)
    assert accepts_during(vm, lambda: vm.set_line(P, 1)) == []
    assert rirr(vm, P) == want_rirr


# ---- edge inputs ----


@BOTH
def test_edge_level_1_twice(irqchip: str) -> None:
    """KVM: 1 -> 1 on the latched irr is coalesced; QEMU: every level-1 call is an edge."""
    vm = programmed(irqchip, R.encode(vector=V, trigger="edge", dest=0))
    first = accepts_during(vm, lambda: vm.set_line(P, 1))
    second = accepts_during(vm, lambda: vm.set_line(P, 1))
    assert first == [0]
    assert second == ([] if irqchip == KERNEL else [0])
    vm.set_line(P, 0)
    assert accepts_during(vm, lambda: vm.set_line(P, 1)) == [0]


@BOTH
def test_masked_edge(irqchip: str) -> None:
    """KVM latches a masked edge in irr (not delivered, not even at unmask, and further 1s
    are coalesced until a 0); QEMU drops it entirely."""
    vm = programmed(irqchip, R.encode(vector=V, trigger="edge", dest=0, masked=True))
    assert accepts_during(vm, lambda: vm.set_line(P, 1)) == []
    assert vm.pin_view(P)["irr"] is (irqchip == KERNEL)
    assert accepts_during(vm, lambda: vm.patch_rte(0, P, {"masked": False})) == []
    again = accepts_during(vm, lambda: vm.set_line(P, 1))
    assert again == ([] if irqchip == KERNEL else [0])
    vm.set_line(P, 0)
    assert vm.pin_view(P)["irr"] is False
    assert accepts_during(vm, lambda: vm.set_line(P, 1)) == [0]


# ---- EOI matching ----


@BOTH
def test_eoi_matching_uses_tmr_in_kvm_and_rte_trigger_in_qemu(irqchip: str) -> None:
    """Level pin P (vector V) delivered to vCPU0; then an edge MSI with the same vector reaches
    vCPU0 and clears TMR0[V]. The EOI of V: KVM takes the trigger from the EOIing vCPU's TMR
    (edge -> Remote IRR stays set); QEMU matches pins whose RTE is level (-> cleared)."""
    vm = programmed(irqchip, R.encode(vector=V, trigger="level", dest=0))
    vm.set_line(P, 1)
    assert has(vm.vcpus[0].tmr, V) == 1
    vm.signal_msi(0xFEE00000, 0, V)  # edge, fixed, dest 0
    assert has(vm.vcpus[0].tmr, V) == 0
    assert vm.ack(0)["vector"] == V
    vm.set_line(P, 0)
    result = vm.eoi(0, run_exits=True)
    assert result["forwarded"] is True
    if irqchip == KERNEL:
        assert rirr(vm, P) == 1
    else:
        assert exit_vectors(result) == [V]
        assert rirr(vm, P) == 0


@BOTH
def test_eoi_notifies_resamplers_of_edge_pins_only_in_kvm(irqchip: str) -> None:
    """KVM runs the ack notifiers of every pin with the vector, edge included; QEMU kicks
    resamplefds only for level pins (and does not even intercept an edge route's EOI)."""
    vm = programmed(irqchip, R.encode(vector=V, trigger="edge", dest=0), vcpus=1)
    vm.register_resampler(P)
    vm.enter(0)
    vm.set_line(P, 1)
    assert vm.ack(0)["vector"] == V
    vm.eoi(0, run_exits=True)
    assert vm.resamplers[P] == (1 if irqchip == KERNEL else 0)


# ---- register window ----


@BOTH
def test_out_of_range_index_reads(irqchip: str) -> None:
    vm = programmed(irqchip, R.encode(vector=V, trigger="level", dest=0))
    for index in (0x10 + 2 * 24, 0x10 + 2 * 24 + 1, 0xFF, 0x03, 0x0F):
        assert read_indirect(vm, index) == (0xFFFFFFFF if irqchip == KERNEL else 0), hex(index)


@BOTH
def test_iowin_access_sizes(irqchip: str) -> None:
    entry = R.encode(vector=0x5A, trigger="level", dest=3)
    vm = programmed(irqchip, entry)
    low = entry & 0xFFFFFFFF
    index = 0x10 + 2 * P
    want = {
        KERNEL: {1: low & 0xFF, 2: low & 0xFFFF, 4: low, 8: low},
        SPLIT: {1: 0, 2: 0, 4: low, 8: low},  # 8 bytes: two 4-byte accesses, 0x14 reads 0
    }[irqchip]
    for size, value in want.items():
        assert read_indirect(vm, index, size) == value, size
    # Sub-dword writes: KVM zero-extends into a full register write, QEMU ignores them.
    vm.mmio(0, "write", IOREGSEL, 4, index)
    vm.mmio(0, "write", IOWIN, 1, 0x77)
    after = vm.ioapic.redir[P] & 0xFFFFFFFF
    if irqchip == KERNEL:
        assert after == 0x77  # vector 0x77, edge, unmasked: the rest of the dword is gone
    else:
        assert after == low
    vm.mmio(0, "write", IOWIN, 2, 0x0834)  # vector 0x34, logical
    assert vm.ioapic.redir[P] & 0xFFFFFFFF == (0x0834 if irqchip == KERNEL else low)


@pytest.mark.parametrize(
    ("irqchip", "version", "want"),
    [(KERNEL, None, 0x00170011), (SPLIT, None, 0x00170020), (SPLIT, 0x11, 0x00170011)],
)
def test_version_register(irqchip: str, version: int | None, want: int) -> None:
    vm = make_vm("linux-latest", irqchip, vcpus=1, ioapic_version=version)
    assert read_indirect(vm, 0x01) == want
    vm.mmio(0, "write", IOWIN, 4, ~want & 0xFFFFFFFF)  # read-only
    assert read_indirect(vm, 0x01) == want


@pytest.mark.parametrize(
    ("irqchip", "version", "clears"),
    [(KERNEL, None, False), (SPLIT, 0x20, True), (SPLIT, 0x11, False)],
)
def test_eoi_register_at_0x40_only_in_qemu_version_0x20(
    irqchip: str, version: int | None, clears: bool
) -> None:
    vm = make_vm("linux-latest", irqchip, vcpus=1, ioapic_version=version)
    vm.write_rte(0, P, R.encode(vector=V, trigger="level", dest=0))
    vm.set_line(P, 1)
    vm.set_line(P, 0)
    assert rirr(vm, P) == 1
    vm.mmio(0, "write", IOEOI, 2, V)  # wrong size: ignored everywhere
    assert rirr(vm, P) == 1
    vm.mmio(0, "write", IOEOI, 4, V)
    assert rirr(vm, P) == (0 if clears else 1)


def test_qemu_eoi_register_compares_the_whole_written_value() -> None:
    """ioapic_mem_write passes the 32-bit value to ioapic_eoi_broadcast(int vector), which
    compares it with the RTE's 8-bit vector: 0x100 | V matches no pin."""
    vm = make_vm("linux-latest", SPLIT, vcpus=1)
    vm.write_rte(0, P, R.encode(vector=V, trigger="level", dest=0))
    vm.set_line(P, 1)
    vm.set_line(P, 0)
    vm.mmio(0, "write", IOEOI, 4, 0x100 | V)
    assert rirr(vm, P) == 1
    vm.mmio(0, "write", IOEOI, 4, V)
    assert rirr(vm, P) == 0


@BOTH
def test_pin_0_is_remapped_to_pin_2_in_qemu(irqchip: str) -> None:
    vm = make_vm("linux-latest", irqchip, vcpus=1)
    vm.write_rte(0, 0, R.encode(vector=0x30, trigger="edge", dest=0))
    vm.write_rte(0, 2, R.encode(vector=0x32, trigger="edge", dest=0))
    vm.enter(0)
    vm.set_line(0, 1)
    assert has(vm.vcpus[0].irr, 0x30) == (1 if irqchip == KERNEL else 0)
    assert has(vm.vcpus[0].irr, 0x32) == (0 if irqchip == KERNEL else 1)


# ---- storm throttle ----


def storm(vm: Vm, eois: int) -> None:
    """The guest takes and EOIs the level interrupt `eois` times with the line held high;
    each EOI re-delivers at once."""
    for i in range(eois):
        assert vm.ack(0)["vector"] == V, i
        vm.eoi(0, run_exits=True)
        assert has(vm.vcpus[0].irr, V) == 1, i


@BOTH
def test_storm_throttle_after_10000_successive_redeliveries(irqchip: str) -> None:
    vm = programmed(irqchip, R.encode(vector=V, trigger="level", dest=0), vcpus=1, event_log=False)
    vm.set_line(P, 1)
    storm(vm, 9999)
    assert vm.ack(0)["vector"] == V
    vm.eoi(0, run_exits=True)  # the 10000th successive re-delivery is deferred
    assert has(vm.vcpus[0].irr, V) == 0
    assert rirr(vm, P) == 0
    assert vm.advance_time(9999)["ran_delayed_injection"] is False
    assert has(vm.vcpus[0].irr, V) == 0
    assert vm.advance_time(1)["ran_delayed_injection"] is True  # HZ/100 = 10 ms later
    assert has(vm.vcpus[0].irr, V) == 1
    assert rirr(vm, P) == 1
    storm(vm, 100)  # the counter restarted


@BOTH
def test_storm_counter_reset_by_rte_write_only_in_qemu(irqchip: str) -> None:
    vm = programmed(irqchip, R.encode(vector=V, trigger="level", dest=0), vcpus=1, event_log=False)
    vm.set_line(P, 1)
    storm(vm, 9999)
    vm.patch_rte(0, P, {"dest": 0})  # rewrite the high dword, same value
    assert vm.ack(0)["vector"] == V
    vm.eoi(0, run_exits=True)
    redelivered = has(vm.vcpus[0].irr, V)
    assert redelivered == (0 if irqchip == KERNEL else 1)


@BOTH
def test_storm_counter_reset_when_line_low_at_eoi(irqchip: str) -> None:
    vm = programmed(irqchip, R.encode(vector=V, trigger="level", dest=0), vcpus=1, event_log=False)
    vm.set_line(P, 1)
    storm(vm, 9999)
    assert vm.ack(0)["vector"] == V
    vm.set_line(P, 0)
    vm.eoi(0, run_exits=True)
    assert vm.pin_view(P)["eoi_count"] == 0
    vm.set_line(P, 1)
    storm(vm, 100)
