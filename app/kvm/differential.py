"""Run one sequence of guest/device operations on the engine model and on real KVM and record,
after every step, everything both can report, so that the first step where they disagree can be
found (issue 5's differential conformance; tests/kvm/test_random_diff.py drives it with random
sequences).

Steps are tuples:
    ("rte", vcpu, pin, entry)           the guest programs an RTE by MMIO (IOREGSEL/IOWIN), low
    ("rte", vcpu, pin, entry, halves)   dword then high, or the `halves` given ("low"/"high")
    ("line", pin, level)                a device drives the pin (KVM_IRQ_LINE_STATUS, source 0)
    ("msi", address_lo, address_hi, data)   KVM_SIGNAL_MSI
    ("ack", vcpu)                       the guest opens an interrupt window
    ("eoi", vcpu)                       the guest writes the LAPIC EOI register
    ("ioeoi", vcpu, vector)             the guest writes `vector` to the IOAPIC's EOI register
                                        (0x40: KVM's in-kernel IOAPIC and QEMU's version 0x20)
    ("tpr", vcpu, value)                the guest writes the LAPIC TPR (xAPIC MMIO 0xFEE00080)

After each step both sides report (Observation): the step's answer (the vector an ack took; the
status of a line or MSI: >0 accepted by that many LAPICs, 0 coalesced / nobody, -1 blocked; a
split irqchip's line status is split_line_status, see there);
per observed pin its RTE without Remote IRR and its Remote IRR; per vCPU IRR, ISR, TMR and PPR.

With irqchip "split" both sides run QEMU's IOAPIC (the engine's over the modelled kernel,
app.kvm.split_vmm's over the real one), configured alike by `ioapic_version` (0x20, or 0x11
without the EOI register) and `routes_before_service` (False: QEMU <= 7.2); in-kernel
ignores both.

Pins 0..15 are also wired to the in-kernel PIC, which the model does not have (it adds its own
answer to a line's status), so sequences compared for status use pins 16..23. Pin 8 is the RTC
pin, whose EOI tracking the model does not have either.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, replace
from typing import Any

from app.engine import flags as F
from app.engine import rte as R
from app.engine.flags import Behaviour
from app.engine.lapic import ppr
from app.engine.state import VmConfig
from app.engine.vm import Vm

from . import detect
from .guest import LAPIC_BASE
from .vm import KvmVm

LAPIC_TPR = LAPIC_BASE + 0x80
RAW_MASK = ~R.REMOTE_IRR_BIT & ((1 << 64) - 1)  # Remote IRR is its own observable
STEP_KINDS = ("rte", "line", "msi", "ack", "eoi", "tpr", "ioeoi")
IOAPIC_EOI = 0x40  # the EOI register's offset in the IOAPIC page

# The engine profile that models a host's KVM, by vendor module: upstream presets for upstream
# modules; kvm_pvm acknowledges with an implicit EOI (flag lapic_auto_eoi, preset kvm-pvm).
HOST_PROFILES = {"kvm_pvm": "kvm-pvm"}
UPSTREAM_PROFILE = "linux-latest"

Step = tuple[Any, ...]
# A step's answer: KVM's status (int), or for a split line step split_line_status's pair.
Status = int | tuple[str, tuple[tuple[int, int], ...]] | None


def _version(text: str) -> tuple[int, int] | None:
    m = re.match(r"v?(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def behaviour_for_release(release: str) -> Behaviour:
    """The upstream KVM behaviour of a kernel release, from each KVM flag's first release
    (FlagInfo.release; "?" marks a release not read off a tag): a flag whose release is newer
    than `release` has its pre-commit value (False); the others keep linux-latest's value."""
    host = _version(release)
    latest = F.PRESETS[UPSTREAM_PROFILE].flags
    if host is None:
        return latest
    older = {}
    for name, info in F.FLAGS.items():
        first = _version(info.release or "")
        if info.component == "kvm" and first is not None and host < first:
            older[name] = False
    return replace(latest, **older)


