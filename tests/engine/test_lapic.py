"""Local APIC behaviour (§1.3, T4, T5, T6, T7, T8; research notes Q4, Q5, Q7)."""

from __future__ import annotations

import pytest

from app.engine.errors import EngineError
from app.engine.vm import Vm
from tests.engine.conftest import accepts_during, has, make_vm

MSI_BASE = 0xFEE00000
DM_LOWEST = 1 << 8


def msi(
    vm: Vm,
    dest: int,
    vector: int,
    *,
    logical: bool = False,
    lowest: bool = False,
    hint: bool = False,
    level: bool = False,
) -> None:
    addr_lo = MSI_BASE | (dest & 0xFF) << 12 | (logical << 2) | (hint << 3)
    addr_hi = dest & 0xFFFFFF00 if vm.config.x2apic_format else 0
    data = vector | (DM_LOWEST if lowest else 0) | (1 << 15 | 1 << 14 if level else 0)
    vm.signal_msi(addr_lo, addr_hi, data)


def targets(vm: Vm, dest: int, vector: int, **kw: bool) -> list[int]:
    """vCPUs whose IRR (or PIR) gains `vector` when an MSI is sent to `dest`."""
    before = [(v.irr | v.pir) >> vector & 1 for v in vm.vcpus]
    msi(vm, dest, vector, **kw)
    return [v.idx for v in vm.vcpus if (v.irr | v.pir) >> vector & 1 and not before[v.idx]]


def deliver_and_ack(vm: Vm, n: int, vector: int) -> None:
    msi(vm, vm.vcpu_view(n)["apic_id"], vector)
    assert vm.ack(n)["vector"] == vector


# ---- PPR, acknowledge, TPR ----


@pytest.mark.parametrize(
    ("tpr", "isr", "ppr"),
    [
        (0x00, None, 0x00),
        (0x05, None, 0x05),  # full TPR byte when no ISR
        (0x00, 0x41, 0x40),  # ISR class
        (0x30, 0x41, 0x40),
        (0x3F, 0x41, 0x40),
        (0x45, 0x41, 0x45),  # equal classes -> TPR (all 8 bits)
        (0x4F, 0x41, 0x4F),
        (0x55, 0x41, 0x55),
        (0x20, 0xFE, 0xF0),
    ],
)
def test_ppr_rule(tpr: int, isr: int | None, ppr: int) -> None:
    vm = make_vm(vcpus=1)
    if isr is not None:
        deliver_and_ack(vm, 0, isr)
    vm.lapic_write(0, "tpr", tpr)
    assert vm.vcpu_view(0)["ppr"] == ppr


def test_ack_takes_highest_irr_above_ppr() -> None:
    vm = make_vm(vcpus=1)
    for vec in (0x31, 0x52, 0x47):
        msi(vm, 0, vec)
    assert vm.ack(0)["vector"] == 0x52
    assert vm.ack(0)["vector"] is None  # 0x47: class 0x40 <= PPR 0x50
    assert vm.eoi(0)["vector"] == 0x52
    assert vm.ack(0)["vector"] == 0x47
    assert vm.ack(0)["vector"] is None  # 0x31 below the in-service 0x47
    vm.eoi(0)
    assert vm.ack(0)["vector"] == 0x31
    v = vm.vcpus[0]
    assert (v.irr, v.isr) == (0, 1 << 0x31)


@pytest.mark.parametrize(
    ("tpr", "vector", "taken"),
    [
        (0x50, 0x52, False),
        (0x50, 0x5F, False),
        (0x50, 0x61, True),
        (0x05, 0x10, True),
        (0x10, 0x1F, False),
        (0x0F, 0x10, True),
        (0xFF, 0xFF, False),
    ],
)
def test_tpr_blocks(tpr: int, vector: int, taken: bool) -> None:
    vm = make_vm(vcpus=1)
    vm.lapic_write(0, "tpr", tpr)
    msi(vm, 0, vector)
    assert vm.ack(0)["vector"] == (vector if taken else None)
    vm.lapic_write(0, "tpr", 0)  # lowering TPR makes it deliverable
    if not taken:
        assert vm.ack(0)["vector"] == vector


