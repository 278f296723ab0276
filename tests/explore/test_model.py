"""The irqlab model against the model_api contract: deterministic actions, footprints that
really describe independence (independent actions commute and do not disable each other),
fingerprints stable across processes, encode/decode exact, and the document's checks."""

from __future__ import annotations

import subprocess
import sys
from collections import deque
from typing import Any

import pytest

from app import explorations
from app.engine.errors import EngineError
from app.explore.irq_model import IrqModel, IrqState
from app.explore.model_api import independent
from app.explore.simple_bfs import bfs


def reachable(model: IrqModel, limit: int = 5000, start: IrqState | None = None,
              skip: str | None = None) -> list[IrqState]:
    """States reachable from `start` (the initial state), breadth-first, without steps of actor
    `skip`, at most `limit` of them."""
    first = model.initial() if start is None else start
    seen = {model.fingerprint(first)}
    out = [first]
    queue = deque(out)
    while queue and len(out) < limit:
        s = queue.popleft()
        for a in model.actions(s):
            if a.actor == skip:
                continue
            t = model.step(s, a)
            fp = model.fingerprint(t)
            if fp not in seen:
                seen.add(fp)
                out.append(t)
                queue.append(t)
    return out


SOUNDNESS = [(n, p) for n in explorations.names()
             for p in ("linux-4.14", "linux-6.1", "linux-6.9", "linux-latest", "kvm-pvm")]


@pytest.mark.parametrize(("name", "profile"), SOUNDNESS, ids=[f"{n}-{p}" for n, p in SOUNDNESS])
def test_independent_actions_commute(name: str, profile: str) -> None:
    """For every reachable state and every pair of enabled actions the footprints call
    independent: each stays enabled after the other, and both orders reach the same state.
    This is what partial-order reduction relies on."""
    model = IrqModel(explorations.get(name) or {}, profile)
    pairs = 0
    for s in reachable(model):
        acts = model.actions(s)
        for i, a in enumerate(acts):
            for b in acts[i + 1:]:
                if not independent(a, b):
                    continue
                pairs += 1
                after_a = model.step(s, a)
                after_b = model.step(s, b)
                b2 = [x for x in model.actions(after_a) if x.data == b.data]
                a2 = [x for x in model.actions(after_b) if x.data == a.data]
                assert b2 and a2, f"{a.name} / {b.name} disable each other"
                ab = model.step(after_a, b2[0])
                ba = model.step(after_b, a2[0])
                assert model.fingerprint(ab) == model.fingerprint(ba), (a.name, b.name)
    assert pairs > 0


def test_actions_are_deterministic_and_step_does_not_mutate() -> None:
    model = IrqModel(explorations.get("lowest-priority-3vcpu") or {}, "linux-6.1")
    for s in reachable(model, 300):
        key = s.key()
        names = [a.name for a in model.actions(s)]
        assert names == [a.name for a in model.actions(s)]
        for a in model.actions(s):
            model.step(s, a)
        assert s.key() == key


FP_SCRIPT = """
import sys
from app import explorations
from app.explore.irq_model import IrqModel
m = IrqModel(explorations.get('seed-race-split'), 'linux-6.1')
s = m.initial()
fps = []
for _ in range(4):
    fps.append(m.fingerprint(s))
    s = m.step(s, m.actions(s)[0])
print(' '.join(map(str, fps)))
"""


def test_fingerprints_are_stable_across_processes() -> None:
    runs = {subprocess.run([sys.executable, "-c", FP_SCRIPT], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": str(seed), "PATH": ""},
                           ).stdout for seed in (1, 2)}
    assert len(runs) == 1
    model = IrqModel(explorations.get("seed-race-split") or {}, "linux-6.1")
    s = model.initial()
    local = []
    for _ in range(4):
        local.append(model.fingerprint(s))
        s = model.step(s, model.actions(s)[0])
    assert runs.pop().split() == [str(x) for x in local]
    assert all(0 <= x < 2**64 for x in local) and len(set(local)) == 4


@pytest.mark.parametrize(("name", "profile"), [("race2b-posted", "linux-6.9"),
                                               ("lowest-priority-3vcpu", "kvm-pvm"),
                                               ("race1-kernel", "linux-latest")])
def test_encode_decode_round_trip(name: str, profile: str) -> None:
    """decode(encode(s)) is s: same key, same actions, same successors (for the workers)."""
    model = IrqModel(explorations.get(name) or {}, profile)
    for s in reachable(model, 300):
        t = model.decode(model.encode(s))
        assert t.key() == s.key() and model.fingerprint(t) == model.fingerprint(s)
        acts = model.actions(s)
        assert model.actions(t) == acts
        for a in acts:
            assert model.step(t, a).key() == model.step(s, a).key()


def doc(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "t",
        "vm": {"vcpus": 2, "irqchip": "kernel"},
        "setup": [{"op": "write_rte", "vcpu": 0, "pin": 5,
                   "entry": {"vector": 0x40, "trigger": "level", "dest": 0}},
                  {"op": "enter", "vcpu": 0}, {"op": "enter", "vcpu": 1}],
        "handlers": {0x40: [{"op": "count", "name": "served"}, {"op": "line", "pin": 5,
                                                                "level": 0}, {"op": "eoi"}]},
        "actors": {"device": {"steps": [{"op": "line", "pin": 5, "level": 1}]}},
        "properties": ["remote-irr-stuck"],
    }
    base.update(over)
    return base


