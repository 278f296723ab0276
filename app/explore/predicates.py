"""User assertions of an exploration (`always:` / `finally:`): a small predicate language over
the state, compiled once into closures. Nothing is evaluated as code.

    {all: [P, ...]}  {any: [P, ...]}  {not: P}
    {remote_irr: {pin: 5, is: false}}                     Remote IRR of a pin
    {pin: 5, line: {is: 1}}                               also masked, remote_irr, irr, vector,
                                                          dest, trigger (level/edge)
    {vcpu: 0, isr: {contains: 0x40}}                      bitmaps irr, isr, tmr, pir,
    {vcpu: 0, irr: {empty: true}}                         handled_vectors, eoi_exit_bitmap:
    {vcpu: 1, handled_vectors: {equals: [0x40]}}          contains / empty / equals
    {vcpu: 0, tpr: {at_most: 0x20}}                       tpr, ppr: is / at_least / at_most
    {vcpu: 0, in_guest: {is: true}}                       also if (interrupt flag),
                                                          in_handler (some handler running)
    {vcpu: 0, pending_requests: {contains: SCAN_IOAPIC}}  contains / empty
    {counter: handled, is: 2}                             is / at_least / at_most
    {actor: device, done: true}                           the program ran to its end
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.engine import rte as R
from app.engine.errors import invalid
from app.engine.lapic import ppr
from app.engine.scenario import parse_int
from app.engine.state import REQUEST_BITS

Pred = Callable[[Any], bool]  # (IrqState) -> holds

BITMAPS = {"irr": "irr", "isr": "isr", "tmr": "tmr", "pir": "pir", "handled_vectors": "handled",
           "eoi_exit_bitmap": "eoi_exitmap"}
PIN_FIELDS = ("line", "masked", "remote_irr", "irr", "vector", "dest", "trigger")
MAX_DEPTH = 32


def compile_predicate(p: Any, where: str, *, nvcpus: int, actors: dict[str, tuple[int, int]],
                      counters: dict[str, int], depth: int = 0) -> Pred:
    if depth > MAX_DEPTH:
        raise invalid(f"predicates nest at most {MAX_DEPTH} deep", where)
    if not isinstance(p, dict) or not p:
        raise invalid("a predicate is an object (all, any, not, remote_irr, pin, vcpu, "
                      "counter, actor)", where)

    def sub(q: Any, w: str) -> Pred:
        return compile_predicate(q, w, nvcpus=nvcpus, actors=actors, counters=counters,
                                 depth=depth + 1)

    keys = set(p)
    if keys == {"all"} or keys == {"any"}:
        (k,) = keys
        items = p[k]
        if not isinstance(items, list) or not items:
            raise invalid("expected a non-empty list of predicates", f"{where}.{k}")
        parts = [sub(q, f"{where}.{k}[{i}]") for i, q in enumerate(items)]
        if k == "all":
            return lambda s: all(f(s) for f in parts)
        return lambda s: any(f(s) for f in parts)
    if keys == {"not"}:
        inner = sub(p["not"], f"{where}.not")
        return lambda s: not inner(s)
    if keys == {"remote_irr"}:
        spec = p["remote_irr"]
        if not isinstance(spec, dict) or set(spec) != {"pin", "is"}:
            raise invalid("remote_irr takes {pin, is}", f"{where}.remote_irr")
        pin = parse_int(spec["pin"], f"{where}.remote_irr.pin", 0, R.NUM_PINS - 1)
        want = _bool(spec["is"], f"{where}.remote_irr.is")
        return lambda s: bool(s.vm.ioapic.redir[pin] & R.REMOTE_IRR_BIT) == want
    if "pin" in keys:
        return _pin_pred(p, where)
    if "vcpu" in keys:
        return _vcpu_pred(p, where, nvcpus)
    if "counter" in keys:
        name = p["counter"]
        if name not in counters:
            raise invalid(f"no count step names counter {name!r}", f"{where}.counter")
        idx = counters[name]
        return _compare({k: v for k, v in p.items() if k != "counter"}, where,
                        lambda s: int(s.counters[idx]))
    if "actor" in keys:
        name = p["actor"]
        if name not in actors or set(p) != {"actor", "done"}:
            raise invalid(f"actor predicates are {{actor: NAME, done: bool}} with NAME one of "
                          f"{sorted(actors)}", f"{where}.actor")
        idx, length = actors[name]
        want = _bool(p["done"], f"{where}.done")
        return lambda s: (s.pcs[idx] >= length) == want
    raise invalid(f"unknown predicate {sorted(keys)}", where)


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise invalid("expected true or false", where)
    return v


def _one(p: dict[str, Any], where: str, subject: str) -> tuple[str, Any]:
    rest = [k for k in p if k != subject]
    if len(rest) != 1:
        raise invalid(f"a {subject} predicate names exactly one field", where)
    return rest[0], p[rest[0]]


def _pin_pred(p: dict[str, Any], where: str) -> Pred:
    pin = parse_int(p["pin"], f"{where}.pin", 0, R.NUM_PINS - 1)
    field, spec = _one(p, where, "pin")
    w = f"{where}.{field}"
    if field not in PIN_FIELDS:
        raise invalid(f"pin fields are {', '.join(PIN_FIELDS)}", w)
    getters: dict[str, Callable[[Any], Any]] = {
        "line": lambda s: int(bool(s.vm.ioapic.irq_states[pin])),
        "masked": lambda s: bool(s.vm.ioapic.redir[pin] & R.MASK_BIT),
        "remote_irr": lambda s: bool(s.vm.ioapic.redir[pin] & R.REMOTE_IRR_BIT),
        "irr": lambda s: bool(s.vm.ioapic.irr >> pin & 1),
        "vector": lambda s: s.vm.ioapic.redir[pin] & 0xFF,
        "dest": lambda s: R.dest(s.vm.ioapic.redir[pin]),
        "trigger": lambda s: "level" if s.vm.ioapic.redir[pin] & R.TRIGGER_BIT else "edge",
    }
    get = getters[field]
    if not isinstance(spec, dict) or set(spec) != {"is"}:
        raise invalid("a pin field takes {is: value}", w)
    want = spec["is"]
    if field in ("masked", "remote_irr", "irr"):
        want = _bool(want, f"{w}.is")
    elif field == "trigger":
        if want not in ("level", "edge"):
            raise invalid("trigger is level or edge", f"{w}.is")
    else:
        want = parse_int(want, f"{w}.is", 0, 255)
    return lambda s: bool(get(s) == want)


def _vcpu_pred(p: dict[str, Any], where: str, nvcpus: int) -> Pred:
    n = parse_int(p["vcpu"], f"{where}.vcpu", 0, nvcpus - 1)
    field, spec = _one(p, where, "vcpu")
    w = f"{where}.{field}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise invalid("a vCPU field takes one test, e.g. {contains: 0x40}", w)
    (test, arg), = spec.items()
    if field in BITMAPS:
        attr = BITMAPS[field]
        if test == "contains":
            bit = 1 << parse_int(arg, f"{w}.contains", 0, 255)
            return lambda s: bool(getattr(s.vm.vcpus[n], attr) & bit)
        if test == "empty":
            want = _bool(arg, f"{w}.empty")
            return lambda s: (getattr(s.vm.vcpus[n], attr) == 0) == want
        if test == "equals":
            if not isinstance(arg, list):
                raise invalid("equals takes a list of vectors", f"{w}.equals")
            bits = 0
            for i, x in enumerate(arg):
                bits |= 1 << parse_int(x, f"{w}.equals[{i}]", 0, 255)
            return lambda s: bool(getattr(s.vm.vcpus[n], attr) == bits)
        raise invalid("bitmap tests are contains, empty, equals", w)
    if field in ("tpr", "ppr"):
        if field == "tpr":
            return _compare(spec, w, lambda s: int(s.vm.vcpus[n].tpr))
        return _compare(spec, w, lambda s: ppr(s.vm.vcpus[n]))
    if field in ("in_guest", "if", "in_handler"):
        if test != "is":
            raise invalid(f"{field} takes {{is: bool}}", w)
        want = _bool(arg, f"{w}.is")
        if field == "in_guest":
            return lambda s: bool(s.vm.vcpus[n].in_guest) == want
        if field == "if":
            return lambda s: bool(s.iflags >> n & 1) == want
        return lambda s: bool(s.frames[n]) == want
    if field == "pending_requests":
        if test == "contains":
            if arg not in REQUEST_BITS:
                raise invalid(f"requests are {', '.join(REQUEST_BITS)}", f"{w}.contains")
            rbit = REQUEST_BITS[arg]
            return lambda s: bool(s.vm.vcpus[n].requests & rbit)
        if test == "empty":
            want = _bool(arg, f"{w}.empty")
            return lambda s: (s.vm.vcpus[n].requests == 0) == want
        raise invalid("pending_requests tests are contains, empty", w)
    raise invalid(f"unknown vCPU field {field!r}", w)


def _compare(spec: Any, where: str, get: Callable[[Any], int]) -> Pred:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise invalid("compare with one of is, at_least, at_most", where)
    (test, arg), = spec.items()
    value = parse_int(arg, f"{where}.{test}")
    if test == "is":
        return lambda s: get(s) == value
    if test == "at_least":
        return lambda s: get(s) >= value
    if test == "at_most":
        return lambda s: get(s) <= value
    raise invalid("compare with one of is, at_least, at_most", where)
