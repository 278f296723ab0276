"""`irqlab events VM [--after N] [--chain SEQ]`: a VM's causal event log from a server, one
event per line (seq, actor, kind, fields, cause), as README's seed-race section shows it.
With --chain, only the events that led to SEQ, first cause first."""

from __future__ import annotations

import argparse
import sys
from typing import Any

DEFAULT_SERVER = "http://127.0.0.1:8000"


def add_parser(sub: Any) -> None:
    events = sub.add_parser(
        "events", help="print a VM's causal event log",
        epilog="exit status: 0 printed, 2 no such VM or event, or an unreachable server",
        description="Print the events of a VM on an irqlab server (GET /v1/vms/VM/events, "
                    "every page), one per line: seq, actor, kind, fields, and the seq of the "
                    "event that caused it. --chain SEQ prints the chain of causes that ends "
                    "at SEQ instead.")
    events.add_argument("vm", metavar="VM")
    events.add_argument("--after", type=int, default=0, metavar="N",
                        help="only events with seq > N")
    events.add_argument("--chain", type=int, metavar="SEQ",
                        help="only SEQ and its causes, oldest first")
    events.add_argument("--server", metavar="URL", default=DEFAULT_SERVER,
                        help=f"the irqlab server (default {DEFAULT_SERVER})")


def format_events(events: list[dict[str, Any]]) -> list[str]:
    """Aligned lines: `47 vcpu0 eoi  {'vector': 64, ...}  cause None`."""
    if not events:
        return []
    fields = [repr(e["fields"]) for e in events]
    seq_w = max(len(str(e["seq"])) for e in events)
    actor_w = max(len(e["actor"]) for e in events)
    kind_w = max(len(e["kind"]) for e in events)
    fields_w = max(len(f) for f in fields)
    return [f"{e['seq']:>{seq_w}} {e['actor']:<{actor_w}} {e['kind']:<{kind_w}} "
            f"{f:<{fields_w}}  cause {e['cause']}" for e, f in zip(events, fields, strict=True)]


def chain(events: list[dict[str, Any]], seq: int) -> list[dict[str, Any]]:
    """`seq` and the events that caused it, oldest first (as far as `events` reaches)."""
    by_seq = {e["seq"]: e for e in events}
    out: list[dict[str, Any]] = []
    at: int | None = seq
    while at is not None and at in by_seq:
        out.append(by_seq[at])
        at = by_seq[at]["cause"]
    return out[::-1]


def run(args: argparse.Namespace) -> int:
    import httpx

    base = args.server.rstrip("/")
    after = 0 if args.chain is not None else max(0, args.after)
    events: list[dict[str, Any]] = []
    try:
        with httpx.Client(base_url=base, timeout=httpx.Timeout(60.0, connect=5.0)) as http:
            while True:
                r = http.get(f"/v1/vms/{args.vm}/events", params={"after": after})
                if r.status_code != 200:
                    try:
                        detail = r.json().get("detail", r.text)
                    except ValueError:
                        detail = r.text
                    print(f"irqlab: {base} answered {r.status_code}: {detail}",
                          file=sys.stderr)
                    return 2
                page = r.json()
                events += page["events"]
                if not page["events"] or page["next_after"] >= page["last_seq"]:
                    break
                after = page["next_after"]
    except httpx.TransportError as exc:
        print(f"irqlab: cannot reach the irqlab server at {base} ({type(exc).__name__}: "
              f"{exc}); start one with `irqlab serve` or pass --server URL", file=sys.stderr)
        return 2
    if args.chain is not None:
        events = chain(events, args.chain)
        if not events:
            print(f"irqlab: VM {args.vm!r} has no event {args.chain} (any more)",
                  file=sys.stderr)
            return 2
    for line in format_events(events):
        print(line)
    return 0
