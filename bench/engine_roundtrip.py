"""Level-triggered round trip in process, event log on:
device asserts the line -> IOAPIC delivers (Remote IRR set) -> vCPU acknowledges -> the
handler quiets the device (line low) -> EOI -> Remote IRR cleared.

Usage: python bench/engine_roundtrip.py [--irqchip kernel|split] [--seconds S]
"""

from __future__ import annotations

import argparse
import time

from app.engine import rte as R
from app.engine.vm import Vm, VmConfig


def setup(irqchip: str) -> Vm:
    vm = Vm(VmConfig(vcpus=2, irqchip=irqchip))
    vm.write_rte(0, 5, R.encode(vector=0x40, trigger="level", dest=0))
    vm.enter(0)
    vm.enter(1)
    return vm


def one_round_trip(vm: Vm) -> None:
    vm.set_line(5, 1)
    assert vm.ack(0)["vector"] == 0x40
    vm.set_line(5, 0)
    vm.eoi(0, run_exits=True)


def run(irqchip: str, seconds: float) -> float:
    vm = setup(irqchip)
    for _ in range(1000):
        one_round_trip(vm)
    assert not vm.ioapic.redir[5] & R.REMOTE_IRR_BIT
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(1000):
            one_round_trip(vm)
        n += 1000
        now = time.perf_counter()
        if now >= deadline:
            break
        if len(vm.log.events) > 2_000_000:
            vm.log.events.clear()  # keep memory flat; appending is what we measure
    assert not vm.ioapic.redir[5] & R.REMOTE_IRR_BIT
    return n / (now - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--irqchip", choices=["kernel", "split", "both"], default="both")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    modes = ["kernel", "split"] if args.irqchip == "both" else [args.irqchip]
    for mode in modes:
        rate = run(mode, args.seconds)
        print(f"{mode:6}  {rate:10,.0f} level round trips/s  ({1e6 / rate:.2f} us each)")


if __name__ == "__main__":
    main()
