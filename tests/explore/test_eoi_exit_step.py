"""KVM_EXIT_IOAPIC_EOI reaching the VMM as its own step: in the engine (enter until_exit, then
vmm_eoi_exit), in scenarios, and as an action the explorer interleaves with other actors."""

from __future__ import annotations

from app import explorations
from app.engine.scenario import run_scenario
from app.engine.state import REQ_IOAPIC_EOI_EXIT
from app.engine.vm import Vm, config_from_dict
from app.explore.irq_model import IrqModel

from .test_model import reachable


def _vm_with_eoi_exit() -> Vm:
    """Split irqchip, a level interrupt on pin 5 taken, its line lowered and EOIed by vCPU0:
    its EOI exit is requested, Remote IRR still set."""
    vm = Vm(config_from_dict({"vcpus": 2, "irqchip": "split", "profile": "linux-latest"}))
    vm.write_rte(0, 5, 0x40 | 1 << 15)
    vm.enter(0)
    vm.enter(1)
    vm.set_line(5, 1)
    vm.enter(0)
    assert vm.ack(0)["vector"] == 0x40
    vm.set_line(5, 0)  # the handler quiets the device
    vm.eoi(0)
    assert vm.vcpus[0].requests & REQ_IOAPIC_EOI_EXIT
    return vm


def test_enter_until_exit_then_vmm_equals_one_go() -> None:
    one_go = _vm_with_eoi_exit()
    split = _vm_with_eoi_exit()
    out = one_go.enter(0)
    assert [x["reason"] for x in out["exits"]] == ["KVM_EXIT_IOAPIC_EOI"]
    first = split.enter(0, until_exit=True)
    assert first["exits"] == [{"reason": "KVM_EXIT_IOAPIC_EOI", "vector": 0x40, "pending": True}]
    v = split.vcpus[0]
    assert not v.in_guest and not v.requests & REQ_IOAPIC_EOI_EXIT
    assert split.ioapic.redir[5] & (1 << 14), "Remote IRR stays set until the VMM acts"
    split.vmm_eoi_exit(0)
    assert not split.ioapic.redir[5] & (1 << 14)
    split.enter(0)  # the VMM's next KVM_RUN
    assert split.ioapic.key() == one_go.ioapic.key()
    assert [x.key() for x in split.vcpus] == [x.key() for x in one_go.vcpus]


def test_scenario_steps_replay_the_split_exit() -> None:
    steps = [
        {"op": "write_rte", "vcpu": 0, "pin": 5, "entry": {"vector": 0x40, "trigger": "level"}},
        {"op": "enter", "vcpu": 0}, {"op": "line", "pin": 5, "level": 1},
        {"op": "ack", "vcpu": 0}, {"op": "line", "pin": 5, "level": 0},
        {"op": "eoi", "vcpu": 0},
        {"op": "enter", "vcpu": 0, "until_exit": True},
        {"op": "expect", "remote_irr": [5]},
        {"op": "vmm_eoi_exit", "vcpu": 0},
        {"op": "expect", "remote_irr": []},
    ]
    doc = {"name": "t", "vm": {"vcpus": 1, "irqchip": "split"}, "steps": steps}
    assert run_scenario(doc)["passed"]


def test_explorer_interleaves_the_vmm_step() -> None:
    """In seed-race-split some reachable state has vCPU0's exit pending: there vCPU0 offers only
    the VMM step (no entry, no guest code) while another actor still has a step."""
    model = IrqModel(explorations.get("seed-race-split") or {}, "linux-latest")
    found = 0
    for s in reachable(model):
        acts = model.actions(s)
        if s.exits & 1:
            mine = [a for a in acts if a.actor == "vcpu0"]
            assert [a.data for a in mine] == [("x", 0)]
            if any(a.actor != "vcpu0" for a in acts):
                found += 1
    assert found
