"""What KVM's and QEMU's IOAPICs truly share: the indirect register file's addressing and the
replacement of one dword of a redirection entry. Their policies (read-only bits, Remote IRR on
edge, re-service, routes) differ and live in ioapic_kvm.py and ioapic_qemu.py."""

from __future__ import annotations

from . import rte as R
from .events import EventLog

REG_ID, REG_VER, REG_ARB = 0x00, 0x01, 0x02


def rte_index(ioregsel: int) -> int | None:
    """The RTE an IOREGSEL value selects (0x10 + 2n low, 0x11 + 2n high), or None."""
    if ioregsel < 0x10:
        return None
    index = (ioregsel - 0x10) >> 1
    return index if index < R.NUM_PINS else None


def replace_half(entry: int, ioregsel: int, value: int) -> int:
    """The entry with the dword IOREGSEL selects replaced by `value` (odd: high, even: low)."""
    value &= 0xFFFFFFFF
    if ioregsel & 1:
        return (entry & 0xFFFFFFFF) | value << 32
    return (entry & ~0xFFFFFFFF) | value


def log_rte_write(log: EventLog, pin: int, ioregsel: int, value: int, entry: int,
                  cause: int | None) -> int:
    half = "high" if ioregsel & 1 else "low"
    return log.emit("ioapic", "rte-write", cause, "pin", pin, "half", half,
                    "value", value & 0xFFFFFFFF, "entry", entry)  # fmt: skip
