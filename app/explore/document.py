"""The exploration document: what to build (vm, setup), what the guest's handlers do, which
programs run concurrently (actors) and what must hold (properties). Plain data (YAML/JSON);
its JSON Schema is openapi/exploration.schema.json (app/explore/doc_models.py).

    name, description, commits
    vm: {vcpus, irqchip, profile, apicv, x2apic, overrides, ...}   as in scenarios
    setup: [step, ...]            run once, in order, before the search (any scenario step)
    handlers: {vector: [step]}    what the vCPU that takes `vector` runs, one atomic step at a
                                  time; a vector without a handler gets [eoi]
    actors:                       concurrent programs; each a list of atomic steps
      NAME: {vcpu: n?, steps: [step, ...]}
    properties: [NAME | {name, always: PRED} | {name, finally: PRED}, ...]
    expect: {profile: violation | verified}   what the library claims (census, tests)
    symmetry: [vcpu, vcpu, ...]   vCPUs the program treats alike (app/explore/symmetry.py)

The explorer adds the hardware's moves itself: each vCPU entering the guest (consuming its
requests; a KVM_EXIT_IOAPIC_EOI reaches the VMM there), taking a deliverable interrupt when
its interrupt flag is set, and the clock reaching a throttled re-injection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.engine import flags as F
from app.engine.errors import invalid
from app.engine.scenario import STEP_OPS, check_vm_keys, parse_int

BUILTIN_PROPERTIES: dict[str, tuple[str, str]] = {
    # name -> (when it is checked, what it means)
    "remote-irr-stuck": ("finally", "at quiescence a level pin has Remote IRR set, no vCPU "
                         "holds its vector and no EOI exit is pending: the pin is dead"),
    "eoi-not-forwarded": ("always", "a vCPU retired a level vector whose pin has Remote IRR "
                          "set and no IOAPIC heard of it"),
    "eoi-will-be-lost": ("always", "a vCPU holds a level vector of a pin with Remote IRR set "
                         "but its handled-vector bit is clear and no rescan is pending"),
    "handled-vector-stale": ("always", "a handled-vector bit that no route and no pending "
                             "vector explains (extra EOI exits forever)"),
    "interrupt-lost": ("finally", "at quiescence a device still holds an unmasked level line "
                       "high: no handler will ever serve it (pending where nobody takes it, or "
                       "blocked)"),
    "delivered-twice": ("always", "two vCPUs run the handler of the same level-triggered "
                        "vector at once: one assertion served twice"),
}
DOC_KEYS = ("name", "description", "commits", "notes", "vm", "setup", "handlers", "actors",
            "properties", "expect", "symmetry")
VERDICTS = ("violation", "verified")
MAX_ACTORS = 16
MAX_PROGRAM_STEPS = 64


@dataclass
class Actor:
    name: str
    vcpu: int | None
    steps: list[dict[str, Any]]


@dataclass
class Property:
    name: str
    when: str  # "always" | "finally"
    builtin: bool
    predicate: Any = None  # the document's predicate (user properties)


@dataclass
class Exploration:
    name: str
    description: str
    commits: list[str]
    vm: dict[str, Any]
    setup: list[dict[str, Any]]
    handlers: dict[int, list[dict[str, Any]]]
    actors: list[Actor]
    properties: list[Property]
    expect: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    handler_paths: dict[int, str] = field(default_factory=dict)  # vector -> "handlers.KEY"
    symmetry: Any = None  # interchangeable vCPUs, checked by the model (app/explore/symmetry)

    def vm_config(self, profile: str | None) -> dict[str, Any]:
        cfg = dict(self.vm)
        if profile is not None:
            cfg["profile"] = profile
        cfg["event_log"] = True  # eoi-not-forwarded is read off the events of each step
        return cfg


def parse(doc: Any) -> Exploration:
    """Check a document's shape (the engine checks the values when the model is built)."""
    if not isinstance(doc, dict):
        raise invalid("an exploration is an object", "")
    for key in doc:
        if key not in DOC_KEYS:
            raise invalid(f"unknown exploration field {key!r}", key)
    name = doc.get("name", "exploration")
    if not isinstance(name, str):
        raise invalid("name is a string", "name")
    vm = check_vm_keys(doc.get("vm") or {}, "vm")
    setup = doc.get("setup") or []
    if not isinstance(setup, list):
        raise invalid("setup is a list of steps", "setup")
    for i, s in enumerate(setup):
        if not isinstance(s, dict) or s.get("op") not in STEP_OPS:
            raise invalid(f"op must be one of {', '.join(STEP_OPS)}", f"setup[{i}].op")
    handlers_doc = doc.get("handlers") or {}
    if not isinstance(handlers_doc, dict):
        raise invalid("handlers maps a vector to a list of steps", "handlers")
    handlers: dict[int, list[dict[str, Any]]] = {}
    paths: dict[int, str] = {}
    for key, steps in handlers_doc.items():
        vec = parse_int(key, f"handlers.{key}", 0, 255, key=True)
        if not isinstance(steps, list) or len(steps) > MAX_PROGRAM_STEPS:
            raise invalid(f"a handler is a list of at most {MAX_PROGRAM_STEPS} steps",
                          f"handlers.{key}")
        handlers[vec] = steps
        paths[vec] = f"handlers.{key}"
    actors_doc = doc.get("actors") or {}
    if not isinstance(actors_doc, dict) or not actors_doc:
        raise invalid("actors maps a name to {vcpu?, steps}", "actors")
    if len(actors_doc) > MAX_ACTORS:
        raise invalid(f"at most {MAX_ACTORS} actors", "actors")
    actors: list[Actor] = []
    nvcpus = vm.get("vcpus", 1)
    for aname, a in actors_doc.items():
        w = f"actors.{aname}"
        if not isinstance(a, dict) or "steps" not in a or set(a) - {"vcpu", "steps"}:
            raise invalid("an actor is {vcpu?, steps}", w)
        steps = a["steps"]
        if not isinstance(steps, list) or len(steps) > MAX_PROGRAM_STEPS:
            raise invalid(f"steps is a list of at most {MAX_PROGRAM_STEPS} steps", f"{w}.steps")
        vcpu = None
        if a.get("vcpu") is not None:
            vcpu = parse_int(a["vcpu"], f"{w}.vcpu", 0,
                             (nvcpus if isinstance(nvcpus, int) else 1) - 1)
        actors.append(Actor(str(aname), vcpu, steps))
    props_doc = doc.get("properties") or []
    if not isinstance(props_doc, list) or not props_doc:
        raise invalid("properties is a non-empty list", "properties")
    props: list[Property] = []
    seen: set[str] = set()
    for i, p in enumerate(props_doc):
        w = f"properties[{i}]"
        if isinstance(p, str):
            if p not in BUILTIN_PROPERTIES:
                raise invalid(f"built-in properties are {', '.join(BUILTIN_PROPERTIES)}", w)
            prop = Property(p, BUILTIN_PROPERTIES[p][0], True)
        elif isinstance(p, dict):
            kinds = [k for k in ("always", "finally") if k in p]
            if len(kinds) != 1 or set(p) - {"name", "always", "finally"}:
                raise invalid("a user property is {name?, always: PRED} or "
                              "{name?, finally: PRED}", w)
            pname = p.get("name", f"{kinds[0]}-{i}")
            if not isinstance(pname, str):
                raise invalid("a property name is a string", f"{w}.name")
            prop = Property(pname, kinds[0], False, p[kinds[0]])
        else:
            raise invalid("a property is a built-in name or {name?, always|finally: PRED}", w)
        if prop.name in seen:
            raise invalid(f"property {prop.name!r} named twice", w)
        seen.add(prop.name)
        props.append(prop)
    expect = doc.get("expect") or {}
    if not isinstance(expect, dict):
        raise invalid("expect maps a profile to a verdict", "expect")
    for prof, verdict in expect.items():
        if prof not in F.PRESETS:
            raise invalid(f"unknown profile {prof!r}", f"expect.{prof}")
        if verdict not in VERDICTS:
            raise invalid(f"a verdict is one of {', '.join(VERDICTS)}", f"expect.{prof}")
    commits = doc.get("commits") or []
    return Exploration(name, str(doc.get("description") or ""), [str(c) for c in commits],
                       dict(vm), list(setup), handlers, actors, props, dict(expect), doc, paths,
                       doc.get("symmetry"))


def load_text(text: str, json_only: bool = False) -> Any:
    """A document from YAML (or, with json_only, JSON) text; malformed text is an
    EngineError."""
    import yaml

    try:
        return json.loads(text) if json_only else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:  # json.JSONDecodeError is a ValueError
        raise invalid(f"not {'JSON' if json_only else 'YAML'}: {exc}", "") from None


def load_file(path: str) -> Any:
    """A document from a file: JSON for *.json, else YAML."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise invalid(f"cannot read {path}: {exc}", "") from None
    return load_text(text, json_only=p.suffix == ".json")