def test_user_properties() -> None:
    ok = doc(properties=[
        {"name": "served-once", "finally": {"counter": "served", "is": 1}},
        {"name": "pin-quiet", "finally": {"all": [{"remote_irr": {"pin": 5, "is": False}},
                                                  {"pin": 5, "line": {"is": 0}},
                                                  {"actor": "device", "done": True}]}},
        {"always": {"not": {"vcpu": 1, "isr": {"contains": 0x40}}}},
    ])
    assert bfs(IrqModel(ok, "linux-latest")).verdict == "verified"
    bad = doc(properties=[{"name": "never-in-service",
                           "always": {"vcpu": 0, "isr": {"empty": True}}}])
    r = bfs(IrqModel(bad, "linux-latest"))
    assert (r.verdict, r.property) == ("violation", "never-in-service")
    assert [a.name for a in r.trace][-1] == "vcpu0 take 0x40"
    twice = doc(properties=[{"name": "twice", "finally": {"counter": "served",
                                                          "at_least": 2}}])
    assert bfs(IrqModel(twice, "linux-latest")).property == "twice"


def test_cli_sti_gate_the_take() -> None:
    """A vCPU's main flow that never re-enables interrupts leaves the level line unserved."""
    d = doc(setup=[{"op": "write_rte", "vcpu": 0, "pin": 5,
                    "entry": {"vector": 0x40, "trigger": "level", "dest": 0}},
                   {"op": "enter", "vcpu": 0}, {"op": "enter", "vcpu": 1}],
            actors={"device": {"steps": [{"op": "line", "pin": 5, "level": 1}]},
                    "main": {"vcpu": 0, "steps": [{"op": "cli"}]}},
            properties=["interrupt-lost"])
    r = bfs(IrqModel(d, "linux-latest"))
    assert (r.verdict, r.property) == ("violation", "interrupt-lost")
    assert any(a.name.startswith("main: cli") for a in r.trace)
    d["actors"]["main"]["steps"].append({"op": "sti"})
    assert bfs(IrqModel(d, "linux-latest")).verdict == "verified"


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"actors": {"d": {"steps": [{"op": "enter", "vcpu": 0}]}}}, "actors.d.steps[0].op",
     "explorer's choice"),
    ({"actors": {"d": {"steps": [{"op": "eoi"}]}}}, "actors.d.steps[0].op", "runs on a vCPU"),
    ({"actors": {"d": {"vcpu": 0, "steps": [{"op": "eoi", "vcpu": 1}]}}},
     "actors.d.steps[0].vcpu", "program's vCPU"),
    ({"properties": ["no-such"]}, "properties[0]", "built-in"),
    ({"properties": [{"always": {"vcpu": 0, "isr": {"has": 1}}}]},
     "properties[0].always.isr", "contains"),
    ({"properties": [{"finally": {"counter": "nope", "is": 1}}]},
     "properties[0].finally.counter", "nope"),
    ({"handlers": {0x40: [{"op": "settle"}]}}, "handlers.64[0].op", "explorer's choice"),
    ({"expect": {"linux-9": "verified"}}, "expect.linux-9", "unknown profile"),
    ({"bogus": 1}, "bogus", "unknown"),
])
def test_document_errors_name_the_field(change: dict[str, Any], field: str,
                                        words: str) -> None:
    with pytest.raises(EngineError) as exc:
        IrqModel(doc(**change), "linux-latest")
    assert exc.value.field == field
    assert words in exc.value.detail


@pytest.mark.parametrize("name", explorations.names())
def test_fingerprint_covers_vm_key(name: str) -> None:
    """The fingerprint hashes Vm.key() in parts (the routes digest inherited unless an action
    writes "routes"): every reachable state's parts must be exactly Vm.key(), and its
    inherited digest the digest of its own routing table."""
    from app.explore.irq_model import routes_digest_of, routes_key

    for profile in ("linux-6.1", "linux-latest"):
        model = IrqModel(explorations.get(name) or {}, profile)
        for s in reachable(model, 2000):
            fk = s.fast_key()
            vk = s.vm.key()
            assert (fk[0], fk[1], routes_key(s.vm), fk[2], fk[3]) == vk
            assert s.routes_digest == routes_digest_of(s.vm)


@pytest.mark.parametrize(("change", "field"), [
    ({"vm": {"vcpus": 0, "irqchip": "kernel"}}, "vm.vcpus"),
    ({"vm": {"vcpus": 2, "irqchip": "both"}}, "vm.irqchip"),
    ({"vm": {"vcpus": 2, "profile": "linux-9"}}, "vm.profile"),
    ({"setup": [{"op": "enter", "vcpu": 5}]}, "setup[0].vcpu"),
    ({"setup": [{"op": "lapic", "vcpu": 0, "bogus": 1}]}, "setup[0]"),
])
def test_vm_and_setup_errors_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(EngineError) as exc:
        IrqModel(doc(**change), None)
    assert exc.value.field is not None and exc.value.field.startswith(field), exc.value.field
