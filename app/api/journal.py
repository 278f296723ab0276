"""The on-disk journal of one VM: an append-only file of framed records.

A frame is `length (u32 LE) | crc32 (u32 LE) | payload`, the CRC covering the payload. A
process killed in the middle of a write leaves a last frame that is short or whose CRC does
not match: `read_records` stops there and reports where the good part ends, so the caller
can cut the file back to it (the torn operation was never acknowledged: its response is sent
only after the write returned).

A record's payload is `seq (u64 LE) | header JSON | 0x0A | body bytes`: the operation as the
client asked for it (method, path, content type) and its request body, verbatim. The header
is JSON without newlines, so the first 0x0A after the seq ends it.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any

_FRAME = struct.Struct("<II")
_SEQ = struct.Struct("<Q")
# A frame longer than this is corruption, not a record (bodies are capped far below it by
# IRQLAB_MAX_BODY_BYTES), so a damaged length field cannot make us allocate gigabytes.
MAX_RECORD_BYTES = 1 << 30


@dataclass(frozen=True)
class Record:
    seq: int
    method: str
    path: str
    content_type: str
    body: bytes

    def encode(self) -> bytes:
        header = json.dumps([self.method, self.path, self.content_type],
                            separators=(",", ":")).encode()
        payload = _SEQ.pack(self.seq) + header + b"\n" + self.body
        return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload

    @classmethod
    def decode(cls, payload: bytes) -> Record:
        (seq,) = _SEQ.unpack_from(payload)
        end = payload.index(b"\n", _SEQ.size)
        header: Any = json.loads(payload[_SEQ.size:end])
        method, path, content_type = header
        return cls(seq, str(method), str(path), str(content_type), payload[end + 1:])


@dataclass
class ReadResult:
    records: list[Record]
    good_bytes: int  # the file up to here holds whole, checked records
    torn_bytes: int  # what follows them (a torn or damaged tail), 0 when none


def read_records(path: str) -> ReadResult:
    """Every whole record of the journal at `path`, in order, and where they end."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return ReadResult([], 0, 0)
    records: list[Record] = []
    pos = 0
    while pos + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, pos)
        start = pos + _FRAME.size
        if length > MAX_RECORD_BYTES or start + length > len(data):
            break
        payload = data[start:start + length]
        if zlib.crc32(payload) != crc:
            break
        try:
            records.append(Record.decode(payload))
        except (ValueError, struct.error, TypeError):
            break
        pos = start + length
    return ReadResult(records, pos, len(data) - pos)


class JournalFile:
    """The open journal of one VM, appended to with plain write(2) calls."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.dirty = False  # written since the last fsync

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.dirty = True

    def sync(self) -> None:
        if self.dirty:
            self.dirty = False
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            try:
                self.sync()
            finally:
                os.close(self.fd)
                self.fd = -1
