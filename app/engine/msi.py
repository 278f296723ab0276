"""MSI address/data <-> LAPIC interrupt message (x86 msi.h layout, KVM kvm_msi_to_lapic_irq)."""

from __future__ import annotations

from functools import lru_cache
from typing import Final

from .errors import invalid

MSI_ADDR_BASE: Final = 0xFEE00000
ADDR_DEST_MODE_LOGICAL: Final = 1 << 2
ADDR_REDIR_HINT: Final = 1 << 3
DATA_LEVEL_ASSERT: Final = 1 << 14
DATA_TRIGGER_LEVEL: Final = 1 << 15


class LapicIrq:
    """KVM's struct kvm_lapic_irq, reduced to what IOAPIC/MSI delivery uses. A plain class with
    slots rather than a NamedTuple: one is built per delivery, and compiled by mypyc its fields
    are C struct members instead of tuple items behind properties. Treated as immutable."""

    __slots__ = ("delivery_mode", "dest", "level_trig", "logical", "redir_hint", "vector")

    def __init__(self, vector: int, delivery_mode: int, logical: bool, level_trig: bool,
                 dest: int, redir_hint: bool = False) -> None:
        self.vector = vector
        self.delivery_mode = delivery_mode  # 0..7 (APIC_DM_* >> 8)
        self.logical = logical
        self.level_trig = level_trig
        self.dest = dest
        self.redir_hint = redir_hint

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LapicIrq) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"LapicIrq(vector={self.vector}, delivery_mode={self.delivery_mode}, "
                f"logical={self.logical}, level_trig={self.level_trig}, dest={self.dest}, "
                f"redir_hint={self.redir_hint})")

    def _key(self) -> tuple[int, int, bool, bool, int, bool]:
        return (self.vector, self.delivery_mode, self.logical, self.level_trig, self.dest,
                self.redir_hint)

    @property
    def lowest_prio(self) -> bool:
        """kvm_lowest_prio_delivery: APIC_DM_LOWEST or the MSI redirection hint."""
        return self.delivery_mode == 1 or self.redir_hint


@lru_cache(maxsize=8192)
def msi_to_irq(address_lo: int, address_hi: int, data: int, x2apic_format: bool) -> LapicIrq:
    """kvm_msi_to_lapic_irq: data bit 14 (assert) is ignored, level is always 1."""
    dest = (address_lo >> 12) & 0xFF
    if x2apic_format:
        dest |= address_hi & 0xFFFFFF00
    return LapicIrq(
        vector=data & 0xFF,
        delivery_mode=(data >> 8) & 7,
        logical=bool(address_lo & ADDR_DEST_MODE_LOGICAL),
        level_trig=bool(data & DATA_TRIGGER_LEVEL),
        dest=dest,
        redir_hint=bool(address_lo & ADDR_REDIR_HINT),
    )


def irq_to_msi(irq: LapicIrq, x2apic_format: bool) -> tuple[int, int, int]:
    """Inverse of msi_to_irq. A destination above 0xFF needs the x2APIC 32-bit id format."""
    if irq.dest > 0xFF and not x2apic_format:
        raise invalid(
            "destination above 255 needs KVM_X2APIC_API_USE_32BIT_IDS (x2apic_format)", "dest"
        )
    addr_lo = MSI_ADDR_BASE | (irq.dest & 0xFF) << 12
    if irq.logical:
        addr_lo |= ADDR_DEST_MODE_LOGICAL
    if irq.redir_hint:
        addr_lo |= ADDR_REDIR_HINT
    addr_hi = irq.dest & 0xFFFFFF00 if x2apic_format else 0
    data = irq.vector | irq.delivery_mode << 8
    if irq.level_trig:
        data |= DATA_TRIGGER_LEVEL | DATA_LEVEL_ASSERT
    return addr_lo, addr_hi, data


def swizzle_msi_ext_dest_id(address: int) -> int:
    """QEMU kvm_swizzle_msi_ext_dest_id: address bits 11:4 are the extended destination; if
    any is set, bit 4 (remappable format) is clear and the upper 32 bits are 0, the bits
    move up by 35 (bits 11:5 -> 46:40, i.e. address_hi bits 14:8)."""
    ext_id = address & (0xFF << 4)
    if not ext_id or ext_id & (1 << 4) or address >> 32:
        return address
    return (address & ~ext_id) | ext_id << 35


def qemu_rte_to_msi(entry: int) -> tuple[int, int]:
    """QEMU ioapic_entry_parse: RTE bits 63:48 become address bits 19:4 (so the 8-bit dest
    lands in 19:12 and the extended destination in 11:4); data = vector|delivery|trigger."""
    dest_idx = (entry >> 48) & 0xFFFF
    addr = MSI_ADDR_BASE | dest_idx << 4 | ((entry >> 11) & 1) << 2
    data = (entry & 0xFF) | ((entry >> 8) & 7) << 8 | ((entry >> 15) & 1) << 15
    return addr, data
