"""Helpers shared by the engine tests.

Everything here drives the engine only through its public operations (Vm methods) and reads
state the way the spec tables do: one row of cells per step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.engine import rte as R
from app.engine.state import requests_list
from app.engine.vm import Vm, VmConfig

# A level pin P programmed with vector V, as in spec §3 ("Common setup").
P = 5
V = 0x40


def make_vm(
    profile: str = "linux-latest", irqchip: str = "kernel", vcpus: int = 2, **config: Any
) -> Vm:
    return Vm(VmConfig(vcpus=vcpus, irqchip=irqchip, profile=profile, **config))


def reqs(vm: Vm, n: int) -> str:
    """Pending requests of vCPU n as "A+B" in KVM's consumption order ("" for none)."""
    return "+".join(requests_list(vm.vcpus[n].requests))


def row(vm: Vm, pin: int, vector: int) -> tuple[Any, ...]:
    """One row of a §3 table: (RIRR, irr, vN IRR/ISR..., hN..., vN requests...).

    For a 2-vCPU VM: (RIRR, irr, "v0 IRR/ISR", "v1 IRR/ISR", h0, h1, req0, req1)."""
    io = vm.ioapic
    cells: list[Any] = [int(R.remote_irr(io.redir[pin])), io.irr >> pin & 1]
    cells += [f"{v.irr >> vector & 1}/{v.isr >> vector & 1}" for v in vm.vcpus]
    cells += [v.handled >> vector & 1 for v in vm.vcpus]
    cells += [reqs(vm, v.idx) for v in vm.vcpus]
    return tuple(cells)


def rirr(vm: Vm, pin: int) -> int:
    return int(R.remote_irr(vm.ioapic.redir[pin]))


def remote_irr_pins(vm: Vm) -> list[int]:
    return [p for p, e in enumerate(vm.ioapic.redir) if e & R.REMOTE_IRR_BIT]


def has(bits: int, vector: int) -> int:
    return bits >> vector & 1


def race_vm(
    profile: str, irqchip: str, apicv: bool = False, overrides: dict[str, bool] | None = None
) -> Vm:
    """§3 common setup: 2 xAPIC vCPUs (ids 0, 1); pin P level, unmasked, vector V, dest 0;
    line low; a prior scan gave h0[V]=1, h1[V]=0 and no request is pending."""
    vm = make_vm(profile, irqchip, vcpus=2, apicv=apicv, overrides=overrides or {})
    vm.write_rte(0, P, R.encode(vector=V, trigger="level", dest=0))
    vm.enter(0)
    vm.enter(1)
    assert row(vm, P, V) == (0, 0, "0/0", "0/0", 1, 0, "", "")
    return vm


def accepted(vm: Vm, since_seq: int = 0) -> list[tuple[int, int]]:
    """(vcpu, vector) of every LAPIC accept logged after `since_seq`."""
    return [
        (int(e["actor"][4:]), e["fields"]["vector"])
        for e in vm.log.since(since_seq)
        if e["kind"] == "accepted"
    ]


def accepts_during(vm: Vm, op: Callable[[], Any]) -> list[int]:
    """Run `op` and return the vCPUs that accepted an interrupt meanwhile (one entry per
    accept, from the event log)."""
    before = last_seq(vm)
    op()
    return [v for v, _vec in accepted(vm, before)]


def last_seq(vm: Vm) -> int:
    return vm.log.next_seq - 1


def exit_vectors(result: dict[str, Any]) -> list[int]:
    """Vectors of the KVM_EXIT_IOAPIC_EOI exits reported by enter() / eoi(run_exits=True)."""
    exits = result.get("exits", []) + result.get("entry_exits", [])
    return [e["vector"] for e in exits if e["reason"] == "KVM_EXIT_IOAPIC_EOI"]


def quiescent(vm: Vm) -> bool:
    return all(not (v.irr or v.isr or v.pir or v.requests) for v in vm.vcpus)


def quiesce(vm: Vm, rounds: int = 50) -> None:
    """Drive the VM to quiescence: lower every line (every source), then repeatedly let each
    vCPU enter, take every deliverable interrupt and EOI it (running the EOI exits), until
    nothing is in IRR/ISR/PIR and no request is pending."""
    for pin in range(R.NUM_PINS):
        for source in range(64):
            if vm.ioapic.irq_states[pin] >> source & 1:
                vm.set_line(pin, 0, source=source)
    for _ in range(rounds):
        if quiescent(vm):
            return
        for v in vm.vcpus:
            vm.enter(v.idx)
            while vm.ack(v.idx)["vector"] is not None:
                pass
            while v.isr:
                vm.eoi(v.idx, run_exits=True)
            vm.enter(v.idx)
    raise AssertionError("the VM did not quiesce")
