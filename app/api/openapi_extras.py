"""What the OpenAPI document adds for its readers and for generated clients: operationIds taken
from the router functions' names, operations in a reading order within each tag, a `servers`
entry, and a walkthrough of the seed race in the API description (the first thing /docs and
/redoc show)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

# A relative URL: the server that served the document (whatever host and port it runs on),
# which is what "Try it out" and a generated client's default should talk to; then the
# default address of `irqlab serve`.
SERVERS = [
    {"url": "/", "description": "The irqlab server that serves this document"},
    {"url": "http://127.0.0.1:8000", "description": "`irqlab serve` with default settings"},
]

WALKTHROUGH = """
## Walkthrough: the seed race

The race irqlab was built for: a level-triggered interrupt is in flight on vCPU0 when its
IOAPIC pin is moved to vCPU1 (split irqchip), and under `linux-6.1` the EOI never reaches
QEMU's IOAPIC, so Remote IRR stays set and the pin is dead (fixed by KVM commit
fceb3a36c29a).

**One call.** Run the library scenario `seed-race-split` as it behaved before the fix:
`POST /v1/scenarios/seed-race-split/run?profile=linux-6.1` (*scenarios* → *Run a built-in
scenario* → Try it out, set `profile`). Its variants written for the fixed kernels fail, and
the result lists the findings at the step where they arise: `eoi-will-be-lost`, then
`remote-irr-stuck` and `eoi-not-forwarded`. Without `profile`, every variant passes.

**Step by step**, the same race on a VM of your own (each operation's response carries the
`events` it caused):

1. `POST /v1/vms` `{"id": "race", "vcpus": 2, "irqchip": "split", "profile": "linux-6.1"}`
2. `PUT /v1/vms/race/ioapic/pins/5` `{"vector": "0x40", "trigger": "level", "dest": 0}`
3. `POST /v1/vms/race/vcpus/0/enter` and `POST /v1/vms/race/vcpus/1/enter`
4. `POST /v1/vms/race/ioapic/pins/5/line` `{"action": "assert"}`: delivered to vCPU0,
   Remote IRR set
5. `POST /v1/vms/race/vcpus/0/ack`: vCPU0 takes vector 64
6. `POST /v1/vms/race/ioapic/pins/5/line` `{"action": "deassert"}`
7. `PATCH /v1/vms/race/ioapic/pins/5` `{"dest": 1}`: both vCPUs get SCAN_IOAPIC
8. `POST /v1/vms/race/vcpus/0/enter` and `POST /v1/vms/race/vcpus/1/enter`
9. `GET /v1/vms/race/bitmaps`: under linux-6.1 vCPU0's handled vectors lost 64
10. `POST /v1/vms/race/vcpus/0/eoi` `{"run_exits": true}`, then `GET /v1/vms/race/bitmaps`:
    `remote_irr.pins` is `[5]`
11. `GET /v1/vms/race/events?after=40`: the causal chain (`eoi` → `eoi-not-forwarded`)

With `"profile": "linux-6.2"` the EOI leaves vCPU0 as a KVM_EXIT_IOAPIC_EOI and Remote IRR
clears. `DELETE /v1/vms/race` to start again. The live dashboard at `/ui` shows the VM's
IOAPIC and vCPU bitmaps change as you go.

Operation ids are the router functions' names (`create_vm`, `drive_line`, `write_eoi`, …):
stable, unique, usable as method names in generated clients.
"""


def assign_operation_ids(routes: Iterable[BaseRoute]) -> None:
    """Each documented route's operationId is its endpoint function's name, so a generated
    client has `create_vm`, `drive_line`, … rather than FastAPI's default (name + path +
    method). Two routes with one name would give two operations one id: refused here, when
    the app is built, rather than found by a client generator."""
    seen: dict[str, str] = {}
    for route in routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        name = route.operation_id or route.name
        where = f"{sorted(route.methods or ())} {route.path}"
        if name in seen:
            raise RuntimeError(f"operationId {name!r} of {where} is already {seen[name]}'s")
        seen[name] = where
        route.operation_id = name


# Within their tag these come first, in this order (the rest follow in declaration order):
# the line right after the entries it drives, the bitmaps before the bigger reports, and
# the scenario library before ad-hoc documents.
READING_ORDER = (
    "/v1/vms/{vm}/ioapic", "/v1/vms/{vm}/ioapic/pins/{pin}",
    "/v1/vms/{vm}/ioapic/pins/{pin}/line",
    "/v1/vms/{vm}/bitmaps", "/v1/vms/{vm}/events", "/v1/vms/{vm}/state",
    "/v1/scenarios", "/v1/scenarios/{name}", "/v1/scenarios/{name}/run",
)


def order_paths(spec: dict[str, Any], declared: Sequence[BaseRoute],
                tags: Sequence[dict[str, Any]]) -> None:
    """Paths by their first tag in the order of `tags`, then READING_ORDER, then in the order
    the routers declare them (list, create, get, delete, …), whatever order the route table
    uses (it is sorted by how often each route is called, see app.main). Swagger UI and ReDoc list
    operations in document order within a tag."""
    tag_rank = {t["name"]: i for i, t in enumerate(tags)}
    declared_rank: dict[str, int] = {}
    for route in declared:
        path = getattr(route, "path", None)
        if path is not None:
            declared_rank.setdefault(path, len(declared_rank))

    def key(item: tuple[str, dict[str, Any]]) -> tuple[int, int, int]:
        path, operations = item
        first_tags = [op.get("tags", [""])[0] for op in operations.values()
                      if isinstance(op, dict)]
        rank = min((tag_rank.get(t, len(tag_rank)) for t in first_tags),
                   default=len(tag_rank))
        first = READING_ORDER.index(path) if path in READING_ORDER else len(READING_ORDER)
        return rank, first, declared_rank.get(path, len(declared_rank))

    spec["paths"] = dict(sorted(spec.get("paths", {}).items(), key=key))
