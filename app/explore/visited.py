"""The visited set: a compact open-addressing table of 64-bit fingerprints.

A Python `set[int]` costs ~60-70 bytes per element (the int object plus the set's slot); the
checker's budget is 64 bytes per state for everything it keeps per state. This table stores the
fingerprints themselves in one `array('Q')` (8 bytes a slot) with linear probing, grows by
doubling at 70 % load, and so costs 11-23 bytes per state (plus, briefly, the old table while it
grows). Slot value 0 marks an empty slot; the fingerprint 0 itself is kept in a separate flag.

The slot of a fingerprint is taken from the top bits of its product with a 64-bit odd constant
(Fibonacci hashing), so models whose fingerprints are small or sequential integers still spread
over the table.
"""

from __future__ import annotations

from array import array

M64 = (1 << 64) - 1
_MIX = 0x9E3779B97F4A7C15  # 2^64 / golden ratio, odd
_MAX_LOAD_NUM, _MAX_LOAD_DEN = 7, 10


class FingerprintSet:
    """A set of 64-bit unsigned fingerprints; `add` says whether the fingerprint was new."""

    __slots__ = ("_bits", "_count", "_has_zero", "_limit", "_mask", "_shift", "_table")

    def __init__(self, capacity: int = 1 << 12) -> None:
        bits = max(4, (max(capacity, 16) - 1).bit_length())
        self._alloc(bits)
        self._count = 0
        self._has_zero = False

    def _alloc(self, bits: int) -> None:
        self._bits = bits
        size = 1 << bits
        self._table = array("Q", bytes(8 * size))
        self._mask = size - 1
        self._shift = 64 - bits
        self._limit = size * _MAX_LOAD_NUM // _MAX_LOAD_DEN

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Bytes held by the table (its buffer)."""
        return self._table.buffer_info()[1] * self._table.itemsize

    def add(self, fp: int) -> bool:
        """Insert `fp` (0 <= fp < 2**64); True when it was not there before."""
        if fp == 0:
            if self._has_zero:
                return False
            self._has_zero = True
            self._count += 1
            return True
        table = self._table
        mask = self._mask
        i = ((fp * _MIX) & M64) >> self._shift
        while True:
            v = table[i]
            if v == 0:
                table[i] = fp
                self._count += 1
                if self._count >= self._limit:
                    self._grow()
                return True
            if v == fp:
                return False
            i = (i + 1) & mask

    def __contains__(self, fp: object) -> bool:
        if not isinstance(fp, int):
            return False
        if fp == 0:
            return self._has_zero
        table = self._table
        mask = self._mask
        i = ((fp * _MIX) & M64) >> self._shift
        while True:
            v = table[i]
            if v == 0:
                return False
            if v == fp:
                return True
            i = (i + 1) & mask

    def _grow(self) -> None:
        old = self._table
        self._alloc(self._bits + 1)
        table = self._table
        mask = self._mask
        shift = self._shift
        for fp in old:
            if fp:
                i = ((fp * _MIX) & M64) >> shift
                while table[i]:
                    i = (i + 1) & mask
                table[i] = fp