@pytest.mark.parametrize("vector", [0, 5, 15])
def test_vectors_0_to_15_accepted_but_never_acknowledged(vector: int) -> None:
    vm = make_vm(vcpus=1)
    assert accepts_during(vm, lambda: msi(vm, 0, vector)) == [0]
    assert has(vm.vcpus[0].irr, vector) == 1
    assert vm.ack(0)["vector"] is None
    msi(vm, 0, 0x20)
    assert vm.ack(0)["vector"] == 0x20  # a stuck low vector does not block higher ones
    vm.eoi(0)
    assert vm.ack(0)["vector"] is None
    assert has(vm.vcpus[0].irr, vector) == 1
    assert vm.vcpus[0].isr == 0


def test_level_pin_with_vector_below_16_is_dead() -> None:
    from app.engine import rte as R

    vm = make_vm(vcpus=1)
    vm.write_rte(0, 3, R.encode(vector=0x0E, trigger="level", dest=0))
    vm.set_line(3, 1)
    assert R.remote_irr(vm.ioapic.redir[3])  # accepted (ret 1) -> Remote IRR set
    assert vm.ack(0)["vector"] is None  # ... and never EOI'd


def test_eoi_with_empty_isr_does_nothing() -> None:
    vm = make_vm(vcpus=1)
    vm.enter(0)
    before = vm.vcpus[0].key()
    result = vm.eoi(0)
    assert result["vector"] is None
    assert result["pending_requests"] == []  # no KVM_REQ_EVENT
    assert vm.vcpus[0].key() == before
    # Contrast: a real EOI raises KVM_REQ_EVENT.
    deliver_and_ack(vm, 0, 0x33)
    assert vm.eoi(0)["pending_requests"] == ["EVENT"]


def test_eoi_retires_highest_isr_first() -> None:
    vm = make_vm(vcpus=1)
    deliver_and_ack(vm, 0, 0x31)
    deliver_and_ack(vm, 0, 0x62)  # nested: higher class
    assert vm.eoi(0)["vector"] == 0x62
    assert vm.eoi(0)["vector"] == 0x31
    assert vm.eoi(0)["vector"] is None


def test_tmr_follows_trigger_at_acceptance() -> None:
    vm = make_vm(vcpus=1)
    msi(vm, 0, 0x79, level=True)
    assert has(vm.vcpus[0].tmr, 0x79) == 1
    vm.ack(0)
    vm.eoi(0)
    assert has(vm.vcpus[0].tmr, 0x79) == 1  # not cleared by EOI
    msi(vm, 0, 0x79)
    assert has(vm.vcpus[0].tmr, 0x79) == 0  # edge acceptance clears it


def test_software_disabled_apic_refuses() -> None:
    vm = make_vm(vcpus=1)
    vm.lapic_write(0, "svr", 0xFF)
    assert accepts_during(vm, lambda: msi(vm, 0, 0x40)) == []
    assert vm.vcpus[0].irr == 0


# ---- x2APIC mode ----


def test_x2apic_ldr_derived_and_id_read_only() -> None:
    vm = make_vm(vcpus=18, x2apic=True)
    for n in (0, 1, 15, 16, 17):
        view = vm.vcpu_view(n)
        assert view["apic_id"] == n
        assert view["ldr"] == ((n >> 4) << 16) | (1 << (n & 0xF))
    for reg in ("id", "ldr", "dfr"):
        with pytest.raises(EngineError):
            vm.lapic_write(17, reg, 0x05000000)
    assert vm.vcpu_view(17)["apic_id"] == 17
    assert vm.vcpu_view(17)["ldr"] == 0x00010002


def test_switch_to_x2apic_derives_ldr_and_id() -> None:
    vm = make_vm(vcpus=4)
    vm.lapic_write(3, "id", 0x07 << 24)
    vm.lapic_write(3, "ldr", 0x80 << 24)
    assert (vm.vcpu_view(3)["apic_id"], vm.vcpu_view(3)["ldr"]) == (7, 0x80 << 24)
    vm.lapic_write(3, "apic_base", 0xFEE00000 | 1 << 11 | 1 << 10)
    view = vm.vcpu_view(3)
    assert view["x2apic"] is True
    assert view["apic_id"] == 3  # the x2APIC id is the vcpu_id
    assert view["ldr"] == 1 << 3
    assert targets(vm, 3, 0x41) == [3]
    assert targets(vm, 7, 0x42) == []


