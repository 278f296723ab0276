"""How a router runs something on a VM: under the VM's lock, in a worker thread, with the
response validated and rendered there too.

Each route gives the model-backend work and, if the kvm backend can do it, the kvm-backend
work (`kvm=`, from kvm_ops); a route without one answers a kvm-backend VM with 409
`unsupported`. The dispatch lives here so that routers stay thin."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from pydantic import BaseModel

from app.engine.vm import Vm
from app.settings import Settings

from . import kvm_ops, ops
from .kvm_ops import KvmHandle
from .registry import Registry, VmEntry
from .request_scope import op_record, tenant


async def view(request: Request, vm_id: str, model: type[BaseModel] | None,
               read: Callable[[VmEntry], Any],
               kvm: Callable[[KvmHandle], Any] | None = None,
               replaces: bool = False) -> Response:
    """A read of the VM's state; `replaces`: `read` replaces the VM wholesale (a snapshot
    restore), so a durable VM gets a new snapshot before the response."""
    registry: Registry = request.app.state.registry

    def work(entry: VmEntry) -> Response:
        h = entry.kvm
        if h is None:
            return ops.render(model, read(entry))
        if kvm is None:
            raise kvm_ops.unsupported_route(request)
        return ops.render(model, kvm_ops.guarded(lambda: kvm(h)))

    return await registry.run(tenant(request), vm_id, work, checkpoint=replaces)


async def act(request: Request, vm_id: str, model: type[BaseModel],
              op: Callable[[Vm], dict[str, Any]], status_code: int = 200,
              kvm: Callable[[KvmHandle], dict[str, Any]] | None = None) -> Response:
    """An operation on the VM; the response carries the events it emitted.

    Routes pass their Request rather than registry/settings dependencies: FastAPI injects a
    Request for free, while every Depends() is a nested solve on each call (the largest cost
    of a request here, measured)."""
    registry: Registry = request.app.state.registry
    settings: Settings = request.app.state.settings
    limit = settings.max_events_page

    def work(entry: VmEntry) -> Response:
        h = entry.kvm
        if h is not None:
            if kvm is None:
                raise kvm_ops.unsupported_route(request)
            return ops.render(model, kvm_ops.capture(h, lambda: kvm(h), limit), status_code)
        vm = entry.vm
        return ops.render(model, ops.capture(vm, lambda: op(vm), limit), status_code)

    return await registry.run(tenant(request), vm_id, work, op_record(request))
