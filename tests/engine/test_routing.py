"""GSI routing (§1.6, T13.4, T14) and MSI decoding."""

from __future__ import annotations

import pytest

from app.engine.errors import EngineError, ErrorKind
from app.engine.msi import LapicIrq, irq_to_msi, msi_to_irq
from tests.engine.conftest import accepts_during, has, make_vm, reqs

MSI_BASE = 0xFEE00000
LEVEL = 1 << 15


def msi_route(gsi: int, dest: int, vector: int, level: bool = False) -> tuple:
    return (gsi, "msi", MSI_BASE | dest << 12, 0, vector | (LEVEL if level else 0))


@pytest.mark.parametrize("irqchip", ["kernel", "split"])
def test_irqchip_routes_only_with_the_in_kernel_irqchip(irqchip: str) -> None:
    vm = make_vm("linux-latest", irqchip, vcpus=1)
    entries = [(3, "irqchip", "ioapic", 3)]
    if irqchip == "split":
        with pytest.raises(EngineError) as err:
            vm.set_routes(entries)
        assert err.value.kind == ErrorKind.INVALID
    else:
        assert vm.set_routes(entries)["entries"] == [
            {"gsi": 3, "irqchip": {"chip": "ioapic", "pin": 3}, "msi": None, "decoded": None}
        ]


@pytest.mark.parametrize(
    "entries",
    [
        [(4, "irqchip", "ioapic", 4), (4, "irqchip", "ioapic", 5)],  # same chip twice
        [(4, "irqchip", "ioapic", 4), (4, "msi", MSI_BASE, 0, 0x30)],  # MSI not alone
        [(4, "msi", MSI_BASE, 0, 0x30), (4, "msi", MSI_BASE, 0, 0x31)],
        [(4, "irqchip", "ioapic", 24)],  # pin out of range
        [(4, "irqchip", "pic-master", 8)],
        [(4096, "msi", MSI_BASE, 0, 0x30)],  # gsi out of range
    ],
)
def test_invalid_tables_are_rejected_and_the_old_table_stays(entries: list[tuple]) -> None:
    vm = make_vm("linux-latest", "kernel", vcpus=1)
    before = vm.routes_view()
    with pytest.raises(EngineError):
        vm.set_routes(entries)
    assert vm.routes_view() == before


def test_pic_and_ioapic_on_one_gsi_is_valid() -> None:
    vm = make_vm("linux-latest", "kernel", vcpus=1)
    vm.set_routes([(4, "irqchip", "pic-master", 4), (4, "irqchip", "ioapic", 4)])
    assert len(vm.routes_view()["entries"]) == 2


@pytest.mark.parametrize("irqchip", ["kernel", "split"])
def test_set_routes_replaces_the_whole_table(irqchip: str) -> None:
    vm = make_vm("linux-latest", irqchip, vcpus=1)
    vm.set_routes([msi_route(3, 0, 0x43)])
    vm.set_routes([msi_route(7, 0, 0x47)])
    assert [e["gsi"] for e in vm.routes_view()["entries"]] == [7]
    miss = {}
    assert accepts_during(vm, lambda: miss.update(vm.irq_line(3, 1))) == []
    assert miss["status"] == -1  # no route for GSI 3 any more
    assert accepts_during(vm, lambda: vm.irq_line(7, 1)) == [0]
    assert has(vm.vcpus[0].irr, 0x47) == 1
    assert has(vm.vcpus[0].irr, 0x43) == 0


def test_split_routing_update_rescans_every_vcpu() -> None:
    vm = make_vm("linux-latest", "split", vcpus=3)
    for n in range(3):
        vm.enter(n)
    vm.set_routes([msi_route(2, 1, 0x52, level=True)])
    assert [reqs(vm, n) for n in range(3)] == ["SCAN_IOAPIC"] * 3
    for n in range(3):
        vm.enter(n)
    assert [has(v.handled, 0x52) for v in vm.vcpus] == [0, 1, 0]


def test_kernel_routing_update_does_not_rescan() -> None:
    vm = make_vm("linux-latest", "kernel", vcpus=2)
    for n in range(2):
        vm.enter(n)
    vm.set_routes([msi_route(2, 1, 0x52, level=True)])
    assert [reqs(vm, n) for n in range(2)] == ["", ""]


# ---- MSI decoding ----

ROUND_TRIP = [
    LapicIrq(0x30, 0, False, False, 0),
    LapicIrq(0xEF, 1, True, True, 0xFF),
    LapicIrq(0x41, 0, True, False, 0x0F, True),
    LapicIrq(0x22, 4, False, False, 3),
]
ROUND_TRIP_X2 = [
    LapicIrq(0x30, 0, False, True, 0x12345),
    LapicIrq(0x31, 1, True, False, 0xFFFFFFFF),
    LapicIrq(0x32, 0, False, False, 0x100),
]