def test_xapic_id_and_ldr_masks() -> None:
    vm = make_vm(vcpus=2)
    vm.lapic_write(1, "id", 0x12345678)
    vm.lapic_write(1, "ldr", 0xABCDEF01)
    vm.lapic_write(1, "dfr", 0x0)
    view = vm.vcpu_view(1)
    assert view["apic_id"] == 0x12
    assert view["ldr"] == 0xAB000000
    assert view["dfr"] == 0x0FFFFFFF  # only bits 31:28 writable


# ---- destination matching (T5) ----


def flat(vm: Vm) -> Vm:
    for v in vm.vcpus:
        vm.lapic_write(v.idx, "ldr", (1 << v.idx) << 24)
    return vm


def cluster(vm: Vm) -> Vm:
    ids = [0x11, 0x12, 0x21, 0x22]
    for v in vm.vcpus:
        vm.lapic_write(v.idx, "dfr", 0x0FFFFFFF)
        vm.lapic_write(v.idx, "ldr", ids[v.idx] << 24)
    return vm


def xapic4() -> Vm:
    return make_vm(vcpus=4)


def x2apic20() -> Vm:
    return make_vm(vcpus=20, x2apic=True, x2apic_format=True)


def x2apic20_no_quirk() -> Vm:
    return make_vm(vcpus=20, x2apic=True, x2apic_format=True, broadcast_quirk_disabled=True)


def x2apic10() -> Vm:
    return make_vm(vcpus=10, x2apic=True)


def x2apic10_no_quirk() -> Vm:
    return make_vm(vcpus=10, x2apic=True, x2apic_format=True, broadcast_quirk_disabled=True)


# fmt: off
ALL4, ALL10, ALL20 = [0, 1, 2, 3], list(range(10)), list(range(20))
DEST_CASES = [
    # name,                         VM factory,                dest,       logical, vCPUs
    ("physical",                    xapic4,                    2,          False, [2]),
    ("physical, nobody",            xapic4,                    7,          False, []),
    ("physical broadcast",          xapic4,                    0xFF,       False, ALL4),
    ("flat",                        lambda: flat(xapic4()),    0x0A,       True,  [1, 3]),
    ("flat, no LDR",                xapic4,                    0x0F,       True,  []),
    ("flat broadcast",              lambda: flat(xapic4()),    0xFF,       True,  ALL4),
    ("cluster 1",                   lambda: cluster(xapic4()), 0x13,       True,  [0, 1]),
    ("cluster 2",                   lambda: cluster(xapic4()), 0x22,       True,  [3]),
    ("cluster 3",                   lambda: cluster(xapic4()), 0x31,       True,  []),
    ("cluster broadcast",           lambda: cluster(xapic4()), 0xFF,       True,  ALL4),
    ("x2apic logical cluster 0",    x2apic20,                  0x0005,     True,  [0, 2]),
    ("x2apic logical cluster 1",    x2apic20,                  0x10003,    True,  [16, 17]),
    ("x2apic logical, absent",      x2apic20,                  0x10010,    True,  []),
    ("x2apic physical 17",          x2apic20,                  17,         False, [17]),
    # kvm_apic_is_broadcast_dest: with the quirk on, only 0xff is a broadcast for a message
    # without a source APIC, so 0xffffffff takes the fast path, is above max_apic_id and
    # reaches nobody.
    ("x2apic 0xffffffff, quirk",    x2apic20,                  0xFFFFFFFF, False, []),
    ("x2apic 0xffffffff, no quirk", x2apic20_no_quirk,         0xFFFFFFFF, False, ALL20),
    ("x2apic 0xff, quirk",          x2apic10,                  0xFF,       False, ALL10),
    ("x2apic 0xff logical, quirk",  x2apic10,                  0xFF,       True,  ALL10),
    ("x2apic 0xff, no quirk",       x2apic10_no_quirk,         0xFF,       False, []),  # id 255
    ("x2apic 0xff logical, no quirk", x2apic10_no_quirk,       0xFF,       True,  ALL10[:8]),
]
# fmt: on


