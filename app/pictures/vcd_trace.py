"""A Value Change Dump (pyvcd) of the signals the timeline draws, for GTKWave or Surfer.

Scopes: irqlab.<timeline> (one per VM or scenario variant), in it `ioapic` with
pin<N>_line and pin<N>_remote_irr (1-bit wires, for every pin the window touches or the end
state has set) and vcpu<N> with irr, isr (256-bit registers: bit v is vector v; IRR includes
PIR) and irr_count / isr_count (integers) for every vCPU with interrupt traffic. The time is
the event seq (timescale 1 us: 1 µs = 1 event); a signal set before the window starts at the
window's first seq minus one.
"""

from __future__ import annotations

import io
import re
from typing import Any

from vcd import VCDWriter
from vcd.writer import Variable

from .timeline import Span, Timeline

WIDTH = 256


def scope_name(title: str) -> str:
    """A VCD scope name: letters, digits and underscores."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", title).strip("_") or "vm"


def _changes(tl: Timeline, first: int) -> list[tuple[int, int, Span]]:
    out: list[tuple[int, int, Span]] = []
    for sp in tl.spans:
        if sp.kind == "request":
            continue
        out.append((tl.rows[sp.start].seq if sp.start is not None else first, 1, sp))
        if sp.end is not None:
            out.append((tl.rows[sp.end].seq, 0, sp))
    # At one seq, clears before sets (an ack clears IRR and sets ISR of the same vector).
    out.sort(key=lambda c: (c[0], c[1]))
    return out


def write_vcd(timelines: list[Timeline]) -> str:
    buf = io.StringIO()
    used: set[str] = set()
    with VCDWriter(buf, timescale="1 us", date="irqlab", version="irqlab pictures") as w:
        plans: list[tuple[Timeline, str, dict[tuple[Any, ...], Variable[Any]], int]] = []
        for tl in timelines:
            name = scope_name(tl.rec.title)
            base, k = name, 2
            while name in used:
                name, k = f"{base}_{k}", k + 1
            used.add(name)
            first = max(0, tl.rec.first_seq - 1)
            plans.append((tl, f"irqlab.{name}", _register(w, tl, f"irqlab.{name}"), first))
        changes: list[tuple[int, int, int, Span]] = []
        for p_i, (tl, _, _, first) in enumerate(plans):
            changes.extend((ts, order, p_i, sp) for ts, order, sp in _changes(tl, first))
        changes.sort(key=lambda c: (c[0], c[1]))
        state: dict[tuple[int, tuple[Any, ...]], int] = {}
        for ts, order, p_i, sp in changes:
            tl, _, regs, _ = plans[p_i]
            if sp.kind in ("line", "remote-irr"):
                w.change(regs[(sp.kind, sp.key[1])], ts, order)
                continue
            n, v = sp.key[1], sp.key[2]
            key = (p_i, (sp.kind, n))
            bits = state.get(key, 0)
            bits = bits | (1 << v) if order else bits & ~(1 << v)
            state[key] = bits
            w.change(regs[(sp.kind, n)], ts, bits)
            w.change(regs[(f"{sp.kind}_count", n)], ts, bin(bits).count("1"))
    return buf.getvalue()


def _register(w: VCDWriter, tl: Timeline, scope: str) -> dict[tuple[Any, ...], Variable[Any]]:
    regs: dict[tuple[Any, ...], Variable[Any]] = {}
    pins = sorted({sp.key[1] for sp in tl.spans if sp.kind in ("line", "remote-irr")}
                  | {int(r.fields["pin"]) for r in tl.rows
                     if isinstance(r.fields.get("pin"), int) and r.actor in ("device", "ioapic")})
    for pin in pins:
        regs[("line", pin)] = w.register_var(f"{scope}.ioapic", f"pin{pin}_line", "wire",
                                             size=1, init=0)
        regs[("remote-irr", pin)] = w.register_var(f"{scope}.ioapic", f"pin{pin}_remote_irr",
                                                   "wire", size=1, init=0)
    vcpus = sorted({sp.key[1] for sp in tl.spans if sp.kind in ("irr", "isr")}
                   | {n for r in tl.rows if r.kind in ("accepted", "ack", "eoi")
                      and (n := _vcpu(r.actor)) is not None})
    for n in vcpus:
        for kind in ("irr", "isr"):
            regs[(kind, n)] = w.register_var(f"{scope}.vcpu{n}", kind, "reg", size=WIDTH,
                                             init=0)
            regs[(f"{kind}_count", n)] = w.register_var(f"{scope}.vcpu{n}", f"{kind}_count",
                                                        "integer", size=16, init=0)
    return regs


def _vcpu(actor: str) -> int | None:
    return int(actor[4:]) if actor.startswith("vcpu") and actor[4:].isdigit() else None
