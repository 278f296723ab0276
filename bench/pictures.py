"""How long app.pictures takes to draw a VM's log: the timeline SVG, the Perfetto trace and
the VCD of windows of 500 and 5000 events (IRQLAB_MAX_PICTURE_EVENTS' default), a 4096-vCPU
VM's log, and the HTML report of the seed race. The windows are of a level-interrupt
ping-pong on a 16-vCPU split VM (line up, deliver, ack, EOI exit, Remote IRR cleared, line
down), so every span kind occurs.

Prints the median and range of --rounds rounds per case, and the load average.

Usage: python bench/pictures.py [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import scenarios
from app.engine.scenario import run_scenario
from app.engine.vm import Vm, config_from_dict
from app.pictures import build, from_vm, perfetto, render_html, render_svg, vcd


def busy_vm(events: int) -> Vm:
    vm = Vm(config_from_dict({"vcpus": 16, "irqchip": "split", "profile": "linux-latest"}))
    vm.write_rte(0, 5, 0x8040 | (3 << 56))
    for n in range(16):
        vm.enter(n)
    while vm.log.next_seq <= events:
        vm.set_line(5, level=1)
        vm.ack(3)
        vm.set_line(5, level=0)
        vm.eoi(3)
        vm.enter(3)
    return vm


def timed(fn: Callable[[], object], rounds: int) -> tuple[float, float, float]:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), min(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    for n in (500, 5000):
        vm = busy_vm(n)
        cases: dict[str, Callable[[], object]] = {
            "timeline model": lambda vm=vm, n=n: build(from_vm(vm, "vm", limit=n)),
            "SVG": lambda vm=vm, n=n: render_svg(build(from_vm(vm, "vm", limit=n))),
            "Perfetto JSON": lambda vm=vm, n=n: perfetto([from_vm(vm, "vm", limit=n)]),
            "VCD": lambda vm=vm, n=n: vcd([from_vm(vm, "vm", limit=n)]),
        }
        for name, fn in cases.items():
            med, lo, hi = timed(fn, args.rounds)
            print(f"{n:5d} events  {name:15s} {med:8.1f} ms  ({lo:.1f}–{hi:.1f})")
    # 4096 vCPUs: a retarget's broadcast scan request makes ~4100 events, nearly all of
    # them housekeeping that the quiet-vCPU lane folds into a few rows.
    big = Vm(config_from_dict({"vcpus": 4096, "irqchip": "split", "x2apic": True}))
    big.write_rte(0, 5, 0x8040 | (7 << 56))
    big.set_line(5, level=1)
    big.enter(7)
    big.ack(7)
    for name, fn in {"SVG": lambda: render_svg(build(from_vm(big, "big"))),
                     "Perfetto JSON": lambda: perfetto([from_vm(big, "big")])}.items():
        med, lo, hi = timed(fn, args.rounds)
        print(f"{len(big.log.events):5d} events, 4096 vCPUs  {name:15s} {med:8.1f} ms  "
              f"({lo:.1f}–{hi:.1f})")
    doc = scenarios.get("seed-race-split")
    result = run_scenario(doc, observe=True)
    med, lo, hi = timed(lambda: render_html(result, doc), args.rounds)
    print(f"seed-race-split HTML report  {med:8.1f} ms  ({lo:.1f}–{hi:.1f})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