@pytest.mark.parametrize(
    ("name", "factory", "dest", "logical", "want"), DEST_CASES, ids=[c[0] for c in DEST_CASES]
)
def test_destination_matching(
    name: str, factory, dest: int, logical: bool, want: list[int]
) -> None:
    vm = factory()
    assert targets(vm, dest, 0x44, logical=logical) == want


def test_destination_flat_is_logical() -> None:
    vm = flat(make_vm(vcpus=4))
    assert targets(vm, 0x0A, 0x45, logical=True) == [1, 3]
    assert targets(vm, 0x0A, 0x46, logical=False) == []  # physical id 10: nobody


# ---- lowest priority (T6) ----


def test_lowest_priority_vector_hashing() -> None:
    vm = flat(make_vm(vcpus=4))
    for vector in (0x31, 0x32, 0x33, 0x34, 0x45):
        want = [vector % 4]
        assert targets(vm, 0x0F, vector, logical=True, lowest=True) == want, hex(vector)


def test_lowest_priority_hashing_counts_empty_slots_and_drops() -> None:
    """Fast path: n = popcount(mask) including slots without a LAPIC; the chosen empty slot
    drops the interrupt."""
    vm = flat(make_vm(vcpus=4))
    assert targets(vm, 0x3F, 0x31, logical=True, lowest=True) == [1]  # 49 % 6 = 1
    assert targets(vm, 0x3F, 0x34, logical=True, lowest=True) == []  # 52 % 6 = 4: empty


def test_lowest_priority_without_hashing_uses_arbitration_priority() -> None:
    vm = flat(make_vm(vcpus=4, vector_hashing=False))
    got = [
        accepts_during(vm, lambda: msi(vm, 0x0F, 0x31, logical=True, lowest=True)) for _ in range(5)
    ]
    assert got == [[0], [1], [2], [3], [0]]
    assert [v.arb_prio for v in vm.vcpus] == [2, 1, 1, 1]


def test_redirection_hint_with_fixed_mode_does_not_count_as_arbitration_win() -> None:
    """The hint makes the delivery lowest-priority (kvm_lowest_prio_delivery), but
    __apic_accept_irq increments apic_arb_prio only for APIC_DM_LOWEST; with equal arb_prio the
    first candidate wins every time."""
    vm = flat(make_vm(vcpus=4, vector_hashing=False))
    got = [
        accepts_during(vm, lambda: msi(vm, 0x0F, 0x31, logical=True, hint=True)) for _ in range(3)
    ]
    assert got == [[0], [0], [0]]
    assert [v.arb_prio for v in vm.vcpus] == [0, 0, 0, 0]


def test_lowest_priority_physical_broadcast_becomes_fixed() -> None:
    vm = make_vm(vcpus=3)
    assert targets(vm, 0xFF, 0x31, lowest=True) == [0, 1, 2]


def test_lowest_priority_skips_software_disabled_candidates() -> None:
    """Slow path (broadcast logical): only software-enabled matches are candidates."""
    vm = flat(make_vm(vcpus=4, vector_hashing=False))
    vm.lapic_write(0, "svr", 0xFF)
    vm.lapic_write(1, "dfr", 0x0FFFFFFF)  # mixed flat/cluster: map disabled -> slow path
    got = accepts_during(vm, lambda: msi(vm, 0x0D, 0x31, logical=True, lowest=True))
    assert got == [2]  # vCPU0 disabled; vCPU1 (cluster, lid 0x02) does not match 0x0D


def test_delivered_to_lists_each_accepting_vcpu_once() -> None:
    vm = make_vm(vcpus=3)
    assert vm.signal_msi(MSI_BASE | 0xFF << 12, 0, 0x30)["delivered_to"] == [0, 1, 2]
    assert vm.signal_msi(MSI_BASE | 1 << 12, 0, 0x31)["delivered_to"] == [1]
