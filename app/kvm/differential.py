"""Run one sequence of guest/device operations on the engine model and on real KVM and record,
after every step, the state both can report: the pin's remote IRR and vCPU n's IRR/ISR.

Steps are tuples:
    ("rte", vcpu, pin, entry)   the guest programs an RTE (IOREGSEL/IOWIN, low then high)
    ("line", pin, level)        a device drives the pin (KVM_IRQ_LINE_STATUS)
    ("ack", vcpu)               the guest opens an interrupt window
    ("eoi", vcpu)               the guest writes the LAPIC EOI register
    ("tpr", vcpu, value)        the guest writes the LAPIC TPR (xAPIC MMIO 0xFEE00080)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.engine import rte as R
from app.engine.state import VmConfig
from app.engine.vm import Vm

from .guest import LAPIC_BASE
from .vm import KvmVm

LAPIC_TPR = LAPIC_BASE + 0x80

Step = tuple[Any, ...]


@dataclass(frozen=True)
class Observation:
    step: Step
    ack_vector: int | None  # what an "ack" step returned (None for other steps or no vector)
    remote_irr: tuple[bool, ...]  # per pin in `pins`
    irr: tuple[int, ...]  # per vCPU, 256-bit bitmaps
    isr: tuple[int, ...]


def _check(step: Step) -> None:
    if not step or step[0] not in ("rte", "line", "ack", "eoi", "tpr"):
        raise ValueError(f"unknown step {step!r}")


def run_engine(
    steps: list[Step], pins: list[int], vcpus: int = 1, profile: str = "linux-latest"
) -> list[Observation]:
    vm = Vm(VmConfig(vcpus=vcpus, irqchip="kernel", profile=profile))
    out = []
    for step in steps:
        _check(step)
        ack: int | None = None
        if step[0] == "rte":
            vm.write_rte(step[1], step[2], step[3])
        elif step[0] == "line":
            vm.set_line(step[1], level=step[2])
        elif step[0] == "ack":
            ack = vm.ack(step[1])["vector"]
        elif step[0] == "tpr":
            vm.lapic_write(step[1], "tpr", step[2])
        else:
            vm.eoi(step[1])
        out.append(
            Observation(
                step,
                ack,
                tuple(bool(vm.ioapic.redir[p] & R.REMOTE_IRR_BIT) for p in pins),
                tuple(v.irr for v in vm.vcpus),
                tuple(v.isr for v in vm.vcpus),
            )
        )
    return out


def run_kvm(steps: list[Step], pins: list[int], vcpus: int = 1) -> list[Observation]:
    out = []
    with KvmVm(vcpus) as vm:
        for step in steps:
            _check(step)
            ack: int | None = None
            if step[0] == "rte":
                vm.write_rte(step[1], step[2], step[3])
            elif step[0] == "line":
                vm.set_line(step[1], step[2])
            elif step[0] == "ack":
                ack = vm.ack(step[1])
            elif step[0] == "tpr":
                vm.mmio_write(step[1], LAPIC_TPR, step[2])
            else:
                vm.eoi(step[1])
            redir = vm.redirection_table()
            views = [vm.vcpu_view(n) for n in range(vcpus)]
            out.append(
                Observation(
                    step,
                    ack,
                    tuple(bool(redir[p] & R.REMOTE_IRR_BIT) for p in pins),
                    tuple(v["irr"] for v in views),
                    tuple(v["isr"] for v in views),
                )
            )
    return out


def first_divergence(
    model: list[Observation], real: list[Observation]
) -> tuple[int, Observation, Observation] | None:
    """The first step whose observations differ: (index, model's, kernel's), or None."""
    for i, (m, r) in enumerate(zip(model, real, strict=True)):
        if m != r:
            return i, m, r
    return None
