"""Level-triggered round trip in process, event log on:
device asserts the line -> IOAPIC delivers (Remote IRR set) -> vCPU enters and acknowledges
-> the handler quiets the device (line low) -> EOI -> Remote IRR cleared.

Two levels are measured:
  transitions  the engine's transition functions themselves (T1 ioapic_set_irq, T11
               vcpu_enter, T7 acknowledge, T8 write_eoi; split mode adds QEMU's
               ioapic_set_irq and the KVM_EXIT_IOAPIC_EOI round trip through the VMM);
  vm-ops       the Vm methods the HTTP API calls (argument checks + result dicts on top).

Usage: python bench/engine_roundtrip.py [--seconds S] [--runs N]
(IRQLAB_ENGINE=python measures the pure-Python engine where the compiled one is installed.)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from app.engine import ENGINE_BUILD
from app.engine import rte as R
from app.engine.ioapic_kvm import ioapic_set_irq
from app.engine.ioapic_qemu import qemu_ioapic_set_irq
from app.engine.lapic import acknowledge, write_eoi
from app.engine.requests import vcpu_enter
from app.engine.vm import Vm, VmConfig

PIN, VECTOR = 5, 0x40


def setup(irqchip: str) -> Vm:
    vm = Vm(VmConfig(vcpus=2, irqchip=irqchip))
    vm.write_rte(0, PIN, R.encode(vector=VECTOR, trigger="level", dest=0))
    vm.enter(0)
    vm.enter(1)
    return vm


def transitions(vm: Vm) -> Callable[[], None]:
    v = vm.vcpus[0]
    if vm.config.irqchip == "kernel":

        def one() -> None:
            ioapic_set_irq(vm, PIN, 0, True, None)
            vcpu_enter(vm, v, None)
            acknowledge(vm, v, None)
            ioapic_set_irq(vm, PIN, 0, False, None)
            write_eoi(vm, v, None)
    else:

        def one() -> None:
            qemu_ioapic_set_irq(vm, PIN, True, None)
            vcpu_enter(vm, v, None)
            acknowledge(vm, v, None)
            qemu_ioapic_set_irq(vm, PIN, False, None)
            write_eoi(vm, v, None)
            vcpu_enter(vm, v, None)  # KVM_EXIT_IOAPIC_EOI -> ioapic_eoi_broadcast

    return one


def vm_ops(vm: Vm) -> Callable[[], None]:
    def one() -> None:
        vm.set_line(PIN, 1)
        vm.ack(0)
        vm.set_line(PIN, 0)
        vm.eoi(0, run_exits=True)

    return one


def measure(irqchip: str, level: str, seconds: float) -> tuple[float, float]:
    """(round trips per wall-clock second, per CPU-second of this process). On a shared VM
    the wall-clock rate includes time the host gave to others (steal); the CPU-time rate
    does not, so it is the steadier figure."""
    vm = setup(irqchip)
    one = transitions(vm) if level == "transitions" else vm_ops(vm)
    for _ in range(1000):
        one()
    n = 0
    start = time.perf_counter()
    cpu_start = time.process_time()
    deadline = start + seconds
    while True:
        for _ in range(1000):
            one()
        n += 1000
        now = time.perf_counter()
        if now >= deadline:
            cpu = time.process_time() - cpu_start
            break
    # Every round trip must have completed: Remote IRR clear, nothing in service.
    assert not vm.ioapic.redir[PIN] & R.REMOTE_IRR_BIT
    assert not vm.vcpus[0].isr and not vm.vcpus[0].irr
    assert len(vm.log.events) > n  # the log was on
    return n / (now - start), n / cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print(f"level round trips per second, event log on (median of {args.runs} runs); "
          f"engine: {ENGINE_BUILD}")
    for irqchip in ("kernel", "split"):
        for level in ("transitions", "vm-ops"):
            runs = [measure(irqchip, level, args.seconds) for _ in range(args.runs)]
            rates = [r[0] for r in runs]
            med = statistics.median(rates)
            cpu = statistics.median(r[1] for r in runs)
            print(f"  {irqchip:6} {level:12} {med:10,.0f}/s  ({1e6 / med:5.2f} us each; "
                  f"min {min(rates):,.0f}, max {max(rates):,.0f}); "
                  f"per CPU-second {cpu:,.0f}")


if __name__ == "__main__":
    main()
