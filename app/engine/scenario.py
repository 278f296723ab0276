"""Scenarios: a VM, guest interrupt handlers, steps, expectations and a profile/mode matrix,
run deterministically against the engine (run_scenario).

A document is plain data (JSON or YAML):

    name, description, commits          what it is about
    vm                                  the config of POST /v1/vms
    handlers: {vector: [step, ...]}     what a vCPU does when it takes that vector
    steps: [step, ...]                  {"op": ..., ...}; see STEP_OPS
    matrix: [{name, vm, expect}]        run the steps once per variant; `vm` overrides the
                                        document's vm, `expect` maps an expect step's label to
                                        extra assertions for that variant
    settle_budget                       default budget of `settle` steps

Each vCPU has an interrupt flag (initially set). Taking an interrupt (`take`, or `settle`)
clears it for the handler's duration and the return restores it, so a higher-priority vector
that arrives during a handler waits for the return, as with interrupt gates; a handler may
`sti` to allow nesting. `settle` lets every vCPU with interrupts enabled enter and take
deliverable interrupts until nothing changes, within a step budget; hitting the budget is a
result (an interrupt storm), not an error.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import invariants
from . import rte as R
from .bitmap import vectors
from .errors import EngineError, invalid
from .events import event_dict
from .ints import grammar_int
from .msi import LapicIrq, irq_to_msi
from .state import VmConfig, requests_list
from .vm import Vm, config_from_dict

DEFAULT_SETTLE_BUDGET = 10_000
MAX_HANDLER_DEPTH = 16
VM_KEYS = set(VmConfig().to_dict())
STEP_OPS = (
    "line", "irq", "msi", "routes", "write_rte", "patch_rte", "mmio", "lapic", "enter", "exit",
    "vmm_eoi_exit", "ack", "take", "eoi", "resampler", "irqfd", "advance", "sti", "cli", "count",
    "expect", "settle", "when", "pv_eoi",
)
HANDLER_FORBIDDEN = ("settle",)
BITMAP_FIELDS = ("irr", "isr", "tmr", "pir", "handled_vectors", "eoi_exit_bitmap")


class BudgetExceeded(Exception):
    """A run needed more work than its RunBudget allows: not a KVM refusal and not a
    malformed document, but a document too expensive to run here. `resource` is "steps" or
    "events", `where` the step that was running."""

    def __init__(self, resource: str, maximum: int, where: str) -> None:
        super().__init__(f"the run needs more than {maximum} {resource}")
        self.resource = resource
        self.maximum = maximum
        self.where = where


@dataclass(slots=True)
class RunBudget:
    """What one run_scenario call may spend over all its variants: `steps` counts every step
    run (top level, in handlers and when blocks) and every round of a settle; `events` counts
    events logged. None: unbounded (the engine's own callers, the tests)."""

    steps: int | None = None
    events: int | None = None
    spent_steps: int = 0
    spent_events: int = 0  # by the variants already finished


def parse_int(value: Any, where: str, lo: int = 0, hi: int = (1 << 64) - 1,
              key: bool = False) -> int:
    """An integer under irqlab's one grammar (ints.py): a JSON number or a "0x..." string,
    never a boolean; `key` also takes decimal strings (JSON object keys)."""
    if isinstance(value, bool):
        raise invalid("booleans are not integers here", where)
    n = grammar_int(value, key)
    if n is None:
        if isinstance(value, str):
            shown = value if len(value) <= 40 else value[:40] + "…"
            raise invalid(f"{shown!r} is not an integer (a JSON integer or a \"0x…\" string"
                          + (", or decimal digits as a key)" if key else ")"), where)
        raise invalid("expected an integer", where)
    if not lo <= n <= hi:
        raise invalid(f"must be in {lo}..{hi}", where)
    return n


def _need_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise invalid("expected a list", where)
    return value


def _vec_list(value: Any, where: str) -> list[int]:
    if not isinstance(value, list):
        raise invalid("expected a list of vectors", where)
    return sorted(parse_int(x, f"{where}[{i}]", 0, 255) for i, x in enumerate(value))


def _require(step: dict[str, Any], key: str, where: str) -> Any:
    if key not in step:
        raise invalid(f"missing {key!r}", f"{where}.{key}")
    return step[key]


def entry_from(value: Any, where: str) -> int:
    """An RTE as a raw integer / hex string or as fields."""
    if isinstance(value, dict):
        fields = dict(value)
        if "raw" in fields:
            return parse_int(fields["raw"], f"{where}.raw")
        for k in ("vector", "dest", "extended_dest"):
            if k in fields:
                fields[k] = parse_int(fields[k], f"{where}.{k}", 0, 255)
        try:
            return R.encode(**fields)
        except TypeError as exc:
            raise invalid(f"unknown RTE field: {exc}", where) from None
        except EngineError as exc:
            raise invalid(exc.detail, f"{where}.{exc.field}") from None
    return parse_int(value, where)


def route_entries(entries: Any, where: str, x2apic_format: bool) -> list[tuple[Any, ...]]:
    """GSI routing entries in the API's JSON form -> engine tuples (gsi, kind, ...)."""
    if not isinstance(entries, list):
        raise invalid("expected a list of routing entries", where)
    out: list[tuple[Any, ...]] = []
    for i, e in enumerate(entries):
        w = f"{where}[{i}]"
        if not isinstance(e, dict):
            raise invalid("expected an object", w)
        gsi = parse_int(_require(e, "gsi", w), f"{w}.gsi", 0, 4095)
        if "irqchip" in e:
            chip = e["irqchip"]
            if not isinstance(chip, dict):
                raise invalid("irqchip is an object {chip, pin}", f"{w}.irqchip")
            out.append((gsi, "irqchip", chip.get("chip", "ioapic"),
                        parse_int(chip.get("pin"), f"{w}.irqchip.pin", 0, 255)))
        elif "msi" in e:
            m = e["msi"]
            if not isinstance(m, dict):
                raise invalid("msi is an object {address_lo, address_hi, data}", f"{w}.msi")
            out.append((gsi, "msi", parse_int(m.get("address_lo", 0), f"{w}.msi.address_lo",
                                              0, 0xFFFFFFFF),
                        parse_int(m.get("address_hi", 0), f"{w}.msi.address_hi", 0, 0xFFFFFFFF),
                        parse_int(m.get("data", 0), f"{w}.msi.data", 0, 0xFFFFFFFF)))
        elif "decoded" in e:
            lo, hi, data = msi_from_decoded(e["decoded"], f"{w}.decoded", x2apic_format)
            out.append((gsi, "msi", lo, hi, data))
        else:
            raise invalid("a route needs irqchip, msi or decoded", w)
    return out


def msi_from_decoded(d: Any, where: str, x2apic_format: bool) -> tuple[int, int, int]:
    if not isinstance(d, dict):
        raise invalid("expected an object", where)
    dm = d.get("delivery_mode", "fixed")
    dm_num = R.DELIVERY_MODES.get(dm) if isinstance(dm, str) else parse_int(dm, where, 0, 7)
    if dm_num is None:
        raise invalid(f"delivery_mode must be one of {sorted(R.DELIVERY_MODES)}",
                      f"{where}.delivery_mode")
    irq = LapicIrq(
        vector=parse_int(_require(d, "vector", where), f"{where}.vector", 0, 255),
        delivery_mode=dm_num,
        logical=d.get("dest_mode", "physical") == "logical",
        level_trig=d.get("trigger", "edge") == "level",
        dest=parse_int(d.get("dest", 0), f"{where}.dest", 0, 0xFFFFFFFF),
        redir_hint=bool(d.get("redirection_hint", False)),
    )
    return irq_to_msi(irq, x2apic_format)


def _order(step: dict[str, Any], where: str) -> str:
    """A write step's dword order, checked here: the compiled engine's typed parameters would
    otherwise meet a document's raw value."""
    order = step.get("order", "low-first")
    if order not in ("low-first", "high-first"):
        raise invalid("order must be low-first or high-first", f"{where}.order")
    return str(order)


def patch_fields(step: dict[str, Any], where: str) -> dict[str, Any]:
    """A patch_rte step's `fields`, parsed and checked as fields before any guest write."""
    fields = _require(step, "fields", where)
    if not isinstance(fields, dict):
        raise invalid("fields must be an object", f"{where}.fields")
    fields = {k: (parse_int(v, f"{where}.fields.{k}", 0, 255)
                  if k in ("vector", "dest", "extended_dest") else v)
              for k, v in fields.items()}
    try:
        R.patch(0, fields)
    except EngineError as exc:
        raise invalid(exc.detail, f"{where}.fields.{exc.field}") from None
    return fields


def check_vm_keys(vm: Any, where: str) -> dict[str, Any]:
    """A document's vm block: an object of VmConfig fields (values are checked on use)."""
    if not isinstance(vm, dict):
        raise invalid("vm must be an object", where)
    for k in vm:
        if k not in VM_KEYS:
            raise invalid(f"unknown vm field {k!r}", f"{where}.{k}")
    return vm


class Runner:
    """Runs the steps of one variant against one VM."""

    def __init__(self, doc: dict[str, Any], vm_cfg: dict[str, Any],
                 expect_extra: dict[str, Any], budget: RunBudget | None = None) -> None:
        self.doc = doc
        self.budget = budget or RunBudget()
        try:
            self.vm = Vm(config_from_dict(vm_cfg))
        except TypeError as exc:
            raise invalid(f"unknown vm field: {exc}", "vm") from None
        self.handlers = _parse_handlers(doc.get("handlers") or {})
        self.expect_extra = expect_extra
        self.if_flag = [True] * len(self.vm.vcpus)
        self.counters: dict[str, int] = {}
        self.findings: list[dict[str, Any]] = []
        self._active: set[tuple[Any, ...]] = set()
        self._seen_seq = 0
        self.budget_default = parse_int(doc.get("settle_budget", DEFAULT_SETTLE_BUDGET),
                                        "settle_budget", 1, 10_000_000)
        self.step_index = 0
        self.handler_steps = 0
        self.handler_expects: list[dict[str, Any]] = []  # expect steps run inside handlers
        self.saved: dict[str, Any] = {}  # step results kept with `save: name`

    # ---- operations ----

    def charge(self, where: str) -> None:
        """Spend one step of the budget; past it (or past its events) the run stops."""
        b = self.budget
        b.spent_steps += 1
        if b.steps is not None and b.spent_steps > b.steps:
            raise BudgetExceeded("steps", b.steps, where)
        if b.events is not None and b.spent_events + self.vm.log.next_seq - 1 > b.events:
            raise BudgetExceeded("events", b.events, where)

    def run_step(self, step: Any, where: str, vcpu: int | None = None,
                 depth: int = 0) -> dict[str, Any]:
        self.charge(where)
        result = self._run_step(step, where, vcpu, depth)
        name = step.get("save")
        if name is not None:
            if not isinstance(name, str):
                raise invalid("save takes a name", f"{where}.save")
            # An MMIO read keeps its value; anything else keeps its whole result.
            self.saved[name] = result.get("value", result)
        return result

    def _run_step(self, step: Any, where: str, vcpu: int | None, depth: int) -> dict[str, Any]:
        if not isinstance(step, dict):
            raise invalid("a step is an object with an 'op'", where)
        op = step.get("op")
        if op not in STEP_OPS:
            raise invalid(f"op must be one of {', '.join(STEP_OPS)}", f"{where}.op")
        if depth and op in HANDLER_FORBIDDEN:
            raise invalid(f"{op} is not allowed inside a handler", f"{where}.op")
        vm = self.vm

        def cpu() -> int:
            n = step.get("vcpu", vcpu if vcpu is not None else 0)
            return parse_int(n, f"{where}.vcpu", 0, len(vm.vcpus) - 1)

        if op == "line":
            pin = parse_int(_require(step, "pin", where), f"{where}.pin", 0, R.NUM_PINS - 1)
            source = parse_int(step.get("source", 0), f"{where}.source", 0, 63)
            if "action" in step:
                if step["action"] not in ("assert", "deassert", "pulse"):
                    raise invalid("action must be assert, deassert or pulse", f"{where}.action")
                return vm.set_line(pin, action=step["action"], source=source)
            level = parse_int(_require(step, "level", where), f"{where}.level", 0, 1)
            return vm.set_line(pin, level=level, source=source)
        if op == "irq":
            return vm.irq_line(parse_int(_require(step, "gsi", where), f"{where}.gsi", 0, 4095),
                               parse_int(_require(step, "level", where), f"{where}.level", 0, 1),
                               parse_int(step.get("source", 0), f"{where}.source", 0, 63))
        if op == "msi":
            if "decoded" in step:
                lo, hi, data = msi_from_decoded(step["decoded"], f"{where}.decoded",
                                                vm.config.x2apic_format)
            else:
                lo = parse_int(step.get("address_lo", 0xFEE00000), f"{where}.address_lo")
                hi = parse_int(step.get("address_hi", 0), f"{where}.address_hi")
                data = parse_int(_require(step, "data", where), f"{where}.data")
            return vm.signal_msi(lo, hi, data)
        if op == "routes":
            return vm.set_routes(route_entries(_require(step, "entries", where),
                                               f"{where}.entries", vm.config.x2apic_format))
        if op == "write_rte":
            pin = parse_int(_require(step, "pin", where), f"{where}.pin", 0, R.NUM_PINS - 1)
            entry = entry_from(_require(step, "entry", where), f"{where}.entry")
            halves = R.entry_halves(_order(step, where))
            return vm.write_rte(cpu(), pin, entry, halves)
        if op == "patch_rte":
            pin = parse_int(_require(step, "pin", where), f"{where}.pin", 0, R.NUM_PINS - 1)
            fields = patch_fields(step, where)
            return vm.patch_rte(cpu(), pin, fields, _order(step, where))
        if op == "mmio":
            access = step.get("access", "read")
            if access not in ("read", "write"):
                raise invalid("access must be read or write", f"{where}.access")
            return vm.mmio(cpu(), access,
                           parse_int(_require(step, "offset", where), f"{where}.offset", 0, 0xFF),
                           parse_int(step.get("size", 4), f"{where}.size", 1, 8),
                           parse_int(step.get("value", 0), f"{where}.value"))
        if op == "lapic":
            n = cpu()
            regs = {k: v for k, v in step.items() if k not in ("op", "vcpu", "label", "save")}
            if not regs:
                raise invalid("name at least one register", where)
            return {reg: vm.lapic_write(n, reg, parse_int(val, f"{where}.{reg}", 0, 2**64 - 1))
                    for reg, val in regs.items()}
        if op == "enter":
            until_exit = step.get("until_exit", False)
            if not isinstance(until_exit, bool):
                raise invalid("until_exit must be true or false", f"{where}.until_exit")
            return vm.enter(cpu(), until_exit)
        if op == "vmm_eoi_exit":
            return vm.vmm_eoi_exit(cpu())
        if op == "exit":
            return vm.exit_guest(cpu())
        if op == "ack":
            return vm.ack(cpu())
        if op == "take":
            return self.take(cpu(), depth)
        if op == "eoi":
            return vm.eoi(cpu(), run_exits=bool(step.get("run_exits", False)))
        if op == "pv_eoi":
            enabled = step.get("enabled", True)
            if not isinstance(enabled, bool):
                raise invalid("enabled must be true or false", f"{where}.enabled")
            address = parse_int(step.get("address", 0x1000), f"{where}.address", 0,
                                (1 << 64) - 2)
            if address & 3:
                raise invalid("the PV EOI flag's address must be 4-byte aligned (#GP)",
                              f"{where}.address")
            return vm.set_pv_eoi(cpu(), address | int(enabled))
        if op == "resampler":
            vm.register_resampler(parse_int(_require(step, "gsi", where), f"{where}.gsi", 0, 4095))
            return {"registered": step["gsi"]}
        if op == "irqfd":
            return vm.irqfd_assert(parse_int(_require(step, "gsi", where), f"{where}.gsi", 0, 4095))
        if op == "advance":
            return vm.advance_time(parse_int(_require(step, "us", where), f"{where}.us",
                                             0, 10**12))
        if op in ("sti", "cli"):
            n = cpu()
            self.if_flag[n] = op == "sti"
            result: dict[str, Any] = {"vcpu": n, "if": self.if_flag[n]}
            if op == "sti" and depth:
                result["nested"] = self._take_pending(n, depth)
            return result
        if op == "count":
            name = _require(step, "name", where)
            if not isinstance(name, str):
                raise invalid("counter names are strings", f"{where}.name")
            self.counters[name] = self.counters.get(name, 0) + 1
            return {"counter": name, "value": self.counters[name]}
        if op == "when":
            return self.when(step, where, vcpu, depth)
        if op == "settle":
            budget = parse_int(step.get("budget", self.budget_default), f"{where}.budget",
                               1, 10_000_000)
            return self.settle(budget, where)
        assert op == "expect"
        result = self.expect(step, where)
        if depth:
            result["step"] = self.step_index
            result["where"] = where
            self.handler_expects.append(result)
        return result

    def when(self, step: dict[str, Any], where: str, vcpu: int | None,
             depth: int) -> dict[str, Any]:
        """Run `steps` only if counter `counter` equals `equals` (or is at least `at_least`):
        lets a handler behave differently on its n-th run, as guest handlers often do."""
        name = _require(step, "counter", where)
        if not isinstance(name, str):
            raise invalid("counter names are strings", f"{where}.counter")
        value = self.counters.get(name, 0)
        if "equals" in step:
            holds = value == parse_int(step["equals"], f"{where}.equals")
        else:
            holds = value >= parse_int(_require(step, "at_least", where), f"{where}.at_least")
        steps = _require(step, "steps", where)
        if not isinstance(steps, list):
            raise invalid("steps must be a list", f"{where}.steps")
        ran = []
        if holds:
            for i, s in enumerate(steps):
                sub = f"{where}.steps[{i}]"
                if depth and isinstance(s, dict) and s.get("op") in HANDLER_FORBIDDEN:
                    raise invalid(f"{s['op']} is not allowed inside a handler", f"{sub}.op")
                ran.append({"op": s.get("op") if isinstance(s, dict) else None,
                            "result": self.run_step(s, sub, vcpu, depth)})
        return {"counter": name, "value": value, "ran": holds, "steps": ran}

    def take(self, n: int, depth: int = 0) -> dict[str, Any]:
        """The vCPU, if its interrupt flag is set, takes the highest deliverable interrupt and
        runs the handler for it with interrupts disabled; the return restores the flag."""
        if not self.if_flag[n]:
            return {"vcpu": n, "vector": None, "reason": "interrupts disabled"}
        got = self.vm.ack(n)
        vec = got["vector"]
        if vec is None:
            return {"vcpu": n, "vector": None}
        if depth >= MAX_HANDLER_DEPTH:
            raise invalid(f"handlers nested deeper than {MAX_HANDLER_DEPTH}", "handlers")
        self.if_flag[n] = False
        steps = self.handlers.get(vec)
        ran: list[dict[str, Any]] = []
        if steps is None:
            # No handler: count it and EOI, so an unexpected vector does not wedge the vCPU.
            key = f"unhandled:{vec:#x}"
            self.counters[key] = self.counters.get(key, 0) + 1
            ran.append({"op": "eoi", "result": self.vm.eoi(n)})
        else:
            for i, s in enumerate(steps):
                self.handler_steps += 1
                ran.append({"op": s["op"],
                            "result": self.run_step(s, f"handlers.{vec:#x}[{i}]", n, depth + 1)})
        self.if_flag[n] = True
        return {"vcpu": n, "vector": vec, "handler": ran}

    def _take_pending(self, n: int, depth: int) -> list[dict[str, Any]]:
        taken = []
        while self.if_flag[n]:
            r = self.take(n, depth)
            if r["vector"] is None:
                break
            taken.append(r)
        return taken

    def settle(self, budget: int, where: str = "settle") -> dict[str, Any]:
        vm = self.vm
        used = 0
        taken: list[list[int]] = []
        advanced = 0
        while True:
            self.charge(where)
            changed = False
            for n, v in enumerate(vm.vcpus):
                if used >= budget:
                    return {"steps": used, "taken": taken[-64:], "taken_total": len(taken),
                            "time_advanced_us": advanced, "budget_exhausted": True}
                if v.requests:
                    vm.enter(n)
                    used += 1
                    changed = True
                if self.if_flag[n]:
                    r = self.take(n)
                    if r["vector"] is not None:
                        used += 1
                        taken.append([n, r["vector"]])
                        changed = True
            if not changed:
                due = vm.ioapic.delayed_at
                if due is None:
                    break
                # Idle with a throttled re-injection pending: let logical time reach it.
                advanced += due - vm.time
                vm.advance_time(due - vm.time)
                used += 1
        return {"steps": used, "taken": taken[-64:], "taken_total": len(taken),
                "time_advanced_us": advanced, "budget_exhausted": False}

    # ---- expectations ----

    def expect(self, step: dict[str, Any], where: str) -> dict[str, Any]:
        label = step.get("label")
        if label is not None and not isinstance(label, str):
            raise invalid("a label is a string", f"{where}.label")
        assertions = {k: v for k, v in step.items() if k not in ("op", "label", "save")}
        if label is not None and label in self.expect_extra:
            extra = self.expect_extra[label]
            if not isinstance(extra, dict):
                raise invalid("matrix expectations are objects", f"matrix.expect.{label}")
            assertions = _deep_merge(assertions, extra)
        checks: list[dict[str, Any]] = []
        vm = self.vm

        def check(path: str, expected: Any, actual: Any) -> None:
            checks.append({"path": path, "expected": expected, "actual": actual,
                           "ok": expected == actual})

        for key, value in assertions.items():
            w = f"{where}.{key}"
            if key == "remote_irr":
                want = sorted(parse_int(p, f"{w}[{i}]", 0, 23)
                              for i, p in enumerate(_need_list(value, w)))
                check("remote_irr", want, vm.bitmaps()["remote_irr"]["pins"])
            elif key == "pins":
                _need_dict(value, w)
                for pin_s, fields in value.items():
                    pin = parse_int(pin_s, f"{w}.{pin_s}", 0, R.NUM_PINS - 1, key=True)
                    view = vm.pin_view(pin)
                    _need_dict(fields, f"{w}.{pin_s}")
                    for f, exp in fields.items():
                        if f not in view:
                            raise invalid(f"unknown pin field {f!r}", f"{w}.{pin_s}.{f}")
                        if f in ("vector", "dest") and not isinstance(exp, bool):
                            exp = parse_int(exp, f"{w}.{pin_s}.{f}")
                        check(f"pins.{pin}.{f}", exp, view[f])
            elif key == "vcpus":
                _need_dict(value, w)
                for n_s, fields in value.items():
                    n = parse_int(n_s, f"{w}.{n_s}", 0, len(vm.vcpus) - 1, key=True)
                    view = vm.vcpu_view(n)
                    _need_dict(fields, f"{w}.{n_s}")
                    for f, exp in fields.items():
                        fw = f"{w}.{n_s}.{f}"
                        if f in BITMAP_FIELDS:
                            check(f"vcpus.{n}.{f}", _vec_list(exp, fw), view[f]["vectors"])
                        elif f == "pending_requests":
                            exp = _need_list(exp, fw)
                            if not all(isinstance(x, str) for x in exp):
                                raise invalid("request names are strings", fw)
                            check(f"vcpus.{n}.{f}", sorted(exp), sorted(view[f]))
                        elif f == "if":
                            check(f"vcpus.{n}.if", exp, self.if_flag[n])
                        elif f in view:
                            check(f"vcpus.{n}.{f}", exp, view[f])
                        else:
                            raise invalid(f"unknown vCPU field {f!r}", fw)
            elif key == "counters":
                _need_dict(value, w)
                for name, exp in value.items():
                    actual = self.counters.get(name, 0)
                    if isinstance(exp, dict):
                        # {at_least: n}: a guest test that checks only that a counter is
                        # non-zero (kvm-unit-tests' report(g_isr_64, ...)) or at least n.
                        if set(exp) != {"at_least"}:
                            raise invalid("a counter bound is {at_least: n}", f"{w}.{name}")
                        bound = parse_int(exp["at_least"], f"{w}.{name}.at_least")
                        checks.append({"path": f"counters.{name}",
                                       "expected": {"at_least": bound}, "actual": actual,
                                       "ok": actual >= bound})
                    else:
                        check(f"counters.{name}", exp, actual)
            elif key == "events":
                for i, pattern in enumerate(_need_list(value, w)):
                    _need_dict(pattern, f"{w}[{i}]")
                    check(f"events[{i}]", pattern, self._find_event(pattern))
            elif key == "no_events":
                for i, pattern in enumerate(_need_list(value, w)):
                    _need_dict(pattern, f"{w}[{i}]")
                    check(f"no_events[{i}]", None, self._find_event(pattern))
            elif key == "event_counts":
                _need_dict(value, w)
                for kind, exp in value.items():
                    n = sum(1 for e in vm.log.events if e[2] == kind)
                    check(f"event_counts.{kind}", exp, n)
            elif key == "findings":
                kinds = sorted({f["kind"] for f in self.findings})
                want_kinds = _need_list(value, w)
                if not all(isinstance(x, str) for x in want_kinds):
                    raise invalid("finding kinds are strings", w)
                check("findings", sorted(want_kinds), kinds)
            elif key == "saved":
                _need_dict(value, w)
                for name, exp in value.items():
                    if isinstance(exp, str) and exp.startswith("0x"):
                        exp = parse_int(exp, f"{w}.{name}")
                    check(f"saved.{name}", exp, self.saved.get(name))
            elif key == "ioapic":
                _need_dict(value, w)
                view = vm.ioapic_view()
                for f, exp in value.items():
                    if f not in ("id", "version", "ioregsel", "irr", "flavour"):
                        raise invalid(f"unknown IOAPIC field {f!r}", f"{w}.{f}")
                    if isinstance(exp, str) and exp.startswith("0x"):
                        exp = parse_int(exp, f"{w}.{f}")
                    check(f"ioapic.{f}", exp, view[f])
            elif key == "resamplers":
                _need_dict(value, w)
                for gsi_s, count in value.items():
                    gsi = parse_int(gsi_s, f"{w}.{gsi_s}", 0, 4095, key=True)
                    check(f"resamplers.{gsi}", count, vm.resamplers.get(gsi))
            else:
                raise invalid(f"unknown expectation {key!r}", w)
        return {"label": label, "passed": all(c["ok"] for c in checks), "checks": checks}

    def _find_event(self, pattern: dict[str, Any]) -> Any:
        """The first logged event matching kind, actor and a subset of fields; the pattern
        itself stands for "found" so that expected == actual reads naturally."""
        fields = pattern.get("fields", {})
        for e in self.vm.log.events:
            if e[2] != pattern.get("kind", e[2]) or e[1] != pattern.get("actor", e[1]):
                continue
            d = event_dict(e)
            if all(d["fields"].get(k) == v for k, v in fields.items()):
                return pattern
        return None

    # ---- findings ----

    def collect_findings(self) -> list[dict[str, Any]]:
        vm = self.vm
        current = invariants.state_findings(vm)
        new_events = invariants.event_findings(vm, self._seen_seq)
        self._seen_seq = vm.log.next_seq - 1
        fresh = []
        keys = set()
        for f in current:
            k = invariants.finding_key(f)
            keys.add(k)
            if k not in self._active:
                fresh.append(f)
        self._active = keys
        fresh.extend(new_events)
        for f in fresh:
            f["step"] = self.step_index
            self.findings.append(f)
        return fresh


def _need_dict(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise invalid("expected an object", where)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _parse_handlers(handlers: Any) -> dict[int, list[dict[str, Any]]]:
    if not isinstance(handlers, dict):
        raise invalid("handlers maps a vector to a list of steps", "handlers")
    out: dict[int, list[dict[str, Any]]] = {}
    for key, steps in handlers.items():
        vec = parse_int(key, f"handlers.{key}", 0, 255, key=True)
        if not isinstance(steps, list):
            raise invalid("a handler is a list of steps", f"handlers.{key}")
        for i, s in enumerate(steps):
            if not isinstance(s, dict) or s.get("op") not in STEP_OPS:
                raise invalid(f"op must be one of {', '.join(STEP_OPS)}",
                              f"handlers.{key}[{i}].op")
            if s["op"] in HANDLER_FORBIDDEN:
                raise invalid(f"{s['op']} is not allowed inside a handler",
                              f"handlers.{key}[{i}].op")
        out[vec] = steps
    return out


def variants(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    base = check_vm_keys(doc.get("vm") or {}, "vm")
    matrix = doc.get("matrix")
    if not matrix:
        return [("default", dict(base), {})]
    if not isinstance(matrix, list):
        raise invalid("matrix is a list of variants", "matrix")
    out = []
    for i, m in enumerate(matrix):
        w = f"matrix[{i}]"
        _need_dict(m, w)
        vm_over = m.get("vm") or {}
        _need_dict(vm_over, f"{w}.vm")
        for k in vm_over:
            if k not in VM_KEYS:
                raise invalid(f"unknown vm field {k!r}", f"{w}.vm.{k}")
        expect = m.get("expect") or {}
        _need_dict(expect, f"{w}.expect")
        name = m.get("name") or "-".join(f"{k}={v}" for k, v in sorted(vm_over.items()))
        out.append((str(name), {**base, **vm_over}, expect))
    return out


def step_state(vm: Vm) -> dict[str, Any]:
    """What the pictures compare between steps (Remote IRR and each vCPU's IRR, ISR, handled
    vectors and pending requests): small, so an observed run stays cheap."""
    return {"remote_irr": vm.bitmaps()["remote_irr"]["pins"],
            "vcpus": [{"vcpu": v.idx, "irr": vectors(v.irr | v.pir), "isr": vectors(v.isr),
                       "handled_vectors": vectors(v.handled),
                       "pending_requests": requests_list(v.requests)} for v in vm.vcpus]}


def run_variant(doc: dict[str, Any], name: str, vm_cfg: dict[str, Any],
                expect_extra: dict[str, Any],
                on_step: Callable[[int, dict[str, Any]], None] | None = None,
                observe: bool = False,
                budget: RunBudget | None = None) -> dict[str, Any]:
    """Run one variant. `observe` adds to every step its `last_seq` (the log's last seq after
    it) and a `state` summary (step_state), which the timeline and report pictures use."""
    try:
        runner = Runner(doc, vm_cfg, expect_extra, budget)
    except EngineError as exc:
        if exc.field and not exc.field.startswith(("vm", "handlers", "settle")):
            exc.field = f"vm.{exc.field}"
        raise
    steps = doc.get("steps")
    if not isinstance(steps, list):
        raise invalid("steps must be a list", "steps")
    results: list[dict[str, Any]] = []
    passed = True
    for i, step in enumerate(steps):
        runner.step_index = i
        where = f"steps[{i}]"
        entry: dict[str, Any] = {"index": i, "op": step.get("op") if isinstance(step, dict)
                                 else None}
        if isinstance(step, dict) and "label" in step:
            entry["label"] = step["label"]
        try:
            out = runner.run_step(step, where)
            entry["ok"] = True
            entry["result"] = out
        except EngineError as exc:
            if exc.field and exc.field.startswith(("steps", "handlers", "matrix")):
                raise  # a malformed document, not a result
            # The modelled kernel refused the operation (e.g. -EINVAL): a result to report.
            entry["ok"] = False
            entry["error"] = {"kind": str(exc.kind), "detail": exc.detail, "field": exc.field}
        if entry["op"] == "expect" and entry.get("ok"):
            entry["passed"] = entry["result"]["passed"]
            passed = passed and entry["passed"]
        entry["findings"] = runner.collect_findings()
        if observe:
            entry["last_seq"] = runner.vm.log.next_seq - 1
            entry["state"] = step_state(runner.vm)
        results.append(entry)
        if on_step is not None:
            on_step(i, entry)
    vm = runner.vm
    runner.budget.spent_events += vm.log.next_seq - 1
    passed = passed and all(x["passed"] for x in runner.handler_expects)
    return {
        "name": name,
        "vm": vm.summary(),
        "passed": passed,
        "handler_expects": runner.handler_expects,
        "steps": results,
        "findings": runner.findings,
        "counters": runner.counters,
        "events": vm.log.since(0),
        "final_state": vm.state(),
    }


def run_scenario(doc: dict[str, Any], observe: bool = False,
                 budget: RunBudget | None = None) -> dict[str, Any]:
    """Run every variant of a scenario document; deterministic for a given document.
    `observe`: see run_variant. With a budget, BudgetExceeded stops a run that needs more
    steps or events than it allows."""
    budget = budget or RunBudget()
    if not isinstance(doc, dict):
        raise invalid("a scenario is an object", "")
    for key in doc:
        if key not in ("name", "description", "commits", "vm", "handlers", "steps", "matrix",
                       "settle_budget", "notes"):
            raise invalid(f"unknown scenario field {key!r}", key)
    runs = []
    for i, (name, cfg, extra) in enumerate(variants(doc)):
        try:
            runs.append(run_variant(doc, name, cfg, extra, observe=observe, budget=budget))
        except EngineError as exc:
            # A bad vm value that came from a matrix entry is that entry's fault.
            key = (exc.field or "").removeprefix("vm.").split(".")[0]
            matrix = doc.get("matrix") or []
            if (exc.field or "").startswith("vm.") and i < len(matrix) and key in (
                matrix[i].get("vm") or {}
            ):
                exc.field = f"matrix[{i}].{exc.field}"
            raise
    return {
        "name": doc.get("name"),
        "description": doc.get("description"),
        "commits": doc.get("commits") or [],
        "passed": all(r["passed"] for r in runs),
        "variants": runs,
    }
