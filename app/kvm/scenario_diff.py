"""Differential conformance: run a scenario document's steps on the engine model and on this
host's real KVM (irqlab's own guest) side by side, and compare after every step what both can
report.

Per variant of the document (its matrix, or `default`):

- the engine VM is built from the variant's config (profile, x2apic, ...), the KvmVm has the
  same irqchip and number of vCPUs, an x2APIC guest when the variant's vm.x2apic is true,
  KVM_CAP_X2APIC_API with the variant's x2apic_format / broadcast_quirk_disabled, and CPUID.x2APIC
  as its x2apic_cpuid (the host kernel decides everything else). A split variant's KvmVm has
  irqlab as its VMM (app.kvm.split_vmm): the same QEMU
  IOAPIC code as the model's, with the variant's IOAPIC version and QEMU flag
  (qemu_routes_before_service), on the real kernel; its Remote IRR and RTEs are the VMM's;
- each step runs on the engine (app.engine.scenario.Runner, handlers included), then on KVM;
- after it, these observables are compared: per pin the RTE (raw, without Remote IRR) and
  Remote IRR; per vCPU the IRR/ISR/TMR vector lists, PPR, TPR, x2APIC mode, APIC id, LDR and
  DFR; the counters of `count` steps; per registered resampler the number of times its
  resamplefd was signalled (`resamplers.<gsi>`: the model's count, the eventfd's on KVM);
  and the step's own answer (the vector of ack/take, the
  value of an MMIO read, the interrupts a settle took, the LAPIC registers a lapic step wrote
  as the guest reads them back, the vectors a handler's sti took).

Step support on KVM: line (level / action, source 0), write_rte, patch_rte, mmio (1, 2, 4 or 8
bytes at 0x00/0x10/0x20/0x40), msi, resampler and irqfd (KvmVm.attach_irqfd with resampling
and KvmVm.irqfd_trigger: KVM_IRQFD with KVM_IRQFD_FLAG_RESAMPLE in-kernel; in split mode a
plain irqfd and the resamplefd kicked by irqlab's VMM, as QEMU does), lapic (the guest
writes each register: xAPIC page or x2APIC MSR as its mode is, apic_base by wrmsr; a #GP is the
answer), ack, eoi, enter (a no-op: the
guest is entered at every step anyway), count, take and settle (the guest acks through its
interrupt window and the handler's steps run on the same vCPU, as the engine's Runner does; a
settle's budget is the step's `budget` or the document's `settle_budget`, at most
KVM_SETTLE_CAP takes),
cli/sti (the Runner's per-vCPU IF, kept by the harness: the guest always runs with IF clear and
a take opens its window only when the flag is set; a handler's sti takes what is pending,
nested) and when (on the KVM side's own counters). Handlers may use the same steps plus expect
(not take/settle). `expect` steps describe the model and are ignored (not compared). Any other
op (irq, routes, exit, advance), a handler using one of them, a line with a
non-zero source or an MMIO offset other than those stops the variant, reported as unsupported
at that step.
"""

from __future__ import annotations

import os
from typing import Any

from app.engine import rte as R
from app.engine.errors import EngineError
from app.engine.lapic import ppr, read_register
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
from .differential import RAW_MASK  # pins.N.raw leaves Remote IRR to pins.N.remote_irr
from .vm import KvmVm, KvmVmError

DEFAULT_PROFILE = "linux-latest"
EXPECT_IGNORED = "expectation steps describe the model: ignored (not run on KVM, not compared)"
# A settle on KVM acks through the real guest: at most this many interrupts per settle.
KVM_SETTLE_CAP = 1000
SUPPORTED_OPS = ("line", "write_rte", "patch_rte", "mmio", "msi", "lapic", "ack", "eoi",
                 "enter", "count", "take", "settle", "sti", "cli", "when", "resampler", "irqfd")
HANDLER_OPS = ("line", "write_rte", "patch_rte", "mmio", "msi", "lapic", "ack", "eoi", "enter",
               "count", "expect", "sti", "cli", "when", "resampler", "irqfd")
