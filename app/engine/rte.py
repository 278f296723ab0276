"""The 64-bit IOAPIC redirection-table entry (82093AA layout, KVM's kvm_ioapic_redirect_entry and
QEMU's ioredtbl[] share it)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from .errors import invalid

NUM_PINS: Final = 24

VECTOR_MASK: Final = 0xFF
DELIVERY_SHIFT: Final = 8
DEST_MODE_BIT: Final = 1 << 11
DELIVERY_STATUS_BIT: Final = 1 << 12
POLARITY_BIT: Final = 1 << 13
REMOTE_IRR_BIT: Final = 1 << 14
TRIGGER_BIT: Final = 1 << 15
MASK_BIT: Final = 1 << 16
DEST_SHIFT: Final = 56
RO_BITS: Final = REMOTE_IRR_BIT | DELIVERY_STATUS_BIT

# Delivery modes (RTE bits 10:8, equal to the LAPIC APIC_DM_* value >> 8).
DM_FIXED, DM_LOWEST, DM_SMI, DM_NMI, DM_INIT, DM_EXTINT = 0, 1, 2, 4, 5, 7
DELIVERY_MODES = {"fixed": 0, "lowest": 1, "smi": 2, "nmi": 4, "init": 5, "extint": 7}
DELIVERY_NAMES = {v: k for k, v in DELIVERY_MODES.items()}

RESET_VALUE: Final = MASK_BIT


def vector(e: int) -> int:
    return e & VECTOR_MASK


def delivery_mode(e: int) -> int:
    return (e >> DELIVERY_SHIFT) & 7


def is_logical(e: int) -> bool:
    return bool(e & DEST_MODE_BIT)


def is_level(e: int) -> bool:
    return bool(e & TRIGGER_BIT)


def is_masked(e: int) -> bool:
    return bool(e & MASK_BIT)


def remote_irr(e: int) -> bool:
    return bool(e & REMOTE_IRR_BIT)


def dest(e: int) -> int:
    return (e >> DEST_SHIFT) & 0xFF


def decode(e: int) -> dict[str, Any]:
    dm = delivery_mode(e)
    return {
        "vector": vector(e),
        "delivery_mode": DELIVERY_NAMES.get(dm, f"reserved-{dm}"),
        "dest_mode": "logical" if is_logical(e) else "physical",
        "delivery_status": bool(e & DELIVERY_STATUS_BIT),
        "polarity": "low" if e & POLARITY_BIT else "high",
        "remote_irr": remote_irr(e),
        "trigger": "level" if is_level(e) else "edge",
        "masked": is_masked(e),
        "dest": dest(e),
        "extended_dest": (e >> 48) & 0xFF,
        "raw": f"0x{e:016x}",
    }


def encode(
    *,
    vector: int = 0,
    delivery_mode: str | int = "fixed",
    dest_mode: str = "physical",
    trigger: str = "edge",
    polarity: str = "high",
    masked: bool = False,
    dest: int = 0,
    extended_dest: int = 0,
    remote_irr: bool = False,
    delivery_status: bool = False,
) -> int:
    """Build a raw entry from fields (the read-only bits are included so that a caller can
    model a guest that writes them; the IOAPIC decides whether they stick)."""
    if not 0 <= vector <= 0xFF:
        raise invalid("vector must be 0..255", "vector")
    if not 0 <= dest <= 0xFF:
        raise invalid("dest must be 0..255 (8-bit RTE destination)", "dest")
    if not 0 <= extended_dest <= 0xFF:
        raise invalid("extended_dest must be 0..255 (RTE bits 55:48)", "extended_dest")
    if isinstance(delivery_mode, str):
        if delivery_mode not in DELIVERY_MODES:
            raise invalid(f"delivery_mode must be one of {sorted(DELIVERY_MODES)}", "delivery_mode")
        dm = DELIVERY_MODES[delivery_mode]
    else:
        if not 0 <= delivery_mode <= 7:
            raise invalid("delivery_mode must be 0..7", "delivery_mode")
        dm = delivery_mode
    if dest_mode not in ("physical", "logical"):
        raise invalid("dest_mode must be physical or logical", "dest_mode")
    if trigger not in ("edge", "level"):
        raise invalid("trigger must be edge or level", "trigger")
    if polarity not in ("high", "low"):
        raise invalid("polarity must be high or low", "polarity")
    e = vector | dm << DELIVERY_SHIFT | dest << DEST_SHIFT | extended_dest << 48
    if dest_mode == "logical":
        e |= DEST_MODE_BIT
    if trigger == "level":
        e |= TRIGGER_BIT
    if polarity == "low":
        e |= POLARITY_BIT
    if masked:
        e |= MASK_BIT
    if remote_irr:
        e |= REMOTE_IRR_BIT
    if delivery_status:
        e |= DELIVERY_STATUS_BIT
    return e


FIELD_NAMES = (
    "vector",
    "delivery_mode",
    "dest_mode",
    "trigger",
    "polarity",
    "masked",
    "dest",
    "extended_dest",
    "remote_irr",
    "delivery_status",
)


HIGH_DWORD_FIELDS: Final = frozenset({"dest", "extended_dest"})  # bits 63:48
LOW_DWORD_FIELDS: Final = frozenset(FIELD_NAMES) - HIGH_DWORD_FIELDS


def patch_halves(changed: Iterable[str], order: str = "low-first") -> tuple[str, ...]:
    """The dwords a field patch writes (only those holding a changed field), in `order`
    ("low-first" or "high-first"), as ioapic_write_entry-style guest code would."""
    names = set(changed)
    halves = [h for h, fields in (("low", LOW_DWORD_FIELDS), ("high", HIGH_DWORD_FIELDS))
              if fields & names]
    if order == "high-first":
        halves.reverse()
    return tuple(halves)


def entry_halves(order: str = "low-first") -> tuple[str, ...]:
    """Both dwords of a whole-entry write, in `order`."""
    return patch_halves(FIELD_NAMES, order)


_FIELD_KINDS: dict[str, tuple[type, ...]] = {
    "vector": (int,),
    "delivery_mode": (str, int),
    "dest_mode": (str,),
    "trigger": (str,),
    "polarity": (str,),
    "masked": (bool,),
    "dest": (int,),
    "extended_dest": (int,),
    "remote_irr": (bool,),
    "delivery_status": (bool,),
}


def patch(e: int, changes: dict[str, Any]) -> int:
    """Entry `e` with some fields replaced. `changes` may be untrusted (a scenario step), so
    types are checked here, naming the field, before encode()'s typed parameters see them."""
    current = decode(e)
    merged = {k: current[k] for k in FIELD_NAMES}
    merged["delivery_mode"] = delivery_mode(e)  # numeric: reserved modes 3 and 6 round-trip
    for k, v in changes.items():
        if k not in FIELD_NAMES:
            raise invalid(f"unknown RTE field {k!r}", k)
        kinds = _FIELD_KINDS[k]
        if type(v) not in kinds:
            raise invalid(f"{k} must be {' or '.join(t.__name__ for t in kinds)}", k)
        merged[k] = v
    return encode(**merged)
