"""Durable VMs (IRQLAB_STATE_DIR): a snapshot and a journal of operations per VM.

Layout: `<state dir>/vms/<tenant>/<vm id>/snapshot.json` and `journal.log`. The snapshot is
the VM at some journal sequence number (`seq`, written atomically: temporary file, fsync,
rename, fsync of the directory); the journal holds the operations applied since, as the
client sent them (app.api.journal). The deterministic engine replays them to the same state
and event log, byte for byte, so an operation's record is all the durability it needs.

When is a record durable? It is written with write(2) before the operation's response is
sent, so it survives the process dying in any way (SIGKILL, OOM kill, a crash). Surviving the
machine losing power is the fsync policy's job (IRQLAB_STATE_FSYNC):

- `always`: fsync before the response is sent; an acknowledged operation survives power loss.
- `interval`: a background task fsyncs dirty journals every IRQLAB_STATE_FSYNC_INTERVAL_MS;
  power loss may lose the operations acknowledged in that last interval.
- `never`: fsync only at snapshots and at shutdown; power loss may lose anything since.

Every IRQLAB_STATE_SNAPSHOT_EVERY records a new snapshot replaces the old one and the journal
starts again (compaction), which bounds the replay at start-up. A VM that is created gets its
snapshot (at seq 0) before its 201 is sent; a deleted VM's directory is removed before its
204. kvm-backend VMs live in the kernel and are not journaled: after a restart they are gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread

from app.engine.vm import Vm

from .journal import JournalFile, Record, read_records

log = logging.getLogger("irqlab.state")

T = TypeVar("T")
FsyncPolicy = Literal["always", "interval", "never"]
SNAPSHOT_FILE = "snapshot.json"
JOURNAL_FILE = "journal.log"
FORMAT = 1


class StateWriteError(Exception):
    """The state directory could not be written: the operation is not acknowledged (503)."""


@dataclass(eq=False)
class VmJournal:
    """The durable side of one VM, used with the VM's lock held."""

    dir: Path
    file: JournalFile
    seq: int  # the last record written (or the snapshot's seq)
    since_snapshot: int = 0
    synced: int = 0  # every record up to this seq is on stable storage
    closed: bool = False  # deleted, or the service is stopping: nothing left to fsync
    # Held by whoever fsyncs or replaces `file` (waiters share one fsync: group commit).
    sync_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class LoadedVm:
    tenant: str
    vm_id: str
    snapshot: dict[str, Any]
    records: list[Record]
    journal: VmJournal = field(repr=False)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, sync: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync:
        _fsync_dir(path.parent)


def _close_all(journals: list[VmJournal]) -> None:
    for j in journals:
        j.file.close()


