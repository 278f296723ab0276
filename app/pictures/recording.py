"""What a picture is drawn from: an event log window, and where known the steps that produced
it, the findings and the state at the end.

A Recording is plain data (JSON-compatible dicts, as the API returns them), so it is built the
same way from a live VM, from a scenario variant's result (run with `observe`), or from a
result read back from a JSON file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.engine import invariants
from app.engine.bitmap import vectors as vectors_of
from app.engine.state import requests_list
from app.engine.vm import Vm


@dataclass
class EndState:
    """The state after the last event of the window (only when the window reaches the end of
    the log): what is still set there is drawn as open, not guessed."""

    remote_irr: list[int]
    irr: dict[int, list[int]]
    isr: dict[int, list[int]]
    handled: dict[int, list[int]]
    requests: dict[int, list[str]]


@dataclass
class StepMark:
    """One scenario step: which events it emitted (seq range) and how it went."""

    index: int
    op: str | None
    label: str | None
    first_seq: int  # first event of the step (> last_seq when it emitted none)
    last_seq: int
    ok: bool = True
    passed: bool | None = None  # expect steps
    text: str = ""
    checks: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Recording:
    title: str
    vcpus: int
    events: list[dict[str, Any]]
    steps: list[StepMark] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    end: EndState | None = None
    complete: bool = True  # the window starts at the log's first event (nothing before it)

    @property
    def first_seq(self) -> int:
        return int(self.events[0]["seq"]) if self.events else 0

    @property
    def last_seq(self) -> int:
        return int(self.events[-1]["seq"]) if self.events else 0


def end_state_of_vm(vm: Vm) -> EndState:
    return EndState(
        remote_irr=list(vm.bitmaps()["remote_irr"]["pins"]),
        irr={v.idx: vectors_of(v.irr | v.pir) for v in vm.vcpus},
        isr={v.idx: vectors_of(v.isr) for v in vm.vcpus},
        handled={v.idx: vectors_of(v.handled) for v in vm.vcpus},
        requests={v.idx: requests_list(v.requests) for v in vm.vcpus},
    )


def from_vm(vm: Vm, title: str, after: int = 0, limit: int | None = None) -> Recording:
    """A live VM's log window (seq > after, at most `limit` events). When the window reaches
    the log's end, the current state and the invariant findings are drawn too."""
    events = vm.log.since(after, limit)
    reaches_end = not events or events[-1]["seq"] == vm.log.next_seq - 1
    # Complete: the window holds every event from the VM's creation (a VM without an event
    # log has none, so its state is drawn as set before the window).
    rec = Recording(title, len(vm.vcpus), events,
                    complete=vm.log.enabled and after < vm.log.base and vm.log.base == 1)
    if reaches_end:
        rec.end = end_state_of_vm(vm)
        last = rec.last_seq
        found = invariants.state_findings(vm) + invariants.event_findings(vm, after)
        for f in found:
            rec.findings.append({**f, "seq": f.get("event", last)})
    return rec


def from_vm_steps(vm: Vm, title: str, steps: list[tuple[str, int]]) -> Recording:
    """A VM's whole log with step bands: `steps` is (text, last seq after the step) per step,
    e.g. the actions of an explorer's counterexample replayed on a fresh VM."""
    rec = from_vm(vm, title)
    prev = rec.first_seq - 1 if rec.events else 0
    for i, (text, last) in enumerate(steps):
        rec.steps.append(StepMark(index=i, op=None, label=None, first_seq=prev + 1,
                                  last_seq=last, text=text))
        prev = last
    return rec


def from_events(events: list[dict[str, Any]], title: str, vcpus: int,
                complete: bool = False) -> Recording:
    """Events alone (e.g. a real-KVM VM's log): no state, no findings."""
    return Recording(title, vcpus, events, complete=complete)


def end_state_of_step(state: dict[str, Any]) -> EndState:
    """The `state` summary a step carries when the run was observed."""
    vcpus = state.get("vcpus", [])
    return EndState(
        remote_irr=list(state.get("remote_irr", [])),
        irr={v["vcpu"]: list(v["irr"]) for v in vcpus},
        isr={v["vcpu"]: list(v["isr"]) for v in vcpus},
        handled={v["vcpu"]: list(v["handled_vectors"]) for v in vcpus},
        requests={v["vcpu"]: list(v["pending_requests"]) for v in vcpus},
    )


def _brief(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_brief(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_brief(v) for v in value) + "]"
    return str(value)


def step_text(step: Any) -> str:
    """A step of the document in one line: `line pin=5 level=1`; an expect step by its op."""
    if not isinstance(step, dict):
        return str(step)
    op = str(step.get("op"))
    if op == "expect":
        return op
    args = [f"{k}={_brief(v)}" for k, v in step.items() if k not in ("op", "label", "save")]
    return " ".join([op, *args])


def from_variant(variant: dict[str, Any], scenario: str | None = None,
                 doc: Any = None) -> Recording:
    """A scenario variant's result. Steps need `last_seq` (a run with observe on); without it
    the events are drawn without step bands. `doc`, the scenario document, gives the steps'
    text."""
    doc_steps = doc.get("steps") if isinstance(doc, dict) else None
    events = list(variant.get("events") or [])
    vcpus = int((variant.get("vm") or {}).get("vcpus") or 1)
    title = f"{scenario} — {variant.get('name')}" if scenario else str(variant.get("name"))
    rec = Recording(title, vcpus, events, complete=True)
    prev = 0
    seq_by_step: dict[int, int] = {}
    for s in variant.get("steps") or []:
        if "last_seq" not in s:
            break
        last = int(s["last_seq"])
        result = s.get("result") if isinstance(s.get("result"), dict) else {}
        mark = StepMark(index=int(s["index"]), op=s.get("op"), label=s.get("label"),
                        first_seq=prev + 1, last_seq=last, ok=bool(s.get("ok", True)),
                        passed=s.get("passed"),
                        checks=list(result.get("checks") or []) if s.get("op") == "expect"
                        else [])
        if isinstance(doc_steps, list) and 0 <= mark.index < len(doc_steps):
            mark.text = step_text(doc_steps[mark.index])
        if not mark.ok and isinstance(s.get("error"), dict):
            mark.text += f" — refused: {s['error'].get('detail')}"
        rec.steps.append(mark)
        seq_by_step[mark.index] = last
        prev = last
        if isinstance(s.get("state"), dict):
            rec.end = end_state_of_step(s["state"])
    for f in variant.get("findings") or []:
        seq = f.get("event", seq_by_step.get(int(f.get("step", -1)), rec.last_seq))
        rec.findings.append({**f, "seq": seq})
    return rec
