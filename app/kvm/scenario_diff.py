"""Differential conformance: run a scenario document's steps on the engine model and on this
host's real KVM (irqlab's own guest) side by side, and compare after every step what both can
report.

Per variant of the document (its matrix, or `default`):

- the engine VM is built from the variant's config (profile, x2apic, ...), the KvmVm has the
  same irqchip and number of vCPUs (the host kernel decides everything else; its guest is
  xAPIC). A split variant's KvmVm has irqlab as its VMM (app.kvm.split_vmm): the same QEMU
  IOAPIC code as the model's, with the variant's IOAPIC version and QEMU flag
  (qemu_routes_before_service), on the real kernel; its Remote IRR and RTEs are the VMM's;
- each step runs on the engine (app.engine.scenario.Runner, handlers included), then on KVM;
- after it, these observables are compared: per pin the RTE (raw, without Remote IRR) and
  Remote IRR; per vCPU the IRR/ISR/TMR vector lists and PPR; the counters of `count` steps;
  and the step's own answer (the vector of ack/take, the value of an MMIO read, the
  interrupts a settle took).

Step support on KVM: line (level / action, source 0), write_rte, patch_rte, mmio (4-byte),
msi, ack, eoi, enter (a no-op: the guest is entered at every step anyway), count, take and
settle (the guest acks through its interrupt window and the handler's steps run on the same
vCPU, as the engine's Runner does; handlers may use the steps above plus ack/expect).
`expect` steps describe the model and are ignored (not compared). Any other op (irq, routes,
lapic, exit, resampler, irqfd, advance, sti, cli, when), a handler using one of them (or
take/settle/sti/cli/when), a line with a non-zero source or an MMIO access of another size
stops the variant, reported as unsupported at that step.
"""

from __future__ import annotations

import os
from typing import Any

from app.engine import rte as R
from app.engine.errors import EngineError
from app.engine.lapic import ppr
from app.engine.scenario import (
    DEFAULT_SETTLE_BUDGET,
    Runner,
    entry_from,
    msi_from_decoded,
    parse_int,
    run_scenario,
    variants,
)
from app.engine.vm import Vm

from . import detect
from .vm import KvmVm, KvmVmError

DEFAULT_PROFILE = "linux-latest"
EXPECT_IGNORED = "expectation steps describe the model: ignored (not run on KVM, not compared)"
# A settle on KVM acks through the real guest: at most this many interrupts per settle.
KVM_SETTLE_CAP = 1000
SUPPORTED_OPS = ("line", "write_rte", "patch_rte", "mmio", "msi", "ack", "eoi", "enter",
                 "count", "take", "settle")
HANDLER_OPS = ("line", "write_rte", "patch_rte", "mmio", "msi", "ack", "eoi", "enter",
               "count", "expect")
PIN_COUNT = R.NUM_PINS
# Remote IRR is compared on its own (pins.N.remote_irr); the raw RTE is compared without it so
# that one difference is reported once.
RAW_MASK = ~R.REMOTE_IRR_BIT & ((1 << 64) - 1)
LOW_FIELDS = {"vector", "delivery_mode", "dest_mode", "trigger", "polarity", "masked",
              "remote_irr", "delivery_status"}


class Unsupported(Exception):
    """This step cannot be run faithfully on KVM: the variant stops here."""


def host_facts(profile: str) -> dict[str, Any]:
    return {"kernel_release": os.uname().release, "vendor_module": detect.vendor_module(),
            "engine_profile": profile}


def _vectors(bits: int) -> list[int]:
    return [v for v in range(256) if bits >> v & 1]


# ---- observables


