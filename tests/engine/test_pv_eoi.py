"""PV EOI (MSR_KVM_PV_EOI_EN, lapic.c: apic_sync_pv_eoi_to_guest / apic_sync_pv_eoi_from_guest):
when KVM arms it, when the guest's EOI skips the exit, and when KVM settles it."""

from __future__ import annotations

from typing import Any

import pytest

from app.engine import rte as R
from app.engine.errors import EngineError
from app.engine.events import event_fields
from app.engine.msi import LapicIrq, irq_to_msi
from app.engine.vm import Vm
from tests.engine.conftest import P, V, make_vm, rirr

VE = 0x60  # edge MSI vector: in no route, so never in ioapic_handled_vectors
VL = 0x50  # a lower edge vector


def msi(vm: Vm, vector: int, dest: int = 0) -> None:
    irq = LapicIrq(vector=vector, delivery_mode=0, logical=False, level_trig=False, dest=dest)
    lo, hi, data = irq_to_msi(irq, False)
    vm.signal_msi(lo, hi, data)


def eoi_events(vm: Vm) -> list[dict[str, Any]]:
    return [event_fields(e) for e in vm.log.events if e[2] == "eoi"]


def pv_vm(irqchip: str = "kernel", **config: Any) -> Vm:
    vm = make_vm("linux-latest", irqchip, **config)
    vm.enter(0)
    vm.enter(1)
    vm.set_pv_eoi(0, 0x1000 | 1)
    return vm


def test_pv_eoi_skips_the_exit_and_kvm_retires_the_vector_at_the_next_exit() -> None:
    vm = pv_vm()
    msi(vm, VE)
    assert vm.ack(0)["vector"] == VE
    v = vm.vcpus[0]
    assert vm.vcpu_view(0)["pv_eoi"] == "armed"
    r = vm.eoi(0)
    assert r["path"] == "pv-eoi" and r["deferred"] is True
    # No exit: KVM still has VE in service until it looks at the flag.
    assert v.isr >> VE & 1 and v.in_guest and not v.requests
    assert vm.vcpu_view(0)["pv_eoi"] == "guest-eoi-pending-sync"
    vm.exit_guest(0)
    assert v.isr == 0 and vm.vcpu_view(0)["pv_eoi"] == "off"
    assert eoi_events(vm)[-1]["path"] == "pv-eoi-sync"
    assert eoi_events(vm)[-1]["vector"] == VE


def test_pv_eoi_disabled_means_the_eoi_traps() -> None:
    vm = make_vm()
    vm.enter(0)
    msi(vm, VE)
    vm.ack(0)
    assert vm.eoi(0)["path"] == "trap"


def test_pv_eoi_not_armed_for_a_handled_vector() -> None:
    """kvm_ioapic_handles_vector: the EOI of a level pin's vector must reach the IOAPIC, so it
    always exits."""
    for irqchip in ("kernel", "split"):
        vm = pv_vm(irqchip)
        vm.write_rte(0, P, R.encode(vector=V, trigger="level", dest=0))
        vm.enter(0)
        vm.set_line(P, 1)
        assert vm.ack(0)["vector"] == V
        assert vm.vcpus[0].handled >> V & 1 and vm.vcpu_view(0)["pv_eoi"] == "off"
        vm.set_line(P, 0)
        r = vm.eoi(0, run_exits=True)
        assert r["path"] == "trap" and r["forwarded"] is True
        assert rirr(vm, P) == 0


def test_pv_eoi_not_armed_while_irr_is_pending() -> None:
    """irr_pending: a lower vector waiting in IRR could nest, so the entry leaves PV EOI off;
    once it is taken (IRR empty, highest_isr_cache = VL) the next acknowledgement arms it."""
    vm = pv_vm()
    msi(vm, VE)
    msi(vm, VL)
    assert vm.ack(0)["vector"] == VE
    assert vm.vcpus[0].irr >> VL & 1 and vm.vcpu_view(0)["pv_eoi"] == "off"
    assert vm.eoi(0)["path"] == "trap"
    assert vm.ack(0)["vector"] == VL
    assert vm.vcpu_view(0)["pv_eoi"] == "armed"


