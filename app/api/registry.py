"""The VMs this service hosts, each behind its own lock.

Engine objects are not thread-safe. Every operation on a VM holds that VM's lock (an
`asyncio.Lock`) for its whole duration: the engine call, the response model validation and the
JSON rendering, which run together (`run`: on the event loop for small VMs, in a worker
thread for big ones). So a request never observes
another one half applied, requests on one VM are served in arrival order, and requests on
different VMs never wait for each other: a request waiting for a busy VM waits in the event
loop, not in a worker thread, so it cannot starve other VMs of threads. The registry's own
lock guards only the id -> entry table and is never held while an engine operation runs.

A VM of the kvm backend (`entry.kvm`, a real VM on /dev/kvm) has no engine VM: its work
always runs in a worker thread (it blocks in KVM_RUN), deleting it closes every fd, and
`close_all` (the app's shutdown) closes them all.

VMs belong to a tenant (app.api.tenants; `default` when no tokens are configured): the table
is keyed by (tenant, id), so ids may repeat across tenants and a lookup never finds another
tenant's VM (404, as if it did not exist).

With a state directory (app.api.durable), `run` is also where an operation becomes durable:
given the operation's record, it writes it to the VM's journal after the engine applied it
and before the response leaves, whatever the operation's outcome (a refused operation replays
to the same refusal). kvm-backend VMs are not journaled.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.to_thread

from app.engine.errors import EngineError, ErrorKind, not_found
from app.engine.vm import Vm, VmConfig

from .live import VM_LIST, Hub
from .problems import ClientGone, LimitError

if TYPE_CHECKING:
    from .durable import StateStore, VmJournal
    from .kvm_ops import KvmHandle

T = TypeVar("T")
log = logging.getLogger("irqlab.api")

DEFAULT_TENANT = "default"

# An operation as the journal records it: method, path, content type, request body.
OpRecord = tuple[str, str, str, bytes]


# Engine work on VMs up to this size runs inline on the event loop (see Registry.run).
INLINE_MAX_VCPUS = 256


@dataclass(eq=False)
class VmEntry:
    id: str
    model: Vm | None
    kvm: KvmHandle | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    deleted: bool = False
    tenant: str = DEFAULT_TENANT
    journal: VmJournal | None = None
    last_used: float = field(default_factory=time.monotonic)

    @property
    def backend(self) -> str:
        return "model" if self.kvm is None else "kvm"

    @property
    def vm(self) -> Vm:
        """The engine VM; a kvm-backend VM has none, so model-only work is `unsupported`."""
        if self.model is None:
            raise EngineError(ErrorKind.UNSUPPORTED,
                              "this operation is not available on the kvm backend")
        return self.model

    @vm.setter
    def vm(self, vm: Vm) -> None:
        self.model = vm


class Registry:
    def __init__(self, max_vms: int, max_vcpus: int, max_events: int | None = None,
                 max_kvm_vms: int = 4, max_kvm_vcpus: int = 8,
                 tenant_max_vms: int | None = None, store: StateStore | None = None) -> None:
        self.max_vms = max_vms
        self.tenant_max_vms = tenant_max_vms  # IRQLAB_TENANT_MAX_VMS
        self.store = store
        self.max_vcpus = max_vcpus
        self.max_kvm_vms = max_kvm_vms
        self.max_kvm_vcpus = max_kvm_vcpus
        self._kvm_pending = 0  # kvm VMs being built (their slots are reserved)
        self.max_events = max_events  # per VM log (IRQLAB_MAX_EVENTS_PER_VM)
        self._lock = threading.Lock()
        self._vms: dict[tuple[str, str], VmEntry] = {}
        self.hub = Hub()  # the live dashboard's watchers (app/api/live.py)

    def __len__(self) -> int:
        with self._lock:
            return len(self._vms)

    def check_vcpus(self, vcpus: int, field: str = "vcpus") -> None:
        if vcpus > self.max_vcpus:
            raise LimitError(f"at most {self.max_vcpus} vCPUs per VM (IRQLAB_MAX_VCPUS)",
                             field, "IRQLAB_MAX_VCPUS", self.max_vcpus)

    def _check_free(self, tenant: str, vm_id: str | None, count: bool = True) -> None:
        """Caller holds self._lock."""
        if vm_id is not None and (tenant, vm_id) in self._vms:
            raise EngineError(ErrorKind.EXISTS, f"a VM with id {vm_id!r} already exists", "id")
        if not count:
            return
        if len(self._vms) + self._kvm_pending >= self.max_vms:
            raise LimitError(f"at most {self.max_vms} VMs may exist (IRQLAB_MAX_VMS)", "id",
                             "IRQLAB_MAX_VMS", self.max_vms)
        cap = self.tenant_max_vms
        if cap is not None and sum(1 for t, _ in self._vms if t == tenant) >= cap:
            raise LimitError(f"at most {cap} VMs per tenant (IRQLAB_TENANT_MAX_VMS)", "id",
                             "IRQLAB_TENANT_MAX_VMS", cap)

    async def create(self, tenant: str, vm_id: str | None, config: VmConfig) -> VmEntry:
        """KVM_CREATE_VM: checks limits and the id, builds the VM in a worker thread (a
        4096-vCPU VM takes a while), then checks again and publishes it; with a state
        directory its snapshot is written before this returns (the VM's lock is held
        meanwhile, so no operation reaches it first)."""
        self.check_vcpus(config.vcpus)
        with self._lock:
            self._check_free(tenant, vm_id)
        vm = await anyio.to_thread.run_sync(Vm, config)
        self.bound_log(vm)
        with self._lock:
            self._check_free(tenant, vm_id)
            if vm_id is None:
                vm_id = self._new_id(tenant)
            entry = VmEntry(vm_id, vm, tenant=tenant)
            self._vms[(tenant, vm_id)] = entry
        if self.store is not None:
            await self._persist_new(entry, vm)
        if self.hub.subscribers:
            self.hub.changed(VM_LIST)
        return entry

    async def _persist_new(self, entry: VmEntry, vm: Vm) -> None:
        assert self.store is not None
        # No await since publishing: the uncontended lock is taken at once, before any
        # request could queue on it.
        async with entry.lock:
            try:
                entry.journal = await self.store.create(entry.tenant, entry.id, vm)
            except BaseException:
                entry.deleted = True
                with self._lock:
                    self._vms.pop((entry.tenant, entry.id), None)
                raise

    def _check_kvm_free(self) -> None:
        """Caller holds self._lock."""
        live = sum(1 for e in self._vms.values() if e.kvm is not None) + self._kvm_pending
        if live >= self.max_kvm_vms:
            raise LimitError(f"at most {self.max_kvm_vms} kvm-backend VMs may exist "
                             "(IRQLAB_MAX_KVM_VMS)", "backend", "IRQLAB_MAX_KVM_VMS",
                             self.max_kvm_vms)

    @asynccontextmanager
    async def kvm_slot(self, vcpus: int) -> AsyncIterator[None]:
        """Reserve one kvm-backend VM slot (IRQLAB_MAX_KVM_VMS, IRQLAB_MAX_KVM_VCPUS) for a VM
        that is never published, e.g. the one a scenario diff builds per variant."""
        if vcpus > self.max_kvm_vcpus:
            raise LimitError(f"at most {self.max_kvm_vcpus} vCPUs per kvm-backend VM "
                             "(IRQLAB_MAX_KVM_VCPUS)", "vcpus", "IRQLAB_MAX_KVM_VCPUS",
                             self.max_kvm_vcpus)
        with self._lock:
            self._check_kvm_free()
            self._kvm_pending += 1
        try:
            yield
        finally:
            with self._lock:
                self._kvm_pending -= 1

    async def create_kvm(self, tenant: str, vm_id: str | None, vcpus: int,
                         check: Callable[[], None], build: Callable[[], KvmHandle],
                         client_gone: Callable[[], Awaitable[None]] | None = None
                         ) -> VmEntry:
        """A kvm-backend VM: the limits (IRQLAB_MAX_VCPUS, IRQLAB_MAX_KVM_VCPUS, IRQLAB_MAX_VMS,
        IRQLAB_MAX_KVM_VMS, a slot reserved while it is built), then `check()` (can this host
        make it), then `build()` in a worker thread; a VM that cannot be published (or whose
        request was cancelled) is closed.

        Bound to the request: `client_gone` returns when the client disconnects. If that
        happens while the VM is built, the VM is closed as soon as the build returns (a
        build cannot be interrupted) and never published: ClientGone is raised."""
        self.check_vcpus(vcpus)
        if vcpus > self.max_kvm_vcpus:
            raise LimitError(f"at most {self.max_kvm_vcpus} vCPUs per kvm-backend VM "
                             "(IRQLAB_MAX_KVM_VCPUS)", "vcpus", "IRQLAB_MAX_KVM_VCPUS",
                             self.max_kvm_vcpus)
        with self._lock:
            self._check_free(tenant, vm_id)
            self._check_kvm_free()
            self._kvm_pending += 1
        built: list[KvmHandle] = []
        pending = True
        gone = False
        try:
            check()
            async with anyio.create_task_group() as tg:
                if client_gone is not None:
                    async def watch() -> None:
                        nonlocal gone
                        await client_gone()
                        gone = True
                        tg.cancel_scope.cancel()

                    tg.start_soon(watch)
                # Appended in the thread: a request cancelled meanwhile still closes the VM.
                await anyio.to_thread.run_sync(lambda: built.append(build()))
                tg.cancel_scope.cancel()  # stop the watcher
            if gone:
                raise ClientGone("the client disconnected while its kvm-backend VM was "
                                 "built; the VM was closed")
            with self._lock:
                self._kvm_pending -= 1
                pending = False
                self._check_free(tenant, vm_id, count=False)
                if vm_id is None:
                    vm_id = self._new_id(tenant)
                built[0].id = vm_id
                entry = VmEntry(vm_id, None, built[0], tenant=tenant)
                self._vms[(tenant, vm_id)] = entry
            if self.hub.subscribers:
                self.hub.changed(VM_LIST)
            return entry
        except BaseException:
            if pending:
                with self._lock:
                    self._kvm_pending -= 1
            if built:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(built[0].close)
            raise

    async def unpublish(self, entry: VmEntry) -> None:
        """Delete a VM whose creating request could not be answered (its client left)."""
        with self._lock:
            if self._vms.get((entry.tenant, entry.id)) is entry:
                del self._vms[(entry.tenant, entry.id)]
        await self._retire(entry)

    def _new_id(self, tenant: str) -> str:
        """Caller holds self._lock."""
        vm_id = f"vm-{secrets.token_hex(4)}"
        while (tenant, vm_id) in self._vms:
            vm_id = f"vm-{secrets.token_hex(4)}"
        return vm_id

    def bound_log(self, vm: Vm) -> None:
        """Keep at most max_events events in the VM's log (the oldest go first)."""
        if self.max_events is not None:
            vm.log.limit = max(2, self.max_events)

    def _get(self, tenant: str, vm_id: str) -> VmEntry:
        with self._lock:
            entry = self._vms.get((tenant, vm_id))
        if entry is None:
            raise not_found(f"no VM with id {vm_id!r}", "vm")
        return entry

    @asynccontextmanager
    async def locked(self, tenant: str, vm_id: str) -> AsyncIterator[VmEntry]:
        """The VM's entry with its lock held for the duration of the block."""
        entry = self._get(tenant, vm_id)
        async with entry.lock:
            if entry.deleted:
                raise not_found(f"no VM with id {vm_id!r}", "vm")
            yield entry

    async def run(self, tenant: str, vm_id: str, work: Callable[[VmEntry], T],
                  op: OpRecord | None = None, checkpoint: bool = False) -> T:
        """Run `work(entry)` with the VM's lock held. An engine operation on a small VM takes
        microseconds, far less than a hop to a worker thread, so it runs on the event loop;
        on a VM with more than INLINE_MAX_VCPUS vCPUs (where one operation can rescan
        thousands of vCPUs) it runs in a worker thread, which is not abandoned on
        cancellation, so the lock is released only when the work is done.

        `op` is the operation's journal record (a state directory is configured and the
        work changes the VM); `checkpoint` asks for a new snapshot instead (the work
        replaced the VM wholesale, e.g. a snapshot restore)."""
        # Written out rather than through locked(): this runs on every request.
        entry = self._get(tenant, vm_id)
        async with entry.lock:
            if entry.deleted:
                raise not_found(f"no VM with id {vm_id!r}", "vm")
            entry.last_used = time.monotonic()
            journal = entry.journal
            if journal is None and not self.hub.subscribers:
                if entry.model is not None and len(entry.model.vcpus) <= INLINE_MAX_VCPUS:
                    return work(entry)
                return await anyio.to_thread.run_sync(work, entry)
            if journal is None:
                # Someone watches: tell them if the VM changed (its log moved, it was
                # replaced by a restore, or it is a kvm VM, whose changes are not all logged).
                model = entry.model
                seq = model.log.next_seq if model is not None else -1
                try:
                    if model is not None and len(model.vcpus) <= INLINE_MAX_VCPUS:
                        return work(entry)
                    return await anyio.to_thread.run_sync(work, entry)
                finally:
                    after = entry.model
                    if after is not model or after is None or after.log.next_seq != seq:
                        self.hub.changed(vm_id)
            failure: BaseException | None = None
            try:
                result = await self._run_journaled(entry, journal, work, op, checkpoint)
            except BaseException as exc:  # answered below, once what it saw is durable
                failure = exc
            ticket = journal.seq
            if self.hub.subscribers:
                self.hub.changed(vm_id)
        # Group commit: the VM's lock is free again while this response waits for the fsync
        # (policy `always`) that covers its record, or the last record it observed; one
        # fsync covers every operation that queued meanwhile.
        assert self.store is not None
        await self.store.wait_durable(journal, ticket)
        if failure is not None:
            raise failure
        return result

    async def _run_journaled(self, entry: VmEntry, journal: VmJournal,
                             work: Callable[[VmEntry], T], op: OpRecord | None,
                             checkpoint: bool) -> T:
        """`run` for a durable VM, under its lock: the work, then its record written (it
        returned or raised: either way replay reproduces it) or, for `checkpoint`, a new
        snapshot; every IRQLAB_STATE_SNAPSHOT_EVERY records the journal is compacted."""
        store = self.store
        assert store is not None
        vm = entry.vm
        try:
            if len(vm.vcpus) <= INLINE_MAX_VCPUS:
                return work(entry)
            return await anyio.to_thread.run_sync(work, entry)
        finally:
            with anyio.CancelScope(shield=True):
                if checkpoint:
                    await store.checkpoint(journal, entry.vm)
                elif op is not None:
                    store.append(journal, *op)
                    if journal.since_snapshot >= store.snapshot_every:
                        await store.checkpoint(journal, entry.vm)

    async def delete(self, tenant: str, vm_id: str) -> None:
        with self._lock:
            entry = self._vms.pop((tenant, vm_id), None)
        if entry is None:
            raise not_found(f"no VM with id {vm_id!r}", "vm")
        await self._retire(entry)
        if self.hub.subscribers:
            self.hub.changed(VM_LIST)

    async def _retire(self, entry: VmEntry, forget: bool = True) -> None:
        """Wait for operations already queued, then retire the entry: a kvm VM's fds are
        closed; a durable VM's files are removed (`forget`, a delete) or kept (shutdown)."""
        async with entry.lock:
            entry.deleted = True
            with anyio.CancelScope(shield=True):
                if entry.kvm is not None:  # KVM_RUN is not running: close every fd
                    await anyio.to_thread.run_sync(entry.kvm.close)
                if entry.journal is not None and forget and self.store is not None:
                    await self.store.delete(entry.journal)

    async def close_all(self) -> None:
        """At shutdown: retire every VM, closing the kvm ones; durable VMs stay on disk."""
        with self._lock:
            entries = list(self._vms.values())
            self._vms.clear()
        for entry in entries:
            await self._retire(entry, forget=False)
        if self.store is not None:
            await self.store.close()

    def ids(self, tenant: str) -> list[str]:
        with self._lock:
            return [i for t, i in self._vms if t == tenant]

    def restored(self, tenant: str, vm_id: str, vm: Vm, journal: VmJournal) -> VmEntry:
        """Start-up: publish a VM loaded from the state directory."""
        self.bound_log(vm)
        entry = VmEntry(vm_id, vm, tenant=tenant, journal=journal)
        with self._lock:
            self._vms[(tenant, vm_id)] = entry
        return entry

    async def expire_idle_kvm(self, idle_seconds: float) -> list[VmEntry]:
        """Delete the kvm-backend VMs unused for `idle_seconds` (IRQLAB_KVM_IDLE_SECONDS)."""
        now = time.monotonic()
        with self._lock:
            idle = [e for e in self._vms.values()
                    if e.kvm is not None and now - e.last_used >= idle_seconds
                    and not e.lock.locked()]
            for e in idle:
                self._vms.pop((e.tenant, e.id), None)
        for e in idle:
            log.info("kvm-backend VM %r of tenant %r idle for %.0f s: deleted", e.id, e.tenant,
                     now - e.last_used)
            await self._retire(e)
        return idle


    def entries(self) -> list[VmEntry]:
        """The VMs' entries, oldest first (for reads that need no VM lock, e.g. metrics)."""
        with self._lock:
            return list(self._vms.values())
