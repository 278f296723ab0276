"""GSI routing (§1.6): the table KVM_SET_GSI_ROUTING installs, and KVM_IRQ_LINE /
KVM_SIGNAL_MSI through it (kvm_set_irq, kvm_set_msi)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import delivery, ioapic_kvm
from .errors import invalid
from .msi import msi_to_irq
from .rte import NUM_PINS
from .state import RouteEntry

if TYPE_CHECKING:
    from .vm import Vm

KVM_MAX_IRQ_ROUTES = 4096
CHIPS = ("pic-master", "pic-slave", "ioapic")


def default_kernel_routes() -> dict[int, list[RouteEntry]]:
    """kvm_setup_default_irq_routing: GSI 0-15 to a PIC pin and the same IOAPIC pin, 16-23 to
    the IOAPIC only."""
    table: dict[int, list[RouteEntry]] = {}
    for gsi in range(NUM_PINS):
        entries: list[RouteEntry] = []
        if gsi < 16:
            entries.append(("irqchip", "pic-master" if gsi < 8 else "pic-slave", gsi & 7))
        entries.append(("irqchip", "ioapic", gsi))
        table[gsi] = entries
    return table


def qemu_initial_split_routes() -> dict[int, list[RouteEntry]]:
    """QEMU kvm_arch_init_irq_routing in split mode: GSIs 0-23 reserved as empty MSI routes."""
    return {gsi: [("msi", 0, 0, 0)] for gsi in range(NUM_PINS)}


def build_table(
    entries: list[RouteEntry], split: bool, x2apic_format: bool
) -> dict[int, list[RouteEntry]]:
    """kvm_set_irq_routing's validation (setup_routing_entry, kvm_set_routing_entry).
    Entries are (gsi, route) pairs flattened as (gsi, *route)."""
    if len(entries) > KVM_MAX_IRQ_ROUTES:
        raise invalid(
            f"at most {KVM_MAX_IRQ_ROUTES} routing entries (KVM_MAX_IRQ_ROUTES)", "entries"
        )
    table: dict[int, list[RouteEntry]] = {}
    for i, item in enumerate(entries):
        gsi, route = item[0], tuple(item[1:])
        where = f"entries[{i}]"
        if not 0 <= gsi < KVM_MAX_IRQ_ROUTES:
            raise invalid(f"gsi must be below {KVM_MAX_IRQ_ROUTES} (-EINVAL)", f"{where}.gsi")
        if route[0] == "irqchip":
            chip, pin = route[1], route[2]
            if split:
                raise invalid(
                    "irqchip routes are rejected with a split irqchip (-EINVAL)", f"{where}.irqchip"
                )
            if chip not in CHIPS:
                raise invalid(f"irqchip.chip must be one of {CHIPS}", f"{where}.irqchip.chip")
            limit = NUM_PINS if chip == "ioapic" else 8
            if not 0 <= pin < limit:
                raise invalid(
                    f"irqchip.pin must be below {limit} for {chip} (-EINVAL)",
                    f"{where}.irqchip.pin",
                )
        elif route[0] == "msi":
            if x2apic_format and route[2] & 0xFF:
                raise invalid(
                    "address_hi bits 7:0 must be zero with 32-bit x2APIC ids "
                    "(kvm_msi_route_invalid, -EINVAL)",
                    f"{where}.msi.address_hi",
                )
        else:
            raise invalid("route must be irqchip or msi", where)
        existing = table.setdefault(gsi, [])
        for other in existing:
            if other[0] != "irqchip" or route[0] != "irqchip" or other[1] == route[1]:
                raise invalid(
                    f"gsi {gsi} can hold at most one entry per irqchip and an MSI "
                    "entry alone (-EINVAL)",
                    where,
                )
        existing.append(route)
    return table


def route_to_json(route: RouteEntry, x2apic_format: bool) -> dict[str, Any]:
    if route[0] == "irqchip":
        return {"irqchip": {"chip": route[1], "pin": route[2]}, "msi": None, "decoded": None}
    irq = msi_to_irq(route[1], route[2], route[3], x2apic_format)
    return {
        "irqchip": None,
        "msi": {"address_lo": route[1], "address_hi": route[2], "data": route[3]},
        "decoded": {
            "dest": irq.dest,
            "dest_mode": "logical" if irq.logical else "physical",
            "vector": irq.vector,
            "trigger": "level" if irq.level_trig else "edge",
            "delivery_mode": irq.delivery_mode,
            "redirection_hint": irq.redir_hint,
        },
    }


def kvm_set_msi(
    vm: Vm, addr_lo: int, addr_hi: int, data: int, level: bool, cause: int | None
) -> int:
    """kvm_set_msi: MSIs are pulse-only, level 0 does nothing and returns -1."""
    if not level:
        return -1
    irq = msi_to_irq(addr_lo, addr_hi, data, vm.config.x2apic_format)
    seq = vm.log.emit(
        "kvm", "msi", cause, "vector", irq.vector, "dest", irq.dest, "level", irq.level_trig
    )
    return delivery.deliver_to_apic(vm, irq, seq)


def kvm_set_irq(
    vm: Vm, source: int, gsi: int, level: bool, cause: int | None, line_status: bool = False
) -> int:
    """kvm_set_irq: every entry of the GSI; the result sums the non-negative answers. The PIC
    is not modelled, so its entries neither act nor count. `line_status` is true for
    KVM_IRQ_LINE_STATUS (the RTC's EOI tracking depends on it)."""
    ret = -1
    for route in vm.routes.get(gsi, ()):
        if route[0] == "irqchip":
            if route[1] != "ioapic":
                continue
            r = ioapic_kvm.ioapic_set_irq(vm, route[2], source, level, cause, line_status)
        else:
            r = kvm_set_msi(vm, route[1], route[2], route[3], level, cause)
        if r < 0:
            continue
        ret = r + (0 if ret < 0 else ret)
    return ret
