"""The guest's HALT command on the real /dev/kvm: kvm-unit-tests' `sti; hlt` wait with the
in-kernel LAPIC (KVM handles HLT itself; KVM_RUN blocks while the vCPU is halted), bounded by
KvmVm.halt's deadline and KVM_GET_MP_STATE.

The kvm_pvm cases are the reproduction of the split irqchip hang in kvm-unit-tests'
"retriggered level interrupts without masking" (docs/kvm-backend-notes.md, "The kvm-unit-tests
failures on this host"): the take's implicit EOI leaves KVM_REQ_IOAPIC_EOI_EXIT pending, the
guest halts before any VM entry handles it, and a pending request does not make a halted vCPU
runnable, so the KVM_EXIT_IOAPIC_EOI waits for a wake-up that never comes.
"""

from __future__ import annotations

import pytest

from app.engine import rte as R
from app.kvm import ioctl as K
from app.kvm.vm import KvmVm, KvmVmError

from .conftest import ON_PVM, needs_kvm

pvm_only = pytest.mark.skipif(not ON_PVM, reason="documents kvm_pvm behaviour only")

PIN = 16  # GSI 16 reaches the IOAPIC only
VEC = 0x9A  # kvm-unit-tests' vector for this test (pin 0x0e there)
LEVEL_9A = R.encode(vector=VEC, trigger="level", dest=0)
OTHER = 0x41  # an edge MSI that wakes the vCPU


def _irr(vm: KvmVm) -> list[int]:
    irr: int = vm.vcpu_view(0)["irr"]
    return [v for v in range(256) if irr >> v & 1]


def _level_line_high(vm: KvmVm) -> None:
    """kvm-unit-tests: set_ioapic_redir(0x0e, 0x9a, TRIGGER_LEVEL); cli; set_irq_line(1). The
    guest is parked on its command IN with IF clear, so 0x9a is pending while IF=0."""
    vm.write_rte(0, PIN, LEVEL_9A)
    vm.set_line(PIN, 1)
    assert _irr(vm) == [VEC] and vm.remote_irr(PIN)


@needs_kvm
@pytest.mark.parametrize("irqchip", ["kernel", "split"])
def test_hlt_with_if_clear_stays_halted_with_a_vector_pending(irqchip: str) -> None:
    """The bounded halt itself: `hlt` with IF clear is not woken by a pending interrupt
    (kvm_vcpu_has_events needs interrupts allowed), so at the deadline KVM_GET_MP_STATE says
    HALTED and the step reports it instead of killing the vCPU; another KVM_RUN blocks again;
    the abort word plus KVM_SET_MP_STATE(RUNNABLE) ends the command with nothing taken and the
    vCPU back on its command loop, where the vector is still pending."""
    with KvmVm(1, irqchip=irqchip) as vm:
        _level_line_high(vm)
        res = vm.halt(0, takes=1, sti=False, wait=0.2)
        assert res.halted and res.taken == [] and res.exits[-1] == "INTR"
        assert vm.mp_state(0) == K.KVM_MP_STATE_HALTED and _irr(vm) == [VEC]
        again = vm.resume_halt(0, "none", wait=0.1)
        assert again.halted and again.exits == ["INTR"]
        with pytest.raises(KvmVmError, match="not waiting for a command"):
            vm.ack(0)
        done = vm.resume_halt(0, "abort", wait=0.2)
        assert not done.halted and done.vectors == [] and done.taken == []
        assert vm.mp_state(0) == K.KVM_MP_STATE_RUNNABLE and vm.vcpu(0).dead is None
        assert vm.ack(0) == VEC
        with pytest.raises(KvmVmError, match="not halted"):
            vm.resume_halt(0)