class StateStore:
    def __init__(self, root: Path, fsync: FsyncPolicy = "always",
                 fsync_interval_ms: int = 100, snapshot_every: int = 1000) -> None:
        self.root = root
        self.vms_dir = root / "vms"
        self.fsync: FsyncPolicy = fsync
        self.fsync_interval = fsync_interval_ms / 1000
        self.snapshot_every = snapshot_every
        self._open: set[VmJournal] = set()
        self._flusher: asyncio.Task[None] | None = None

    # ---- start-up

    def load(self) -> list[LoadedVm]:
        """Every VM on disk with the records to replay after its snapshot. A torn or damaged
        journal tail is cut off here (logged with its size); leftovers of an interrupted
        create or delete (a directory without a snapshot) are removed."""
        self.vms_dir.mkdir(parents=True, exist_ok=True)
        out: list[LoadedVm] = []
        for tenant_dir in sorted(p for p in self.vms_dir.iterdir() if p.is_dir()):
            for vm_dir in sorted(p for p in tenant_dir.iterdir() if p.is_dir()):
                snap_path = vm_dir / SNAPSHOT_FILE
                if not snap_path.exists():
                    log.warning("state: removing %s (no snapshot: an interrupted create or "
                                "delete)", vm_dir)
                    shutil.rmtree(vm_dir, ignore_errors=True)
                    continue
                doc = json.loads(snap_path.read_bytes())
                if doc.get("format") != FORMAT:
                    raise RuntimeError(f"{snap_path}: unknown state format {doc.get('format')}")
                journal_path = vm_dir / JOURNAL_FILE
                read = read_records(str(journal_path))
                if read.torn_bytes:
                    log.warning("state: %s: dropping a torn or damaged tail of %d bytes after "
                                "%d whole records", journal_path, read.torn_bytes,
                                len(read.records))
                    with open(journal_path, "r+b") as f:
                        f.truncate(read.good_bytes)
                        os.fsync(f.fileno())
                seq = int(doc["seq"])
                records = [r for r in read.records if r.seq > seq]
                last = records[-1].seq if records else seq
                journal = VmJournal(vm_dir, JournalFile(str(journal_path)), last, len(records),
                                    synced=last)
                self._open.add(journal)
                out.append(LoadedVm(tenant_dir.name, vm_dir.name, doc["snapshot"], records,
                                    journal))
        return out

    def start(self) -> None:
        if self.fsync == "interval" and self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.fsync_interval)
            for journal in [j for j in self._open if j.file.dirty]:
                try:
                    await self._sync(journal, journal.seq)
                except StateWriteError:
                    log.exception("state: periodic fsync failed")

    async def wait_durable(self, journal: VmJournal, seq: int) -> None:
        """Policy `always`: return once every record up to `seq` is fsynced."""
        if self.fsync == "always" and journal.synced < seq:
            await self._sync(journal, seq)

    async def _sync(self, journal: VmJournal, seq: int) -> None:
        async with journal.sync_lock:
            if journal.synced >= seq or journal.closed:  # another fsync covered it
                return
            target = journal.seq  # what is written now; the fsync covers all of it
            await self._io(journal.file.sync)
            journal.synced = max(journal.synced, target)

    async def close(self) -> None:
        """At shutdown: fsync and close every journal (the VMs stay on disk)."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        journals = list(self._open)
        self._open.clear()
        for journal in journals:
            async with journal.sync_lock:  # let a running fsync finish first
                journal.closed = True
        await anyio.to_thread.run_sync(_close_all, journals)

    # ---- one VM's life (each called with the VM's lock held)

    def _vm_dir(self, tenant: str, vm_id: str) -> Path:
        return self.vms_dir / tenant / vm_id

    async def create(self, tenant: str, vm_id: str, vm: Vm) -> VmJournal:
        """A new VM: its snapshot at seq 0 and an empty journal, before the 201."""
        vm_dir = self._vm_dir(tenant, vm_id)

        def write() -> VmJournal:
            if vm_dir.exists():  # leftover of a delete that did not finish
                shutil.rmtree(vm_dir)
            vm_dir.mkdir(parents=True)
            _write_atomic(vm_dir / SNAPSHOT_FILE, self._snapshot_doc(vm, 0),
                          self.fsync != "never")
            journal = VmJournal(vm_dir, JournalFile(str(vm_dir / JOURNAL_FILE)), 0)
            if self.fsync != "never":
                _fsync_dir(vm_dir.parent)
            return journal

        journal = await self._io(write)
        self._open.add(journal)
        return journal

    def append(self, journal: VmJournal, method: str, path: str, content_type: str,
               body: bytes) -> None:
        """Write one operation's record (on the event loop: a write(2) to the page cache)."""
        journal.seq += 1
        try:
            journal.file.append(Record(journal.seq, method, path, content_type, body).encode())
        except OSError as exc:
            raise StateWriteError(f"journal write failed: {exc}") from exc
        journal.since_snapshot += 1

    async def checkpoint(self, journal: VmJournal, vm: Vm) -> None:
        """Snapshot the VM at the journal's seq and start an empty journal. The snapshot is
        renamed into place first: until the new journal replaces the old one, the old
        records all have seq <= the snapshot's and are skipped at load."""
        def write() -> None:
            # In a worker thread: the caller holds the VM's lock, so nothing else touches it.
            _write_atomic(journal.dir / SNAPSHOT_FILE, self._snapshot_doc(vm, journal.seq), True)
            fresh = journal.dir / (JOURNAL_FILE + ".new")
            fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            os.fsync(fd)
            os.close(fd)
            os.replace(fresh, journal.dir / JOURNAL_FILE)
            _fsync_dir(journal.dir)
            old = journal.file
            journal.file = JournalFile(str(journal.dir / JOURNAL_FILE))
            old.dirty = False  # its records are in the snapshot now
            old.close()

        async with journal.sync_lock:  # no fsync of the old file may run meanwhile
            await self._io(write)
        journal.since_snapshot = 0
        journal.synced = journal.seq

    async def delete(self, journal: VmJournal) -> None:
        """The VM is gone: its snapshot first (what makes it exist at start-up), then the
        rest, before the 204."""
        self._open.discard(journal)

        def remove() -> None:
            journal.file.dirty = False
            journal.file.close()
            (journal.dir / SNAPSHOT_FILE).unlink(missing_ok=True)
            if self.fsync != "never":
                _fsync_dir(journal.dir)
            shutil.rmtree(journal.dir, ignore_errors=True)

        async with journal.sync_lock:  # let a running fsync finish first
            journal.closed = True
            await self._io(remove)

    async def _io(self, fn: Callable[[], T]) -> T:
        try:
            with anyio.CancelScope(shield=True):  # a cancelled request must not tear a write
                result = await anyio.to_thread.run_sync(fn)
        except OSError as exc:
            raise StateWriteError(f"state directory write failed: {exc}") from exc
        return result

    @staticmethod
    def _snapshot_doc(vm: Vm, seq: int) -> bytes:
        return json.dumps({"format": FORMAT, "seq": seq, "snapshot": vm.snapshot()},
                          separators=(",", ":")).encode()