def engine_observables(vm: Vm, counters: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in range(PIN_COUNT):
        e = vm.ioapic.redir[p]
        out[f"pins.{p}.raw"] = e & RAW_MASK
        out[f"pins.{p}.remote_irr"] = bool(e & R.REMOTE_IRR_BIT)
    for v in vm.vcpus:
        out[f"vcpus.{v.idx}.irr"] = _vectors(v.irr)
        out[f"vcpus.{v.idx}.isr"] = _vectors(v.isr)
        out[f"vcpus.{v.idx}.tmr"] = _vectors(v.tmr)
        out[f"vcpus.{v.idx}.ppr"] = ppr(v)
    for name, n in counters.items():
        out[f"counters.{name}"] = n
    return out


def kvm_observables(vm: KvmVm, counters: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    redir = vm.redirection_table()
    for p in range(PIN_COUNT):
        out[f"pins.{p}.raw"] = redir[p] & RAW_MASK
        out[f"pins.{p}.remote_irr"] = bool(redir[p] & R.REMOTE_IRR_BIT)
    for n in range(len(vm.vcpus)):
        view = vm.vcpu_view(n)
        out[f"vcpus.{n}.irr"] = _vectors(view["irr"])
        out[f"vcpus.{n}.isr"] = _vectors(view["isr"])
        out[f"vcpus.{n}.tmr"] = _vectors(view["tmr"])
        out[f"vcpus.{n}.ppr"] = view["ppr"]
    for name, c in counters.items():
        out[f"counters.{name}"] = c
    return out


def compare(model: dict[str, Any], kvm: dict[str, Any]) -> list[dict[str, Any]]:
    """[{path, model, kvm}] for every observable that differs (a path only one side has is
    compared with the other's default: 0 for counters, None otherwise)."""
    out = []
    for path in sorted(model.keys() | kvm.keys(), key=_path_key):
        default = 0 if path.startswith("counters.") else None
        m, k = model.get(path, default), kvm.get(path, default)
        if m != k:
            out.append({"path": path, "model": m, "kvm": k})
    return out


def _path_key(path: str) -> tuple[Any, ...]:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.split("."))


# ---- the KVM side


class KvmSide:
    """Runs scenario steps (already validated by the engine run) on a KvmVm."""

    def __init__(self, vm: KvmVm, handlers: dict[int, list[dict[str, Any]]],
                 x2apic_format: bool) -> None:
        self.vm = vm
        self.handlers = handlers
        self.x2apic_format = x2apic_format
        self.counters: dict[str, int] = {}

    def run(self, step: dict[str, Any], where: str, vcpu: int | None = None,
            in_handler: bool = False) -> dict[str, Any]:
        vm = self.vm
        op = step.get("op")
        allowed = HANDLER_OPS if in_handler else SUPPORTED_OPS
        if op not in allowed:
            raise Unsupported(f"op {op!r} is not supported on KVM" +
                              (" inside a handler" if in_handler else ""))

        def cpu() -> int:
            return parse_int(step.get("vcpu", vcpu if vcpu is not None else 0),
                             f"{where}.vcpu", 0, len(vm.vcpus) - 1)

        if op == "line":
            pin = parse_int(step["pin"], f"{where}.pin", 0, PIN_COUNT - 1)
            if parse_int(step.get("source", 0), f"{where}.source", 0, 63) != 0:
                raise Unsupported("IRQ source ids other than 0 are not supported on KVM "
                                  "(KVM_IRQ_LINE drives userspace's source only)")
            action = step.get("action")
            if action == "pulse":
                vm.set_line(pin, 1)
                vm.set_line(pin, 0)
            elif action in ("assert", "deassert"):
                vm.set_line(pin, 1 if action == "assert" else 0)
            else:
                vm.set_line(pin, parse_int(step["level"], f"{where}.level", 0, 1))
            return {}
        if op == "write_rte":
            pin = parse_int(step["pin"], f"{where}.pin", 0, PIN_COUNT - 1)
            entry = entry_from(step["entry"], f"{where}.entry")
            order = ("high", "low") if step.get("order") == "high-first" else ("low", "high")
            vm.write_rte(cpu(), pin, entry, order)
            return {}
        if op == "patch_rte":
            # As the engine's Vm.patch_rte: write only the dwords holding the changed fields,
            # computed from the RTE as the kernel holds it.
            pin = parse_int(step["pin"], f"{where}.pin", 0, PIN_COUNT - 1)
            fields = {k: (parse_int(v, f"{where}.fields.{k}", 0, 255)
                          if k in ("vector", "dest", "extended_dest") else v)
                      for k, v in step["fields"].items()}
            entry = R.patch(vm.redirection_table()[pin], fields)
            halves: list[str] = []
            if LOW_FIELDS & fields.keys():
                halves.append("low")
            if {"dest", "extended_dest"} & fields.keys():
                halves.append("high")
            if step.get("order", "low-first") == "high-first":
                halves.reverse()
            vm.write_rte(cpu(), pin, entry, tuple(halves))
            return {}
        if op == "mmio":
            if parse_int(step.get("size", 4), f"{where}.size", 1, 8) != 4:
                raise Unsupported("only 4-byte MMIO accesses are supported on KVM (irqlab's "
                                  "guest issues 32-bit moves)")
            offset = parse_int(step["offset"], f"{where}.offset", 0, 0xFF)
            if offset not in (0x00, 0x10, 0x20, 0x40):
                raise Unsupported(f"MMIO offset {offset:#x} is not supported on KVM")
            access = step.get("access", "read")
            value = vm.mmio(cpu(), access, offset,
                            parse_int(step.get("value", 0), f"{where}.value", 0, 0xFFFFFFFF))
            return {"value": value} if access == "read" else {}
        if op == "msi":
            if "decoded" in step:
                lo, hi, data = msi_from_decoded(step["decoded"], f"{where}.decoded",
                                                self.x2apic_format)
            else:
                lo = parse_int(step.get("address_lo", 0xFEE00000), f"{where}.address_lo")
                hi = parse_int(step.get("address_hi", 0), f"{where}.address_hi")
                data = parse_int(step["data"], f"{where}.data")
            vm.signal_msi(lo, hi, data)
            return {}
        if op == "ack":
            return {"vector": vm.ack(cpu())}
        if op == "eoi":
            vm.eoi(cpu())
            return {}
        if op == "enter":
            cpu()
            return {}
        if op == "count":
            name = str(step["name"])
            self.counters[name] = self.counters.get(name, 0) + 1
            return {}
        if op == "expect":  # inside a handler: describes the model
            return {}
        if op == "take":
            return {"vector": self.take(cpu())}
        assert op == "settle"
        budget = parse_int(step.get("budget", DEFAULT_SETTLE_BUDGET), f"{where}.budget",
                           1, 10_000_000)
        return self.settle(budget)

    def take(self, n: int) -> int | None:
        vec = self.vm.ack(n)
        if vec is None:
            return None
        steps = self.handlers.get(vec)
        if steps is None:  # as the engine's Runner: count it and EOI
            key = f"unhandled:{vec:#x}"
            self.counters[key] = self.counters.get(key, 0) + 1
            self.vm.eoi(n)
        else:
            for i, s in enumerate(steps):
                self.run(s, f"handlers.{vec:#x}[{i}]", n, in_handler=True)
        return vec

    def settle(self, budget: int) -> dict[str, Any]:
        cap = min(budget, KVM_SETTLE_CAP)
        taken: list[list[int]] = []
        while True:
            changed = False
            for n in range(len(self.vm.vcpus)):
                if len(taken) >= cap:
                    return {"taken": taken[-64:], "taken_total": len(taken),
                            "budget_exhausted": True}
                vec = self.take(n)
                if vec is not None:
                    taken.append([n, vec])
                    changed = True
            if not changed:
                return {"taken": taken[-64:], "taken_total": len(taken),
                        "budget_exhausted": False}


def _engine_answer(op: str, result: dict[str, Any]) -> dict[str, Any]:
    """The part of an engine step's result compared with KVM's answer."""
    if op in ("ack", "take"):
        return {"vector": result.get("vector")}
    if op == "mmio" and "value" in result:
        return {"value": result["value"]}
    if op == "settle":
        return {"taken": result["taken"], "taken_total": result["taken_total"],
                "budget_exhausted": result["budget_exhausted"]}
    return {}


def _handler_problem(handlers: dict[int, list[dict[str, Any]]]) -> str | None:
    for vec, steps in sorted(handlers.items()):
        for i, s in enumerate(steps):
            if s.get("op") not in HANDLER_OPS:
                return (f"handler {vec:#x} step {i} uses op {s.get('op')!r}, which is not "
                        "supported on KVM inside a handler")
            try:
                _check_step(s, f"handlers.{vec:#x}[{i}]")
            except Unsupported as exc:
                return f"handler {vec:#x} step {i}: {exc}"
    return None


# ---- one variant, one document


def diff_variant(doc: dict[str, Any], name: str, cfg: dict[str, Any],
                 extra: dict[str, Any], device: str = "/dev/kvm") -> dict[str, Any]:
    irqchip = cfg.get("irqchip", "kernel")
    vcpus = int(cfg.get("vcpus", 1))
    out: dict[str, Any] = {"name": name, "irqchip": irqchip, "vcpus": vcpus,
                           "profile": cfg.get("profile", DEFAULT_PROFILE), "skipped": None,
                           "stopped": None, "notes": [], "steps": [], "differences": 0,
                           "first_difference": None}
    runner = Runner(doc, cfg, extra)
    if runner.vm.config.x2apic:
        out["notes"].append("the engine's vCPUs are x2APIC; the KVM guest's LAPICs are xAPIC "
                            "(compared state is the same registers)")
    handler_problem = _handler_problem(runner.handlers)
    steps = doc.get("steps") or []
    # A split VM's VMM runs the same QEMU IOAPIC as the model's, configured alike.
    with KvmVm(vcpus, device=device, irqchip=irqchip,
               ioapic_version=runner.vm.ioapic.version if irqchip == "split" else 0x20,
               routes_before_service=runner.vm.flags.qemu_routes_before_service) as kvm:
        side = KvmSide(kvm, runner.handlers, runner.vm.config.x2apic_format)
        for i, step in enumerate(steps):
            where = f"steps[{i}]"
            op = step.get("op")
            rec: dict[str, Any] = {"index": i, "op": op, "ran": "model+kvm",
                                   "differences": []}
            if "label" in step:
                rec["label"] = step["label"]
            out["steps"].append(rec)
            if op == "expect":
                rec["ran"] = "ignored"
                rec["note"] = "expectation (describes the model): ignored"
                continue
            reason: str | None = None
            if op not in SUPPORTED_OPS:
                reason = f"op {op!r} is not supported on KVM"
            elif op in ("take", "settle") and handler_problem:
                reason = handler_problem
            if reason is None:
                try:
                    _check_step(step, where)
                except Unsupported as exc:
                    reason = str(exc)
            if reason is not None:
                rec["ran"] = "unsupported"
                rec["note"] = reason
                out["stopped"] = {"index": i, "op": op, "reason": reason}
                break
            runner.step_index = i
            model_answer: dict[str, Any]
            try:
                model_answer = _engine_answer(op, runner.run_step(step, where))
            except EngineError as exc:
                if exc.field and exc.field.startswith(("steps", "handlers", "matrix")):
                    raise
                model_answer = {"error": exc.detail}
            try:
                kvm_answer = side.run(step, where)
            except Unsupported as exc:  # inside a handler, found while running
                rec["ran"] = "unsupported"
                rec["note"] = str(exc)
                out["stopped"] = {"index": i, "op": op, "reason": str(exc)}
                break
            except (KvmVmError, OSError) as exc:
                kvm_answer = {"error": str(exc)}
            diffs = compare({f"result.{k}": v for k, v in model_answer.items()},
                            {f"result.{k}": v for k, v in kvm_answer.items()})
            if "error" in kvm_answer:
                rec["differences"] = diffs
                out["stopped"] = {"index": i, "op": op,
                                  "reason": f"KVM failed: {kvm_answer['error']}"}
                break
            diffs += compare(engine_observables(runner.vm, runner.counters),
                             kvm_observables(kvm, side.counters))
            rec["differences"] = diffs
    out["differences"] = sum(len(s["differences"]) for s in out["steps"])
    first = next((s for s in out["steps"] if s["differences"]), None)
    if first is not None:
        out["first_difference"] = {"index": first["index"], "op": first["op"],
                                   "paths": [d["path"] for d in first["differences"]]}
    return out


def _check_step(step: dict[str, Any], where: str) -> None:
    """What makes a supported op unsupported on KVM, found before either side runs it."""
    op = step.get("op")
    if op == "line" and parse_int(step.get("source", 0), f"{where}.source", 0, 63) != 0:
        raise Unsupported("IRQ source ids other than 0 are not supported on KVM "
                          "(KVM_IRQ_LINE drives userspace's source only)")
    if op == "mmio":
        if parse_int(step.get("size", 4), f"{where}.size", 1, 8) != 4:
            raise Unsupported("only 4-byte MMIO accesses are supported on KVM (irqlab's "
                              "guest issues 32-bit moves)")
        offset = parse_int(step.get("offset", 0), f"{where}.offset", 0, 0xFF)
        if offset not in (0x00, 0x10, 0x20, 0x40):
            raise Unsupported(f"MMIO offset {offset:#x} is not supported on KVM")


def diff_scenario(doc: dict[str, Any], device: str = "/dev/kvm") -> dict[str, Any]:
    """The differential run of a document. It is first run on the engine alone, so that a
    malformed document raises EngineError (at the element's path) before any VM is built."""
    run_scenario(doc)
    runs = [diff_variant(doc, name, cfg, extra, device)
            for name, cfg, extra in variants(doc)]
    base = doc.get("vm") if isinstance(doc.get("vm"), dict) else {}
    profile = str((base or {}).get("profile", DEFAULT_PROFILE))
    return {
        "name": doc.get("name"),
        "host": host_facts(profile),
        "expect_steps": EXPECT_IGNORED,
        "differences": sum(r["differences"] for r in runs),
        "variants": runs,
    }