GSI_MAX = 4095  # the engine's range for resampler/irqfd GSIs
# The engine's Runner refuses deeper nesting (scenario.MAX_HANDLER_DEPTH) before KVM runs.
MMIO_OFFSETS = (0x00, 0x10, 0x20, 0x40)
PIN_COUNT = R.NUM_PINS


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
        out[f"vcpus.{v.idx}.x2apic"] = v.x2apic
        out[f"vcpus.{v.idx}.apic_id"] = v.idx if v.x2apic else v.id_reg >> 24
        out[f"vcpus.{v.idx}.ldr"] = read_register(vm, v, "ldr")
        out[f"vcpus.{v.idx}.dfr"] = v.dfr
        out[f"vcpus.{v.idx}.tpr"] = v.tpr
    for name, n in counters.items():
        out[f"counters.{name}"] = n
    for gsi, signalled in vm.resamplers.items():
        out[f"resamplers.{gsi}"] = signalled
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
        out[f"vcpus.{n}.x2apic"] = view["x2apic"]
        out[f"vcpus.{n}.apic_id"] = view["apic_id"]
        out[f"vcpus.{n}.ldr"] = view["ldr"]
        out[f"vcpus.{n}.dfr"] = view["dfr"]
        out[f"vcpus.{n}.tpr"] = view["tpr"]
    for name, c in counters.items():
        out[f"counters.{name}"] = c
    # Read from the resamplefds themselves (what a device such as VFIO would see), in both
    # modes: KVM's eventfd_signal in-kernel, irqlab's VMM's kick in split mode.
    for gsi, signalled in vm.resample_counts().items():
        out[f"resamplers.{gsi}"] = signalled
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
                 x2apic_format: bool, settle_budget: int = DEFAULT_SETTLE_BUDGET) -> None:
        self.vm = vm
        self.handlers = handlers
        self.x2apic_format = x2apic_format
        # The budget of a settle step without its own: the document's `settle_budget`, as the
        # engine's Runner has it (then capped at KVM_SETTLE_CAP takes).
        self.settle_budget = settle_budget
        self.counters: dict[str, int] = {}
        # The Runner's per-vCPU interrupt flag. The guest itself always runs with IF clear and
        # opens a window (sti; ...; cli) only when a take finds this flag set, so the flag the
        # scenario's cli/sti steps set decides exactly when the real vCPU can take an interrupt.
        self.if_flag = [True] * len(vm.vcpus)

    def run(self, step: dict[str, Any], where: str, vcpu: int | None = None,
            in_handler: bool = False, depth: int = 0) -> dict[str, Any]:
        vm = self.vm
        op = step.get("op")
        in_handler = in_handler or depth > 0
        depth = max(depth, 1 if in_handler else 0)
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
            order = R.entry_halves(step.get("order", "low-first"))
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
            vm.write_rte(cpu(), pin, entry,
                         R.patch_halves(fields, step.get("order", "low-first")))
            return {}
        if op == "mmio":
            _check_step(step, where)
            size = parse_int(step.get("size", 4), f"{where}.size", 1, 8)
            offset = parse_int(step["offset"], f"{where}.offset", 0, 0xFF)
            access = step.get("access", "read")
            value = vm.mmio(cpu(), access, offset,
                            parse_int(step.get("value", 0), f"{where}.value", 0,
                                      (1 << (8 * size)) - 1), size)
            return {"value": value} if access == "read" else {}
        if op == "lapic":
            # As the engine's Runner: each named register, in order, written by the guest
            # (xAPIC page or x2APIC MSR, as the vCPU's mode is now); the answer is the value
            # read back the same way, or the #GP the guest took.
            n = cpu()
            out: dict[str, Any] = {}
            for reg, val in step.items():
                if reg in ("op", "vcpu", "label", "save"):
                    continue
                if not vm.lapic_write(n, reg, parse_int(val, f"{where}.{reg}", 0, 2**64 - 1)):
                    return {"fault": "#GP", "reg": reg}
                if reg != "eoi":
                    out[reg] = vm.lapic_read(n, reg)
            return out
        if op in ("sti", "cli"):
            n = cpu()
            self.if_flag[n] = op == "sti"
            if op == "sti" and in_handler:
                # A handler's sti: what is pending is taken at once, nested (the Runner's
                # _take_pending).
                return {"nested": self._take_pending(n, depth)}
            return {}
        if op == "when":
            name = step["counter"]
            value = self.counters.get(name, 0)
            holds = (value == parse_int(step["equals"], f"{where}.equals") if "equals" in step
                     else value >= parse_int(step["at_least"], f"{where}.at_least"))
            if holds:
                for i, s in enumerate(step["steps"]):
                    self.run(s, f"{where}.steps[{i}]", vcpu, in_handler, depth)
            return {"ran": holds}
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
        if op == "resampler":
            vm.attach_irqfd(parse_int(step["gsi"], f"{where}.gsi", 0, GSI_MAX), resample=True)
            return {}
        if op == "irqfd":
            # The model's answer (kvm_set_irq's status, who accepted) has no KVM counterpart:
            # an irqfd write returns nothing. Its effects are compared through the state.
            vm.irqfd_trigger(parse_int(step["gsi"], f"{where}.gsi", 0, GSI_MAX))
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
            return {"vector": self.take(cpu(), depth)}
        assert op == "settle"
        budget = parse_int(step.get("budget", self.settle_budget), f"{where}.budget",
                           1, 10_000_000)
        return self.settle(budget)

    def take(self, n: int, depth: int = 0) -> int | None:
        """The Runner's take: nothing while the vCPU's IF is clear; else the guest's window,
        and the vector's handler runs (IF clear) on the same vCPU; the return sets IF."""
        if not self.if_flag[n]:
            return None
        vec = self.vm.ack(n)
        if vec is None:
            return None
        self.if_flag[n] = False
        steps = self.handlers.get(vec)
        if steps is None:  # as the engine's Runner: count it and EOI
            key = f"unhandled:{vec:#x}"
            self.counters[key] = self.counters.get(key, 0) + 1
            self.vm.eoi(n)
        else:
            for i, s in enumerate(steps):
                self.run(s, f"handlers.{vec:#x}[{i}]", n, in_handler=True, depth=depth + 1)
        self.if_flag[n] = True
        return vec

    def _take_pending(self, n: int, depth: int) -> list[int]:
        taken = []
        while self.if_flag[n]:
            vec = self.take(n, depth)
            if vec is None:
                break
            taken.append(vec)
        return taken

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
    if op == "lapic":
        return {reg: r["value"] for reg, r in result.items() if reg != "eoi"}
    if op == "sti" and "nested" in result:
        return {"nested": [r["vector"] for r in result["nested"]]}
    if op == "settle":
        return {"taken": result["taken"], "taken_total": result["taken_total"],
                "budget_exhausted": result["budget_exhausted"]}
    return {}


