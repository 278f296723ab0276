"""What this host's KVM does, pinned step by step through irqlab's own guest, and the engine
under the host's profile (app.kvm.differential.host_profile) doing the same.

The kvm_pvm cases are the measurements behind the lapic_auto_eoi flag (app/engine/flags.py,
docs/kvm-backend-notes.md "What this host's KVM is"); they skip on upstream vendor modules.
"""

from __future__ import annotations

import pytest

from app.engine import rte as R
from app.kvm.differential import (
    Observation,
    Step,
    describe,
    first_divergence,
    host_profile,
    run_engine,
    run_kvm,
)

from .conftest import ON_PVM, needs_kvm

pvm_only = pytest.mark.skipif(not ON_PVM, reason="documents kvm_pvm behaviour only")

PIN = 16
LEVEL_40 = R.encode(vector=0x40, trigger="level", dest=0)
B40, B41, B51 = 1 << 0x40, 1 << 0x41, 1 << 0x51


def both(steps: list[Step], pins: list[int], vcpus: int = 1) -> list[Observation]:
    """Run on KVM and on the engine under the host's profile; they must agree at every step.
    Returns KVM's observations."""
    real = run_kvm(steps, pins, vcpus)
    model = run_engine(steps, pins, vcpus, profile=host_profile())
    divergence = first_divergence(model, real)
    assert divergence is None, describe(divergence, steps)
    return real


@needs_kvm
def test_irq_line_status_is_the_kernels_answer() -> None:
    """KVM_IRQ_LINE_STATUS writes kvm_set_irq's status into the irq/status union. irqlab used
    to read the `level` field back (an echo of its input); the random differential caught it.
    GSI 16 reaches only the IOAPIC: 1 delivered, 0 coalesced (edge already latched, or no
    LAPIC matched), -1 masked or blocked by Remote IRR, 1 for any deassert."""
    edge = R.encode(vector=0x41, dest=0)
    steps: list[Step] = [
        ("line", PIN, 1),  # masked at reset
        ("line", PIN, 0),
        ("rte", 0, PIN, edge),
        ("line", PIN, 1),
        ("line", PIN, 1),  # edge still latched
        ("line", PIN, 0),
        ("rte", 0, PIN, LEVEL_40),
        ("line", PIN, 1),
        ("line", PIN, 1),  # Remote IRR is set: refused
        ("rte", 0, 17, R.encode(vector=0x42, dest=5)),  # no vCPU with APIC ID 5
        ("line", 17, 1),
        ("msi", 0xFEE00000, 0, 0x43),
        ("msi", 0xFEE05000, 0, 0x43),
    ]
    real = both(steps, [PIN, 17])
    assert [o.status for o in real if o.status is not None] == [-1, 1, 1, 0, 1, 1, -1, 0, 1, 0]


@needs_kvm
@pvm_only
def test_kvm_pvm_level_redelivery_lands_in_irr_with_tmr_and_ppr_at_tpr() -> None:
    """The level vector re-delivered by the implicit EOI while its line is high is in IRR, TMR
    stays set, ISR stays empty and PPR is TPR; Remote IRR is set again by the re-delivery.
    Once the line is low, the next take clears Remote IRR and nothing comes back."""
    steps: list[Step] = [
        ("rte", 0, PIN, LEVEL_40),
        ("line", PIN, 1),
        ("ack", 0),
        ("ack", 0),  # taken again: no EOI needed
        ("tpr", 0, 0x20),
        ("line", PIN, 0),
        ("ack", 0),
        ("eoi", 0),  # finds ISR empty
        ("ack", 0),
    ]
    real = both(steps, [PIN])
    after_ack = real[2]
    assert after_ack.ack_vector == 0x40
    assert (after_ack.irr, after_ack.isr, after_ack.tmr, after_ack.ppr) == ((B40,), (0,),
                                                                            (B40,), (0,))
    assert after_ack.remote_irr == (True,)
    assert real[3].ack_vector == 0x40 and real[3].irr == (B40,)
    assert real[6].ack_vector == 0x40 and real[6].ppr == (0x20,)
    assert (real[6].irr, real[6].isr, real[6].remote_irr) == ((0,), (0,), (False,))
    assert real[8].ack_vector is None


@needs_kvm
@pvm_only
def test_kvm_pvm_takes_a_lower_class_without_an_eoi() -> None:
    """ISR never holds the taken vector, so PPR does not rise: after 0x51, 0x41 is taken at the
    next window (upstream: blocked until the EOI of 0x51). TPR still blocks."""
    steps: list[Step] = [
        ("msi", 0xFEE00000, 0, 0x41),
        ("msi", 0xFEE00000, 0, 0x51),
        ("ack", 0),
        ("ack", 0),
        ("tpr", 0, 0x40),
        ("msi", 0xFEE00000, 0, 0x41),
        ("ack", 0),
    ]
    real = both(steps, [PIN])
    assert [o.ack_vector for o in real if o.step[0] == "ack"] == [0x51, 0x41, None]
    assert real[-1].irr == (B41,)


@needs_kvm
@pvm_only
def test_kvm_pvm_implicit_eoi_is_filtered_by_the_handled_vectors() -> None:
    """The implicit EOI goes through kvm_ioapic_send_eoi's handled-vector filter: vCPU0 rescans
    (at its empty window) while 0x40's pin targets vCPU1 and 0x40 is not pending on vCPU0, so
    when a level MSI with vector 0x40 is then taken on vCPU0, the IOAPIC does not hear of it
    and pin 16 keeps Remote IRR (vCPU1 still holds the vector)."""
    steps: list[Step] = [
        ("rte", 0, PIN, R.encode(vector=0x40, trigger="level", dest=1)),
        ("line", PIN, 1),
        ("ack", 0),
        ("msi", 0xFEE00000, 0, 0xC040),
        ("ack", 0),
    ]
    real = both(steps, [PIN], vcpus=2)
    assert real[-1].ack_vector == 0x40 and real[-1].remote_irr == (True,)
    assert real[-1].irr == (0, B40) and real[-1].isr == (0, 0)


@needs_kvm
@pvm_only
def test_kvm_pvm_implicit_eoi_of_a_stale_pending_vector_is_forwarded() -> None:
    """The other side of the filter: the pin is moved from vCPU0 to vCPU1 while 0x40 is pending
    in vCPU0's IRR, so the rescan keeps the bit (0fc5a36dd6b3, pending vectors stay handled);
    the implicit EOI at vCPU0's take clears Remote IRR and the still-high line is re-delivered,
    now to vCPU1."""
    steps: list[Step] = [
        ("rte", 0, PIN, LEVEL_40),
        ("line", PIN, 1),
        ("rte", 0, PIN, R.encode(vector=0x40, trigger="level", dest=1), ("high",)),
        ("ack", 0),
    ]
    real = both(steps, [PIN], vcpus=2)
    assert real[-1].ack_vector == 0x40
    assert real[-1].irr == (0, B40) and real[-1].remote_irr == (True,)