def test_pv_eoi_disarmed_by_any_exit_before_the_guest_eoi() -> None:
    """apic_sync_pv_eoi_from_guest: the flag still set at an exit means the guest has not
    EOIed; KVM clears it, and the guest's later EOI is an ordinary (trapping) write."""
    vm = pv_vm()
    msi(vm, VE)
    vm.ack(0)
    vm.mmio(0, "read", 0x10, 4)  # any exit, here an IOAPIC access
    assert vm.vcpu_view(0)["pv_eoi"] == "off"
    r = vm.eoi(0)
    assert r["path"] == "trap" and r["vector"] == VE


def test_pv_eoi_kick_settles_a_taken_pv_eoi_before_the_new_interrupt() -> None:
    """An interrupt for the vCPU kicks it: the exit settles the PV EOI first, so the LAPIC
    never holds a vector in ISR that the guest has already EOIed when it injects the next."""
    vm = pv_vm()
    msi(vm, VE)
    vm.ack(0)
    vm.eoi(0)
    msi(vm, VE)
    assert vm.vcpus[0].isr == 0 and vm.vcpus[0].irr >> VE & 1
    assert vm.ack(0)["vector"] == VE


@pytest.mark.parametrize("apicv", [True, "avic"])
def test_pv_eoi_never_armed_with_apic_virtualization(apicv: bool | str) -> None:
    """With APICv or AVIC the CPU moves IRR to ISR itself and apic_set_isr keeps no
    highest_isr_cache, so apic_sync_pv_eoi_to_guest never arms PV EOI."""
    vm = pv_vm("split", apicv=apicv)
    msi(vm, VE)
    assert vm.ack(0)["vector"] == VE
    assert vm.vcpu_view(0)["pv_eoi"] == "off" and vm.vcpus[0].isr_cache == -1
    assert vm.eoi(0)["path"] == "virtualized"


def test_pv_eoi_msr_checks() -> None:
    vm = make_vm()
    with pytest.raises(EngineError, match="aligned"):
        vm.set_pv_eoi(0, 0x1002 | 1)
    with pytest.raises(EngineError, match="hardware"):
        make_vm("hardware").set_pv_eoi(0, 0x1001)
    vm.set_pv_eoi(0, 0x1001)
    assert vm.vcpu_view(0)["pv_eoi_enabled"] is True
    vm.set_pv_eoi(0, 0x1000)
    assert vm.vcpu_view(0)["pv_eoi_enabled"] is False


def test_pv_eoi_decides_by_handled_vectors_not_by_trigger_mode() -> None:
    """apic_sync_pv_eoi_to_guest asks kvm_ioapic_handles_vector, not TMR: a level MSI that no
    IOAPIC route explains (so its vector is not handled) gets PV EOI, and the sync at the
    next exit drops its EOI in kvm_ioapic_send_eoi just as a trapped EOI would be."""
    vm = pv_vm()
    lo, hi, data = irq_to_msi(LapicIrq(vector=VE, delivery_mode=0, logical=False,
                                       level_trig=True, dest=0), False)
    vm.signal_msi(lo, hi, data)
    assert vm.vcpus[0].tmr >> VE & 1 and not vm.vcpus[0].handled >> VE & 1
    vm.ack(0)
    assert vm.vcpu_view(0)["pv_eoi"] == "armed"
    assert vm.eoi(0)["path"] == "pv-eoi"
    vm.exit_guest(0)
    last = eoi_events(vm)[-1]
    assert (last["path"], last["level"]) == ("pv-eoi-sync", True)
    assert [e[2] for e in vm.log.events[-2:]] == ["eoi", "eoi-not-forwarded"]
