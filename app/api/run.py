"""How a router runs something on a VM: under the VM's lock, in a worker thread, with the
response validated and rendered there too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from pydantic import BaseModel

from app.engine.vm import Vm
from app.settings import Settings

from . import ops
from .registry import Registry, VmEntry


async def view(request: Request, vm_id: str, model: type[BaseModel] | None,
               read: Callable[[VmEntry], Any]) -> Response:
    """A read of the VM's state."""
    registry: Registry = request.app.state.registry
    return await registry.run(vm_id, lambda entry: ops.render(model, read(entry)))


async def act(request: Request, vm_id: str, model: type[BaseModel],
              op: Callable[[Vm], dict[str, Any]], status_code: int = 200) -> Response:
    """An operation on the VM; the response carries the events it emitted.

    Routes pass their Request rather than registry/settings dependencies: FastAPI injects a
    Request for free, while every Depends() is a nested solve on each call (the largest cost
    of a request here, measured)."""
    registry: Registry = request.app.state.registry
    settings: Settings = request.app.state.settings
    limit = settings.max_events_page

    def work(entry: VmEntry) -> Response:
        vm = entry.vm
        return ops.render(model, ops.capture(vm, lambda: op(vm), limit), status_code)

    return await registry.run(vm_id, work)
