"""Seeded random operation sequences in the differential harness's step language
(app.kvm.differential), reproducible from (seed, index) alone, and their scenario documents.

The distribution is the one the real-KVM random test draws with hypothesis
(tests/kvm/test_random_diff.py): one to three IOAPIC pins programmed first, then line changes,
RTE writes (both dwords in either order, or one of them), MSIs, interrupt windows, EOIs, IOAPIC
EOI-register writes and TPR writes on a VM of one or two vCPUs. A campaign needs sequence i
without drawing sequences 0..i-1 (so any worker can run any slice), hence a `random.Random`
seeded from the pair instead of hypothesis's shrinking stream.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from app.engine import rte as R
from app.kvm.differential import IOAPIC_EOI, Step

# GSIs 16..23 reach the IOAPIC only (0..15 are also wired to the in-kernel PIC, 8 is the RTC).
PINS: tuple[int, ...] = (16, 17, 18)
# Shared priority classes (0x40/0x41, 0x50/0x51) and distinct ones, so PPR blocking, vector
# sharing between pins and MSIs, and priority order all occur.
VECTORS: tuple[int, ...] = (0x31, 0x40, 0x41, 0x50, 0x51, 0x80, 0xE0)
TPRS: tuple[int, ...] = (0x00, 0x30, 0x40, 0x50)
# The split IOAPIC: (version, routes_before_service); QEMU 8.0+ weighted double.
SPLIT_IOAPICS: tuple[tuple[int, bool], ...] = ((0x20, True), (0x20, True), (0x20, False),
                                               (0x11, True))
MAX_STEPS = 32
KINDS = ("line", "line", "line", "rte", "msi", "ack", "ack", "ack", "ack", "eoi", "eoi", "tpr",
         "ioeoi")
HALVES: tuple[tuple[str, ...], ...] = (("low", "high"), ("low", "high"), ("high", "low"),
                                       ("low",), ("high",))


@dataclass(frozen=True, slots=True)
class Case:
    """Sequence `index` of campaign `seed`: the VM it runs on and its steps."""

    seed: int
    index: int
    vcpus: int
    ioapic_version: int
    routes_before_service: bool
    steps: tuple[Step, ...]


def _rte(rng: random.Random, vcpus: int) -> int:
    return R.encode(
        vector=rng.choice(VECTORS),
        trigger=rng.choice(("edge", "level")),
        masked=rng.randrange(6) == 0,  # one write in six masks the pin
        dest=rng.choice([*range(vcpus), *range(vcpus), 0xFF]),  # 0xff: physical broadcast
    )


def generate(seed: int, index: int) -> Case:
    """Sequence `index` of campaign `seed` (a pure function of the two)."""
    rng = random.Random(f"irqlab-campaign:{seed}:{index}")
    vcpus = rng.randint(1, 2)
    version, routes_first = rng.choice(SPLIT_IOAPICS)
    steps: list[Step] = []
    for pin in rng.sample(PINS, rng.randint(1, 3)):
        steps.append(("rte", rng.randrange(vcpus), pin, _rte(rng, vcpus)))
    for _ in range(rng.randint(1, MAX_STEPS - len(steps))):
        kind = rng.choice(KINDS)
        cpu = rng.randrange(vcpus)
        if kind == "line":
            pin = rng.choice(PINS)
            action = rng.choice(("assert", "deassert", "pulse"))
            if action == "pulse":
                steps += [("line", pin, 1), ("line", pin, 0)]
            else:
                steps.append(("line", pin, 1 if action == "assert" else 0))
        elif kind == "rte":
            steps.append(("rte", cpu, rng.choice(PINS), _rte(rng, vcpus), rng.choice(HALVES)))
        elif kind == "msi":
            level = rng.random() < 0.5
            # Fixed, physical; a level MSI carries trigger (bit 15) and assert (bit 14).
            data = rng.choice(VECTORS) | (0xC000 if level else 0)
            steps.append(("msi", 0xFEE00000 | cpu << 12, 0, data))
        elif kind == "tpr":
            steps.append(("tpr", cpu, rng.choice(TPRS)))
        elif kind == "ioeoi":
            steps.append(("ioeoi", cpu, rng.choice(VECTORS)))
        else:
            steps.append((kind, cpu))
    return Case(seed, index, vcpus, version, routes_first, tuple(steps))


IOREGSEL = 0x00
IOWIN = 0x10


def scenario_steps(steps: tuple[Step, ...] | list[Step]) -> list[dict[str, Any]]:
    """The differential steps as scenario steps (the same guest and device operations)."""
    out: list[dict[str, Any]] = []
    for s in steps:
        kind = s[0]
        if kind == "rte":
            halves = s[4] if len(s) > 4 else ("low", "high")
            if tuple(halves) in (("low", "high"), ("high", "low")):
                order = "low-first" if halves[0] == "low" else "high-first"
                out.append({"op": "write_rte", "vcpu": s[1], "pin": s[2], "entry": hex(s[3]),
                            "order": order})
            else:  # one dword only: the guest's own IOREGSEL/IOWIN pair
                high = halves[0] == "high"
                out.append({"op": "mmio", "vcpu": s[1], "access": "write", "offset": IOREGSEL,
                            "value": hex(0x10 + 2 * s[2] + high)})
                out.append({"op": "mmio", "vcpu": s[1], "access": "write", "offset": IOWIN,
                            "value": hex(s[3] >> 32 if high else s[3] & 0xFFFFFFFF)})
        elif kind == "line":
            out.append({"op": "line", "pin": s[1], "level": s[2]})
        elif kind == "msi":
            out.append({"op": "msi", "address_lo": hex(s[1]), "address_hi": hex(s[2]),
                        "data": hex(s[3])})
        elif kind == "ack":
            out.append({"op": "ack", "vcpu": s[1]})
        elif kind == "eoi":
            # As the harness (and a real guest) does: the EOI, then the re-entry that takes
            # a split EOI exit to the VMM.
            out.append({"op": "eoi", "vcpu": s[1], "run_exits": True})
        elif kind == "tpr":
            out.append({"op": "lapic", "vcpu": s[1], "tpr": hex(s[2])})
        elif kind == "ioeoi":
            out.append({"op": "mmio", "vcpu": s[1], "access": "write", "offset": hex(IOAPIC_EOI),
                        "value": hex(s[2])})
        else:
            raise ValueError(f"unknown step kind {kind!r}")
    return out


def vm_block(case: Case, irqchip: str) -> dict[str, Any]:
    """The scenario `vm` block for `case` (the split IOAPIC's configuration included)."""
    vm: dict[str, Any] = {"vcpus": case.vcpus, "irqchip": irqchip}
    if irqchip == "split":
        vm["ioapic_version"] = case.ioapic_version
        if not case.routes_before_service:
            vm["overrides"] = {"qemu_routes_before_service": False}
    return vm