@pytest.mark.parametrize("irq", ROUND_TRIP + ROUND_TRIP_X2)
def test_msi_round_trip_x2apic_format(irq: LapicIrq) -> None:
    lo, hi, data = irq_to_msi(irq, True)
    assert hi & 0xFF == 0
    assert msi_to_irq(lo, hi, data, True) == irq


@pytest.mark.parametrize("irq", ROUND_TRIP)
def test_msi_round_trip_8bit(irq: LapicIrq) -> None:
    lo, hi, data = irq_to_msi(irq, False)
    assert hi == 0
    assert lo & 0xFFF00000 == MSI_BASE
    assert msi_to_irq(lo, hi, data, False) == irq


@pytest.mark.parametrize("irq", ROUND_TRIP_X2)
def test_msi_encode_needs_x2apic_format_above_255(irq: LapicIrq) -> None:
    with pytest.raises(EngineError):
        irq_to_msi(irq, False)


def test_msi_decode_fields() -> None:
    irq = msi_to_irq(0xFEE4500C, 0x00012300, 0xC1A9, True)
    assert irq == LapicIrq(
        vector=0xA9, delivery_mode=1, logical=True, level_trig=True, dest=0x12345, redir_hint=True
    )
    # Without 32-bit ids address_hi is ignored.
    assert msi_to_irq(0xFEE4500C, 0x00012300, 0xC1A9, False).dest == 0x45
    # Data bit 14 (assert) is ignored: level is always 1.
    assert msi_to_irq(MSI_BASE, 0, 0x8040, False) == msi_to_irq(MSI_BASE, 0, 0xC040, False)


def test_level_msi_without_assert_bit_is_still_delivered() -> None:
    vm = make_vm("linux-latest", "kernel", vcpus=1)
    assert accepts_during(vm, lambda: vm.signal_msi(MSI_BASE, 0, LEVEL | 0x40)) == [0]
    assert has(vm.vcpus[0].tmr, 0x40) == 1


def test_invalid_address_hi_low_byte_with_x2apic_format() -> None:
    vm = make_vm("linux-latest", "split", vcpus=1, x2apic_format=True)
    with pytest.raises(EngineError):
        vm.signal_msi(MSI_BASE, 0x01, 0x30)
    with pytest.raises(EngineError):
        vm.set_routes([(3, "msi", MSI_BASE, 0x100 | 0x80, 0x30)])
    vm.set_routes([(3, "msi", MSI_BASE, 0x100, 0x30)])  # bits 7:0 clear: fine
    plain = make_vm("linux-latest", "split", vcpus=1)
    assert accepts_during(plain, lambda: plain.signal_msi(MSI_BASE, 0x01, 0x30)) == [0]


# ---- split: which routes count as IOAPIC pins ----


@pytest.mark.parametrize(
    ("reserved", "want"),
    [(24, {0x52: 1, 0x55: 1}), (4, {0x52: 1, 0x55: 0}), (0, {0x52: 0, 0x55: 0})],
)
def test_nr_reserved_ioapic_pins_limits_the_split_scan(reserved: int, want: dict[int, int]) -> None:
    vm = make_vm("linux-latest", "split", vcpus=1, nr_reserved_ioapic_pins=reserved)
    vm.set_routes(
        [
            msi_route(2, 0, 0x52, level=True),
            msi_route(5, 0, 0x55, level=True),
            msi_route(1, 0, 0x51),
        ]
    )  # edge routes never count
    vm.enter(0)
    assert {vec: has(vm.vcpus[0].handled, vec) for vec in want} == want
    assert has(vm.vcpus[0].handled, 0x51) == 0


def test_split_scan_limit_is_also_bounded_by_the_table_size() -> None:
    """min(nr_rt_entries, nr_reserved_ioapic_pins): a table whose highest GSI is 2."""
    vm = make_vm("linux-latest", "split", vcpus=1)
    vm.set_routes([msi_route(2, 0, 0x52, level=True)])
    vm.enter(0)
    assert has(vm.vcpus[0].handled, 0x52) == 1


def test_nr_reserved_ioapic_pins_limit_and_kernel_mode() -> None:
    with pytest.raises(EngineError):
        make_vm("linux-latest", "split", nr_reserved_ioapic_pins=4097)
    make_vm("linux-latest", "split", nr_reserved_ioapic_pins=4096)
    with pytest.raises(EngineError):
        make_vm("linux-latest", "kernel", nr_reserved_ioapic_pins=4)


@pytest.mark.parametrize("irqchip", ["kernel", "split"])
def test_msi_level_0_does_nothing(irqchip: str) -> None:
    vm = make_vm("linux-latest", irqchip, vcpus=1)
    vm.set_routes([msi_route(10, 0, 0x4A, level=True)])
    vm.enter(0)
    result = {}
    assert accepts_during(vm, lambda: result.update(vm.irq_line(10, 0))) == []
    assert result["status"] == -1
    assert vm.vcpus[0].irr == 0
    assert accepts_during(vm, lambda: vm.irq_line(10, 1)) == [0]
    assert accepts_during(vm, lambda: vm.irq_line(10, 1)) == [0]  # pulse-only: again