def preset_for_release(release: str) -> str:
    """The preset whose flags are exactly this release's upstream behaviour; if no preset
    matches (a release between two presets, where a flag changed that no preset pins), the
    newest linux-X.Y preset not newer than the release, which is then an approximation."""
    want = behaviour_for_release(release)
    if F.PRESETS[UPSTREAM_PROFILE].flags == want:
        return UPSTREAM_PROFILE
    numbered = sorted((v, name) for name in F.PRESETS
                      if name.startswith("linux-") and (v := _version(name[6:])) is not None)
    exact = [name for _, name in numbered if F.PRESETS[name].flags == want]
    if exact:
        return exact[-1]
    host = _version(release)
    older = [name for v, name in numbered if host is not None and v <= host]
    return older[-1] if older else numbered[0][1]


def host_profile(vendor: str | None = None, release: str | None = None) -> str:
    """The engine profile that should agree with this host's KVM: the preset of the running
    kernel's release (issue 5: "the host kernel's release selects the matching preset"), or
    for a vendor module that is not upstream, its own preset (kvm_pvm: kvm-pvm, measured on
    Linux 6.18; on an older kvm_pvm kernel the release's preset is used instead)."""
    if vendor is None:
        vendor = detect.vendor_module()
    if release is None:
        release = os.uname().release
    upstream = preset_for_release(release)
    own = HOST_PROFILES.get(vendor or "")
    if own is not None and upstream == UPSTREAM_PROFILE:
        return own
    return upstream


@dataclass(frozen=True)
class Observation:
    step: Step
    ack_vector: int | None  # what an "ack" step took (None for other steps or no vector)
    remote_irr: tuple[bool, ...]  # per pin in `pins`
    irr: tuple[int, ...]  # per vCPU, 256-bit bitmaps
    isr: tuple[int, ...]
    status: Status = None  # a "line" or "msi" step's status
    rte: tuple[int, ...] = ()  # per pin in `pins`, without Remote IRR
    tmr: tuple[int, ...] = ()  # per vCPU
    ppr: tuple[int, ...] = ()  # per vCPU


def differing_fields(model: Observation, real: Observation) -> list[str]:
    """The names of the observables in which two observations of one step differ."""
    return [f.name for f in fields(Observation)
            if getattr(model, f.name) != getattr(real, f.name)]


def split_line_status(answer: dict[str, Any]) -> tuple[str, tuple[tuple[int, int], ...]]:
    """What a line step answers with a split irqchip, on both sides: QEMU's ioapic_set_irq path
    (`status`: serviced, blocked-remote-irr, lowered, dropped-masked-edge, ignored) and, for
    every pin its ioapic_service delivered in this step (it services every pin with IRR set,
    not only this one), the kernel's answer to that pin's KVM_IRQ_LINE_STATUS(1).

    The engine's Vm.set_line and KvmVm.set_line (SplitVmm.set_irq) run the same QEMU code, so
    the path alone would only restate the IOAPIC state that is compared anyway; the kernel's
    answers (modelled kvm_set_irq on the engine side, the real ioctl's on the KVM side: LAPICs
    that accepted the MSI, 0 coalesced in IRR, -1 nobody) are what the kernel says about each
    delivery. The fields that are not comparable are left out: `kvm_status` (KvmVm only; it
    repeats this pin's entry of `delivered`), `delivered_to` (engine only: KVM does not say
    which LAPICs accepted), `outcome`/`reason` (derived from the same path and answers) and
    the edge's KVM_IRQ_LINE_STATUS(0), which neither side reports."""
    return str(answer["status"]), tuple(
        (int(d["pin"]), int(d["kvm_set_irq"])) for d in answer.get("delivered", ()))


def _check(step: Step) -> None:
    if not step or step[0] not in STEP_KINDS:
        raise ValueError(f"unknown step {step!r}")


def _halves(step: Step) -> tuple[str, ...]:
    return tuple(step[4]) if len(step) > 4 else ("low", "high")


