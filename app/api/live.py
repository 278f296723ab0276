"""Who is watching which VM: an in-process publish/subscribe for the live dashboard.

The registry (app/api/registry.py) is the one place operations on VMs are applied; after each
one that moved a VM's event log (and after a VM is created, restored or deleted) it tells the
hub, which marks the VM dirty for every subscriber and wakes them. A subscriber only learns
*which* VMs changed, never the changes: it reads the state itself when it is ready, so a burst
of a thousand line changes costs a watcher one read, and a slow browser never makes the
operation wait. With no subscriber the registry's cost is one test of an empty set per
operation.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from types import FrameType

# Marks "the set of VMs changed" (a VM was created or deleted).
VM_LIST = ""


class Subscriber:
    """One watcher: the VMs changed since it last looked, and an event that wakes it."""

    __slots__ = ("dirty", "wake")

    def __init__(self) -> None:
        self.dirty: set[str] = set()
        self.wake = asyncio.Event()

    def take(self) -> set[str]:
        """The VMs changed since the last call (VM_LIST among them if the list changed)."""
        dirty, self.dirty = self.dirty, set()
        self.wake.clear()
        return dirty


class Hub:
    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        self.closed = False

    def close(self) -> None:
        """The server is stopping: wake every subscriber for the last time, so open streams
        end and the server's graceful shutdown does not wait for them. On the event loop."""
        self.closed = True
        for sub in self.subscribers:
            sub.wake.set()

    def subscribe(self) -> Subscriber:
        sub = Subscriber()
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def changed(self, vm_id: str) -> None:
        """Called on the event loop (asyncio.Event is not thread-safe)."""
        for sub in self.subscribers:
            sub.dirty.add(vm_id)
            sub.wake.set()


def close_on_exit_signals(hub: Hub) -> Callable[[], None]:
    """Make SIGINT/SIGTERM close the hub before the server's own handler runs, so open
    dashboard streams end and the server's graceful shutdown does not wait for them (uvicorn
    waits for every response in progress, and a stream never finishes by itself). Chains the
    handlers the server installed (uvicorn's handle_exit); returns the function that puts them
    back. Only the main thread may set signal handlers: elsewhere (an app under a test
    client's thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Callable[[int, FrameType | None], object]] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if not callable(handler):  # default or ignored: no server handler to chain
            continue
        previous[sig] = handler

        def close_then(signum: int, frame: FrameType | None,
                       server: Callable[[int, FrameType | None], object] = handler) -> None:
            loop.call_soon_threadsafe(hub.close)
            server(signum, frame)

        signal.signal(sig, close_then)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
