"""Full EOI-exit-bitmap rescan cost: every vCPU consumes KVM_REQ_SCAN_IOAPIC after a routing
change (vcpu_scan_ioapic on each). KVM pays O(vCPUs x routes); irqlab builds an inverted
index once per routing/APIC-map generation and pays O(vCPUs + routes).

All vCPUs are in x2APIC mode. "24 pins" uses the in-kernel IOAPIC with 24 level RTEs;
1024 and 4096 routes use a split irqchip with that many level MSI routes
(nr_reserved_ioapic_pins = routes, 32-bit x2APIC ids). Each route/pin targets one vCPU
(physical), spread over all vCPUs, and every fourth vCPU has one routed vector pending in
its ISR so the pending_eoi path is exercised too.

Usage: python bench/engine_rescan.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc

from app.engine import rte as R
from app.engine.msi import LapicIrq, irq_to_msi
from app.engine.requests import vcpu_enter
from app.engine.vm import Vm, VmConfig

VCPUS = (256, 1024, 4096)
ROUTES = (24, 1024, 4096)


def build(vcpus: int, routes: int) -> Vm:
    split = routes > 24
    vm = Vm(VmConfig(vcpus=vcpus, irqchip="split" if split else "kernel", x2apic=True,
                     x2apic_format=True, nr_reserved_ioapic_pins=routes if split else 24,
                     event_log=False))
    if split:
        entries = []
        for gsi in range(routes):
            dest = (gsi * 7919) % vcpus
            irq = LapicIrq(0x20 + gsi % 0xD0, 0, False, True, dest)
            lo, hi, data = irq_to_msi(irq, True)
            entries.append((gsi, "msi", lo, hi, data))
        vm.set_routes(entries)
    else:
        for pin in range(24):
            vm.ioapic.redir[pin] = R.encode(vector=0x30 + pin, trigger="level",
                                            dest=(pin * 7919) % min(vcpus, 256))
        vm.routing_changed()
    for v in vm.vcpus[::4]:
        v.isr |= 1 << (0x20 + v.idx % 0xD0)
    return vm


def full_rescan(vm: Vm) -> float:
    """Seconds for: a routing change invalidates the scan index, SCAN on every vCPU, and
    every vCPU consumes it (index rebuilt once, then one scan per vCPU)."""
    vm.routing_changed()
    vm.request_scan(None, None)
    start = time.perf_counter()
    for v in vm.vcpus:
        vcpu_enter(vm, v, None)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print("full rescan of all vCPUs, median of", args.repeat, "runs (ms)")
    print(f"{'vCPUs':>6} | " + " | ".join(f"{r:>5} routes" for r in ROUTES))
    for n in VCPUS:
        cells = []
        for r in ROUTES:
            vm = build(n, r)
            times = [full_rescan(vm) for _ in range(args.repeat)]
            cells.append(f"{statistics.median(times) * 1e3:11.2f}")
        print(f"{n:>6} | " + " | ".join(cells))
    tracemalloc.start()
    vm = Vm(VmConfig(vcpus=4096, x2apic=True))
    for v in vm.vcpus:
        vcpu_enter(vm, v, None)
    size, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"memory of a 4096-vCPU VM (in-kernel irqchip, x2APIC, entered once): "
          f"{size / 2**20:.2f} MiB")
    del vm


if __name__ == "__main__":
    main()