def _handler_problem(handlers: dict[int, list[dict[str, Any]]]) -> str | None:
    for vec, steps in sorted(handlers.items()):
        problem = _steps_problem(steps, f"handlers.{vec:#x}", f"handler {vec:#x}")
        if problem is not None:
            return problem
    return None


def _steps_problem(steps: list[dict[str, Any]], where: str, who: str) -> str | None:
    for i, s in enumerate(steps):
        if s.get("op") not in HANDLER_OPS:
            return (f"{who} step {i} uses op {s.get('op')!r}, which is not supported on KVM "
                    "inside a handler")
        try:
            _check_step(s, f"{where}[{i}]")
        except Unsupported as exc:
            return f"{who} step {i}: {exc}"
        if s.get("op") == "when" and isinstance(s.get("steps"), list):
            problem = _steps_problem(s["steps"], f"{where}[{i}].steps", f"{who} step {i}")
            if problem is not None:
                return problem
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
    conf = runner.vm.config
    if conf.x2apic:
        out["notes"].append("x2APIC guest: it switches to x2APIC at start and uses the x2APIC "
                            "MSRs (KVM_CAP_X2APIC_API flags from x2apic_format / "
                            "broadcast_quirk_disabled)")
    handler_problem = _handler_problem(runner.handlers)
    steps = doc.get("steps") or []
    # A split VM's VMM runs the same QEMU IOAPIC as the model's, configured alike.
    with KvmVm(vcpus, device=device, irqchip=irqchip,
               ioapic_version=runner.vm.ioapic.version if irqchip == "split" else 0x20,
               routes_before_service=runner.vm.flags.qemu_routes_before_service,
               x2apic=conf.x2apic, x2apic_format=conf.x2apic_format,
               broadcast_quirk_disabled=conf.broadcast_quirk_disabled,
               x2apic_cpuid=conf.x2apic_cpuid) as kvm:
        side = KvmSide(kvm, runner.handlers, runner.vm.config.x2apic_format,
                       runner.budget_default)
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
                model_answer = _engine_answer(op, runner.run_step(_as_the_guest_does(step),
                                                                  where))
            except EngineError as exc:
                if exc.field and exc.field.startswith(("steps", "handlers", "matrix")):
                    raise
                if op == "lapic" and "(#GP)" in exc.detail:
                    # The model refuses the write as the CPU would fault; the guest's #GP.
                    model_answer = {"fault": "#GP", "reg": exc.field}
                else:
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


def _as_the_guest_does(step: dict[str, Any]) -> dict[str, Any]:
    """The step as irqlab's real guest performs it. Its EOI write is followed by the guest
    returning to its command loop, so the vCPU re-enters KVM within the step and a pending
    KVM_EXIT_IOAPIC_EOI reaches the VMM before the step is observed: the model's
    `run_exits: true`. Without it the model holds the split EOI exit until the next entry
    and a kernel that forwards the EOI (fceb3a36c29a) shows Remote IRR clear one step early
    (first seen on Debian's 6.12 and 7.3 under the upstream rig; kvm_pvm's implicit EOI had
    hidden it)."""
    if step.get("op") == "eoi" and "run_exits" not in step:
        return {**step, "run_exits": True}
    return step


def _check_step(step: dict[str, Any], where: str) -> None:
    """What makes a supported op unsupported on KVM, found before either side runs it."""
    op = step.get("op")
    if op == "line" and parse_int(step.get("source", 0), f"{where}.source", 0, 63) != 0:
        raise Unsupported("IRQ source ids other than 0 are not supported on KVM "
                          "(KVM_IRQ_LINE drives userspace's source only)")
    if op == "mmio":
        if parse_int(step.get("size", 4), f"{where}.size", 1, 8) not in (1, 2, 4, 8):
            raise Unsupported("MMIO accesses are 1, 2, 4 or 8 bytes")
        offset = parse_int(step.get("offset", 0), f"{where}.offset", 0, 0xFF)
        if offset not in MMIO_OFFSETS:
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
