"""KVM vCPU requests: raising them (T13) and consuming them at the next entry (T11)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import lapic, scan
from .events import VCPU_NAMES
from .state import (
    REQ_EVENT,
    REQ_IOAPIC_EOI_EXIT,
    REQ_LOAD_EOI_EXITMAP,
    REQ_SCAN_IOAPIC,
    REQUEST_NAMES,
    Vcpu,
)

if TYPE_CHECKING:
    from .vm import Vm


def make_request(vm: Vm, v: Vcpu, bit: int, cause: int | None) -> None:
    """kvm_make_request + kick: a vCPU in guest mode is forced out, so the request is always
    consumed before that vCPU runs another guest instruction. KVM_REQ_EVENT is raised on
    almost every step, so it shows in pending_requests but gets no event of its own."""
    if not v.requests & bit:
        v.requests |= bit
        if bit != REQ_EVENT:
            vm.log.emit(VCPU_NAMES[v.idx], "request", cause, "request", REQUEST_NAMES[bit])
    if v.pv_eoi:
        lapic.pv_eoi_sync_from_guest(vm, v, cause)  # the kick is an exit
    v.in_guest = False


def make_scan_request(vm: Vm, targets: Iterable[int] | None, cause: int | None) -> None:
    """kvm_make_scan_ioapic_request(_mask): SCAN_IOAPIC on the given vCPUs, or all of them."""
    vcpus = vm.vcpus
    if targets is None:
        for v in vcpus:
            make_request(vm, v, REQ_SCAN_IOAPIC, cause)
    else:
        for i in sorted(set(targets)):
            make_request(vm, vcpus[i], REQ_SCAN_IOAPIC, cause)


def vcpu_enter(
    vm: Vm, v: Vcpu, cause: int | None, until_exit: bool = False
) -> list[dict[str, Any]]:
    """KVM_RUN until the vCPU executes guest code: vcpu_enter_guest consumes requests in
    KVM's order (IOAPIC_EOI_EXIT, SCAN_IOAPIC, LOAD_EOI_EXITMAP, then EVENT), and an EOI exit
    returns to the VMM first, with the remaining requests left for the next KVM_RUN.
    Returns the userspace exits taken on the way.

    With until_exit, KVM_RUN stops where KVM returns to userspace with KVM_EXIT_IOAPIC_EOI
    (vcpu_enter_guest: run->exit_reason = KVM_EXIT_IOAPIC_EOI, return 0): the exit is
    returned unhandled and the vCPU stays outside guest mode until the VMM handles it
    (vmm_eoi_exit) and issues KVM_RUN again. Other vCPUs and devices may act in between."""
    if v.requests == REQ_EVENT and not (v.pir and vm.apicv_intel):
        # The common case (an interrupt was accepted): nothing else to do at this entry.
        v.requests = 0
        if v.pv_eoi_en:
            lapic.pv_eoi_sync_to_guest(vm, v, cause)
        v.in_guest = True
        return []
    exits: list[dict[str, Any]] = []
    actor = VCPU_NAMES[v.idx]
    while True:
        if v.requests & REQ_IOAPIC_EOI_EXIT:
            v.requests &= ~REQ_IOAPIC_EOI_EXIT
            vec = v.pending_ioapic_eoi
            if not vm.flags.eoi_exit_bitmap or (v.handled >> vec) & 1:
                seq = vm.log.emit(actor, "exit-ioapic-eoi", cause, "vector", vec)
                if until_exit:
                    v.in_guest = False
                    return [{"reason": "KVM_EXIT_IOAPIC_EOI", "vector": vec, "pending": True}]
                assert vm.vmm is not None
                exits.append(
                    {
                        "reason": "KVM_EXIT_IOAPIC_EOI",
                        "vector": vec,
                        "ioapic": vm.vmm.handle_eoi_exit(vm, vec, seq),
                    }
                )
                continue  # the VMM issues KVM_RUN again
            vm.log.emit(
                actor, "eoi-exit-dropped", cause, "vector", vec, "reason", "no-longer-handled"
            )
        if v.requests & REQ_SCAN_IOAPIC:
            v.requests &= ~REQ_SCAN_IOAPIC
            scan.vcpu_scan_ioapic(vm, v, cause)
        if v.requests & REQ_LOAD_EOI_EXITMAP:
            v.requests &= ~REQ_LOAD_EOI_EXITMAP
            # vcpu_load_eoi_exitmap: AVIC has no EOI-exit bitmap (svm_load_eoi_exitmap does
            # nothing), so only the software bitmap exists there.
            if not vm.avic:
                v.eoi_exitmap = v.handled
                vm.log.emit(actor, "eoi-exitmap-loaded", cause, "vectors", v.handled)
        if v.requests & REQ_EVENT:
            v.requests &= ~REQ_EVENT
            # kvm_lapic_sync_to_vapic runs only on an entry that handles KVM_REQ_EVENT.
            if v.pv_eoi_en:
                lapic.pv_eoi_sync_to_guest(vm, v, cause)
        if v.pir and vm.apicv_intel:
            lapic.sync_pir_to_irr(vm, v, cause)
        v.in_guest = True
        return exits