def run_engine(
    steps: list[Step],
    pins: list[int],
    vcpus: int = 1,
    profile: str = UPSTREAM_PROFILE,
    irqchip: str = "kernel",
    ioapic_version: int = 0x20,
    routes_before_service: bool = True,
) -> list[Observation]:
    split = irqchip == "split"
    vm = Vm(VmConfig(
        vcpus=vcpus, irqchip=irqchip, profile=profile,
        ioapic_version=ioapic_version if split else None,
        overrides={} if not split or routes_before_service
        else {"qemu_routes_before_service": False}))
    out = []
    for step in steps:
        _check(step)
        ack: int | None = None
        status: Status = None
        kind = step[0]
        if kind == "rte":
            vm.write_rte(step[1], step[2], step[3], _halves(step))
        elif kind == "line":
            answer = vm.set_line(step[1], level=step[2])["steps"][0]
            status = split_line_status(answer) if irqchip == "split" else answer["status"]
        elif kind == "msi":
            status = vm.signal_msi(step[1], step[2], step[3])["status"]
        elif kind == "ack":
            ack = vm.ack(step[1])["vector"]
        elif kind == "tpr":
            vm.lapic_write(step[1], "tpr", step[2])
        elif kind == "ioeoi":
            vm.mmio(step[1], "write", IOAPIC_EOI, 4, step[2])
        else:
            # The real guest re-enters after its EOI write (scenario_diff._as_the_guest_does).
            vm.eoi(step[1], run_exits=True)
        redir = vm.ioapic.redir
        out.append(
            Observation(
                step,
                ack,
                tuple(bool(redir[p] & R.REMOTE_IRR_BIT) for p in pins),
                tuple(v.irr for v in vm.vcpus),
                tuple(v.isr for v in vm.vcpus),
                status,
                tuple(redir[p] & RAW_MASK for p in pins),
                tuple(v.tmr for v in vm.vcpus),
                tuple(ppr(v) for v in vm.vcpus),
            )
        )
    return out


def run_kvm(
    steps: list[Step],
    pins: list[int],
    vcpus: int = 1,
    irqchip: str = "kernel",
    ioapic_version: int = 0x20,
    routes_before_service: bool = True,
) -> list[Observation]:
    out = []
    with KvmVm(vcpus, irqchip=irqchip, ioapic_version=ioapic_version,
               routes_before_service=routes_before_service) as vm:
        for step in steps:
            _check(step)
            ack: int | None = None
            status: Status = None
            kind = step[0]
            if kind == "rte":
                vm.write_rte(step[1], step[2], step[3], _halves(step))
            elif kind == "line":
                answer = vm.set_line(step[1], step[2])
                status = split_line_status(answer) if irqchip == "split" else answer["status"]
            elif kind == "msi":
                status = vm.signal_msi(step[1], step[2], step[3])
            elif kind == "ack":
                ack = vm.ack(step[1])
            elif kind == "tpr":
                vm.mmio_write(step[1], LAPIC_TPR, step[2])
            elif kind == "ioeoi":
                vm.mmio(step[1], "write", IOAPIC_EOI, step[2])
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
                    status,
                    tuple(redir[p] & RAW_MASK for p in pins),
                    tuple(v["tmr"] for v in views),
                    tuple(v["ppr"] for v in views),
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


def describe(divergence: tuple[int, Observation, Observation], steps: list[Step]) -> str:
    """A readable account of a divergence: the steps up to it and what differed."""
    i, m, r = divergence
    lines = [f"first divergence at step {i}: {steps[i]!r}"]
    for name in differing_fields(m, r):
        mv, rv = getattr(m, name), getattr(r, name)
        if name in ("irr", "isr", "tmr"):
            mv = [[hex(x) for x in range(256) if b >> x & 1] for b in mv]
            rv = [[hex(x) for x in range(256) if b >> x & 1] for b in rv]
        elif name == "rte":
            mv, rv = [hex(x) for x in mv], [hex(x) for x in rv]
        lines.append(f"  {name}: model {mv} kvm {rv}")
    lines.append("steps:")
    lines += [f"  {j}: {s!r}" for j, s in enumerate(steps[: i + 1])]
    return "\n".join(lines)
