"""256-bit vector sets held as Python ints: O(1) copy, hashable, cheap set algebra."""

from __future__ import annotations

FULL = (1 << 256) - 1


def highest(bits: int) -> int:
    """Highest set vector, or -1 (KVM's apic_find_highest_vector)."""
    return bits.bit_length() - 1


def vectors(bits: int) -> list[int]:
    """The set bits, ascending. A negative int has infinitely many (two's complement): that
    is no bitmap, and refusing it keeps this loop finite."""
    if bits < 0:
        raise ValueError("a bitmap is never negative")
    out = []
    while bits:
        low = bits & -bits
        out.append(low.bit_length() - 1)
        bits ^= low
    return out


def from_vectors(vecs: list[int]) -> int:
    bits = 0
    for v in vecs:
        bits |= 1 << v
    return bits


def to_hex(bits: int) -> str:
    return f"0x{bits:064x}"