@needs_kvm
@pytest.mark.parametrize("x2apic", [False, True], ids=["xapic", "x2apic"])
def test_in_kernel_ioapic_retrigger_without_masking_completes_while_halting(
        x2apic: bool) -> None:
    """The in-kernel IOAPIC: the EOI (the guest's, or kvm_pvm's implicit one at the take)
    reaches the IOAPIC inside the kernel, Remote IRR clears, the still-high line is delivered
    again into IRR, and the next `sti; hlt` takes it: kvm-unit-tests' loop gets g_isr_9a == 2
    without any userspace exit."""
    with KvmVm(1, irqchip="kernel", x2apic=x2apic) as vm:
        _level_line_high(vm)
        res = vm.halt(0, takes=2, eoi=True, wait=0.5)
        assert not res.halted and res.vectors == res.taken == [VEC, VEC]
        assert res.ioapic_eois == []


@needs_kvm
@pvm_only
@pytest.mark.parametrize("eoi", [True, False], ids=["guest-eoi", "no-guest-eoi"])
@pytest.mark.parametrize("x2apic", [False, True], ids=["xapic", "x2apic"])
def test_kvm_pvm_split_eoi_exit_waits_for_a_wake_up_while_halted(x2apic: bool,
                                                                  eoi: bool) -> None:
    """The kvm-unit-tests hang. The guest takes 0x9a at its first `sti; hlt` (the implicit EOI
    raises KVM_REQ_IOAPIC_EOI_EXIT), records it, writes its own EOI (MMIO or MSR 0x80B; it
    finds ISR empty) or not, and halts again: no KVM_EXIT_IOAPIC_EOI comes, the VMM's Remote
    IRR stays set and nothing is re-delivered, and the vCPU is HALTED at the deadline. A
    KVM_RUN after the kick blocks again without the exit (vcpu_block: a pending request is
    not an event). The first thing KVM does once the vCPU is made runnable is the
    KVM_EXIT_IOAPIC_EOI for 0x9a: the request was pending all along; the VMM re-delivers the
    high line and the guest takes it a second time."""
    with KvmVm(1, irqchip="split", x2apic=x2apic) as vm:
        _level_line_high(vm)
        res = vm.halt(0, takes=2, eoi=eoi, wait=0.4)
        assert res.halted and res.taken == [VEC] and res.ioapic_eois == []
        # the four ARG INs of the command, then only the watchdog's kick: the take, the
        # guest's EOI and both hlts happened without any userspace exit
        assert res.exits == ["IO"] * 4 + ["INTR"]
        assert vm.mp_state(0) == K.KVM_MP_STATE_HALTED
        assert vm.remote_irr(PIN) and _irr(vm) == []
        again = vm.resume_halt(0, "none", wait=0.2)
        assert again.halted and again.exits == ["INTR"] and again.ioapic_eois == []
        assert vm.remote_irr(PIN) and _irr(vm) == []
        woken = vm.resume_halt(0, "runnable", wait=0.4)
        assert woken.exits[0] == "IOAPIC_EOI" and woken.ioapic_eois[0] == VEC
        assert not woken.halted and woken.vectors == woken.taken == [VEC, VEC]
        vm.set_line(PIN, 0)


@needs_kvm
@pvm_only
def test_kvm_pvm_split_pending_eoi_exit_is_delivered_at_an_interrupt_wake_up() -> None:
    """What would have rescued kvm-unit-tests: any interrupt that wakes the halted vCPU (here an
    edge MSI 0x41; in a real guest a timer tick) makes it runnable, and the entry that follows
    handles the pending request first: KVM_EXIT_IOAPIC_EOI, the VMM's re-delivery of the high
    line, and 0x9a (the higher class) is taken before 0x41."""
    with KvmVm(1, irqchip="split") as vm:
        _level_line_high(vm)
        res = vm.halt(0, takes=2, wait=0.3)
        assert res.halted and res.taken == [VEC] and res.ioapic_eois == []
        assert vm.signal_msi(0xFEE00000, 0, OTHER) == 1
        woken = vm.resume_halt(0, "none", wait=0.4)
        assert woken.exits[0] == "IOAPIC_EOI" and woken.ioapic_eois[0] == VEC
        assert not woken.halted and woken.taken == [VEC, VEC]
        assert OTHER in _irr(vm)
        vm.set_line(PIN, 0)
