"""Start-up: every durable VM back from the state directory (app.api.durable).

Each VM is restored from its snapshot, then its journal's records are replayed through the
application itself, as the requests they were (same route, same body, the VM's tenant): the
code that applied an operation the first time applies it again, so replay cannot drift from
what the clients were answered. Replayed requests are flagged in the ASGI scope so that they
skip authentication and are not journaled a second time.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio.to_thread
from starlette.types import ASGIApp, Message

from app.engine.errors import EngineError
from app.engine.vm import Vm

from .durable import StateStore
from .journal import Record
from .registry import Registry
from .request_scope import REPLAY, TENANT

log = logging.getLogger("irqlab.state")


async def restore_all(app: ASGIApp, registry: Registry, store: StateStore) -> int:
    """Load and replay every VM; returns how many were restored."""
    started = time.monotonic()
    loaded = await anyio.to_thread.run_sync(store.load)
    replayed = 0
    for item in loaded:
        try:
            vm = Vm.restore(item.snapshot)
        except EngineError as exc:
            raise RuntimeError(f"state: {item.journal.dir}: unreadable snapshot: "
                               f"{exc.detail}") from exc
        registry.restored(item.tenant, item.vm_id, vm, item.journal)
        for record in item.records:
            status = await _replay(app, item.tenant, record)
            if status >= 500:
                log.error("state: replaying %s %s (seq %d) of %s/%s answered %d", record.method,
                          record.path, record.seq, item.tenant, item.vm_id, status)
        replayed += len(item.records)
    if loaded:
        log.info("state: restored %d VMs (%d journal records replayed) from %s in %.2f s",
                 len(loaded), replayed, store.root, time.monotonic() - started)
    return len(loaded)


async def _replay(app: ASGIApp, tenant: str, record: Record) -> int:
    headers = [(b"content-length", str(len(record.body)).encode())]
    if record.content_type:
        headers.append((b"content-type", record.content_type.encode("latin-1")))
    path, _, query = record.path.partition("?")
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": record.method, "scheme": "http", "path": path,
        "raw_path": path.encode(), "query_string": query.encode("latin-1"), "root_path": "",
        "headers": headers, "client": None, "server": None, REPLAY: True, TENANT: tenant,
    }
    sent = False
    status = 0

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": record.body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    try:
        await app(scope, receive, send)
    except Exception:  # ServerErrorMiddleware re-raises after answering 500
        log.exception("state: replay of %s %s raised", record.method, record.path)
        return status or 500
    return status
