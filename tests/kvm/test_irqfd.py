"""irqfds on this host's /dev/kvm: KVM_IRQFD (app.kvm.ioctl), KvmVm.attach_irqfd /
irqfd_trigger / resamples (app.kvm.vm), the split VMM's resamplefds (app.kvm.split_vmm) and the
`resampler` / `irqfd` scenario steps of the differential harness (app.kvm.scenario_diff).

In-kernel a resampling irqfd (KVM_IRQFD_FLAG_RESAMPLE) asserts its GSI with
KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID until the IOAPIC's ack notifier for the pin runs (an EOI of the
pin's vector, and since fef8f2b90edb, v6.3, an unmask finding a stale irr), which lowers the
line and signals the resamplefd. KVM refuses the flag with a split irqchip; there QEMU (and
irqlab's VMM) keeps the resamplefd and kicks it from ioapic_eoi_broadcast.

On kvm_pvm taking an interrupt comes with an implicit EOI (docs/kvm-backend-notes.md): the ack
notifier, and so the resample, runs at the take, and the guest's EOI afterwards signals nothing.
Tests that describe upstream timing are strict xfails on kvm_pvm; the kvm_pvm timing has its own
tests, skipped elsewhere. Every test needing the device skips with the detector's reason where
it is unusable.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest

from app.engine import rte as R
from app.engine.flags import PRESETS
from app.kvm import ioctl as K
from app.kvm import scenario_diff as SD
from app.kvm.differential import host_profile
from app.kvm.vm import KvmVm, KvmVmError

from .conftest import ON_PVM, needs_kvm, pvm_implicit_eoi

PIN, VEC = 10, 0x5A
BIT = 1 << VEC
LEVEL = VEC | R.TRIGGER_BIT  # fixed, physical, dest 0, unmasked
EDGE_PIN, EDGE_VEC = 11, 0x61

only_on_pvm = pytest.mark.skipif(not ON_PVM, reason="kvm_pvm's implicit EOI timing")


def _vectors(bits: int) -> list[int]:
    return [v for v in range(256) if bits >> v & 1]


def _irr(vm: KvmVm, n: int = 0) -> list[int]:
    return _vectors(vm.vcpu_view(n)["irr"])


def _ioapic_irr(vm: KvmVm, pin: int = PIN) -> bool:
    """The in-kernel IOAPIC's latched input (KVM_GET_IRQCHIP's irr)."""
    return bool(vm.vmfd.get_ioapic().irr >> pin & 1)


def _mask(vm: KvmVm, entry: int, masked: bool, pin: int = PIN) -> None:
    """The guest rewrites the RTE's low dword with the mask bit set or clear."""
    vm.write_rte(0, pin, entry | R.MASK_BIT if masked else entry, ("low",))


# ---- the kernel's interface


@needs_kvm
def test_host_offers_irqfd_and_resampling() -> None:
    with K.Kvm() as kvm:
        assert kvm.check_extension(K.KVM_CAP_IRQFD) > 0
        assert kvm.check_extension(K.KVM_CAP_IRQFD_RESAMPLE) > 0


@needs_kvm
def test_irqfd_needs_an_in_kernel_irqchip_and_resampling_a_full_one() -> None:
    """kvm_arch_irqfd_allowed (654f1f13ea56): no irqchip refuses every irqfd, a split irqchip
    refuses KVM_IRQFD_FLAG_RESAMPLE (its EOIs go to userspace, so no ack notifier would ever
    run) and takes a plain irqfd."""
    with K.Kvm() as kvm, kvm.create_vm() as bare, K.EventFd() as efd:
        with pytest.raises(K.KvmError) as exc:
            bare.irqfd(efd.fd, PIN)
        assert exc.value.errno == errno.EINVAL
    with KvmVm(1, irqchip="split") as vm, K.EventFd() as efd, K.EventFd() as rfd:
        with pytest.raises(K.KvmError) as exc:
            vm.vmfd.irqfd(efd.fd, PIN, K.KVM_IRQFD_FLAG_RESAMPLE, rfd.fd)
        assert exc.value.errno == errno.EINVAL
        vm.vmfd.irqfd(efd.fd, PIN)  # plain: accepted
        vm.vmfd.irqfd(efd.fd, PIN, K.KVM_IRQFD_FLAG_DEASSIGN)
    with KvmVm(1) as vm, K.EventFd() as efd, K.EventFd() as rfd:
        vm.vmfd.irqfd(efd.fd, PIN, K.KVM_IRQFD_FLAG_RESAMPLE, rfd.fd)
        with pytest.raises(K.KvmError) as exc:  # one eventfd is one irqfd
            vm.vmfd.irqfd(efd.fd, PIN, K.KVM_IRQFD_FLAG_RESAMPLE, rfd.fd)
        assert exc.value.errno == errno.EBUSY


@needs_kvm
def test_trigger_returns_after_the_injection() -> None:
    """KVM injects an IOAPIC route from a work item that may run after the eventfd write
    returned (measured: ~2% of writes); irqfd_trigger's deassign/assign waits for it. A masked
    level pin latches irr and nothing else, so it must be visible right after every trigger,
    and the unmask's resample (6.3+) clears it for the next round."""
    if not PRESETS[host_profile()].flags.unmask_resamples:
        pytest.skip("the host kernel predates fef8f2b90edb (the unmask does not resample)")
    with KvmVm(1) as vm:
        vm.write_rte(0, PIN, LEVEL | R.MASK_BIT)
        vm.attach_irqfd(PIN, resample=True)
        for i in range(300):
            vm.irqfd_trigger(PIN)
            assert _ioapic_irr(vm), f"round {i}: the injection had not landed"
            _mask(vm, LEVEL, False)
            assert not _ioapic_irr(vm)
            _mask(vm, LEVEL, True)
        assert vm.resamples(PIN) == 300
        assert _irr(vm) == []


# ---- in-kernel delivery and resampling


@needs_kvm
def test_plain_irqfd_pulses_the_line() -> None:
    """Without resampling an irqfd is a pulse (kvm_set_irq 1 then 0, userspace's source): an
    edge pin delivers once per write and its input is low again afterwards."""
    with KvmVm(1) as vm:
        vm.write_rte(0, EDGE_PIN, EDGE_VEC)
        fd = vm.attach_irqfd(EDGE_PIN)
        assert fd.resample is None
        with pytest.raises(KvmVmError, match="no resamplefd"):
            vm.resamples(EDGE_PIN)
        vm.irqfd_trigger(EDGE_PIN)
        assert _irr(vm) == [EDGE_VEC]
        assert not _ioapic_irr(vm, EDGE_PIN)
        assert vm.ack(0) == EDGE_VEC
        vm.eoi(0)
        vm.irqfd_trigger(EDGE_PIN)  # a new edge each time
        assert vm.ack(0) == EDGE_VEC


@needs_kvm
def test_resampling_irqfd_holds_the_line_until_the_ack() -> None:
    """The resampling irqfd asserts the level pin and keeps it asserted: delivered, Remote IRR
    set, irr latched, nothing signalled yet; a second write while Remote IRR is set coalesces."""
    with KvmVm(1) as vm:
        vm.write_rte(0, PIN, LEVEL)
        vm.attach_irqfd(PIN, resample=True)
        vm.irqfd_trigger(PIN)
        assert _irr(vm) == [VEC]
        assert vm.remote_irr(PIN) and _ioapic_irr(vm)
        assert vm.resamples(PIN) == 0
        vm.irqfd_trigger(PIN)
        assert _irr(vm) == [VEC] and vm.resamples(PIN) == 0


@needs_kvm
@pvm_implicit_eoi
def test_resample_on_the_guests_eoi() -> None:
    """Upstream: the take sets ISR and signals nothing; the guest's EOI runs the ack notifier,
    which lowers the resampler's line (irr clear, nothing re-delivered) and signals the
    resamplefd once."""
    with KvmVm(1) as vm:
        vm.write_rte(0, PIN, LEVEL)
        vm.attach_irqfd(PIN, resample=True)
        vm.irqfd_trigger(PIN)
        assert vm.ack(0) == VEC
        assert _vectors(vm.vcpu_view(0)["isr"]) == [VEC]
        assert vm.resamples(PIN) == 0
        vm.eoi(0)
        assert vm.resamples(PIN) == 1
        assert not vm.remote_irr(PIN) and not _ioapic_irr(vm) and _irr(vm) == []


@needs_kvm
@only_on_pvm
def test_kvm_pvm_resamples_at_the_take() -> None:
    """kvm_pvm: the take's implicit EOI runs the ack notifier. The resamplefd is signalled
    during the ack, the line is lowered before the IOAPIC looks at it, so (unlike a line held
    by KVM_IRQ_LINE, test_kvm_vm.py::test_kvm_pvm_ack_has_implicit_eoi) nothing is re-delivered;
    the guest's EOI afterwards finds ISR empty and signals nothing."""
    with KvmVm(1) as vm:
        vm.write_rte(0, PIN, LEVEL)
        vm.attach_irqfd(PIN, resample=True)
        vm.irqfd_trigger(PIN)
        assert vm.ack(0) == VEC
        assert vm.resamples(PIN) == 1
        view = vm.vcpu_view(0)
        assert (view["irr"], view["isr"]) == (0, 0)
        assert not vm.remote_irr(PIN) and not _ioapic_irr(vm)
        vm.eoi(0)
        assert vm.resamples(PIN) == 0
        # The device still wants service: it writes again and the pin is delivered again.
        vm.irqfd_trigger(PIN)
        assert _irr(vm) == [VEC] and vm.remote_irr(PIN)
        assert vm.ack(0) == VEC and vm.resamples(PIN) == 1


@needs_kvm
def test_unmask_resamples_a_stale_irr() -> None:
    """fef8f2b90edb (v6.3, engine flag unmask_resamples): unmasking a level pin whose irr is
    latched, with Remote IRR clear and a resampler registered, signals the resampler and clears
    irr instead of delivering. Before it the unmask delivered. The host's preset says which."""
    resamples = PRESETS[host_profile()].flags.unmask_resamples
    with KvmVm(1) as vm:
        vm.write_rte(0, PIN, LEVEL | R.MASK_BIT)
        vm.attach_irqfd(PIN, resample=True)
        vm.irqfd_trigger(PIN)
        assert _ioapic_irr(vm) and _irr(vm) == [] and not vm.remote_irr(PIN)
        _mask(vm, LEVEL, False)
        if resamples:
            assert vm.resamples(PIN) == 1
            assert not _ioapic_irr(vm) and _irr(vm) == [] and not vm.remote_irr(PIN)
            # The resample source stays asserted in KVM (only irr was cleared): the device's
            # next write re-latches irr and, the pin now unmasked, delivers.
            vm.irqfd_trigger(PIN)
            assert _irr(vm) == [VEC] and vm.remote_irr(PIN)
        else:
            assert vm.resamples(PIN) == 0
            assert _irr(vm) == [VEC] and vm.remote_irr(PIN)


@needs_kvm
def test_unmask_with_remote_irr_set_does_not_resample() -> None:
    """The unmask resample needs Remote IRR clear: a pin masked while its interrupt is still
    unacknowledged keeps Remote IRR (no take yet), and unmasking it signals nothing."""
    with KvmVm(1) as vm:
        vm.write_rte(0, PIN, LEVEL)
        vm.attach_irqfd(PIN, resample=True)
        vm.irqfd_trigger(PIN)
        _mask(vm, LEVEL, True)
        _mask(vm, LEVEL, False)
        assert vm.remote_irr(PIN) and vm.resamples(PIN) == 0


# ---- split irqchip: the resamplefd is the VMM's


@needs_kvm
def test_split_irqfd_bypasses_the_vmms_ioapic() -> None:
    """Split: the irqfd delivers the pin's committed MSI route itself; the VMM's IOAPIC never
    sees it (no Remote IRR, no irr), as with QEMU's INTx irqfds."""
    with KvmVm(1, irqchip="split") as vm:
        vm.write_rte(0, PIN, LEVEL)
        fd = vm.attach_irqfd(PIN, resample=True)
        assert not fd.kernel_resample and fd.anchor is None
        assert vm.vmm is not None and vm.vmm.resamplers == {PIN: 0}
        vm.irqfd_trigger(PIN)
        assert _irr(vm) == [VEC]
        assert not vm.remote_irr(PIN) and vm.vmm.ioapic.irr == 0


@needs_kvm
def test_split_resample_comes_from_the_eoi_exit() -> None:
    """ioapic_eoi_broadcast kicks the resamplefd for every level pin with the EOIed vector, with
    Remote IRR clear as here. KVM exits for the vector because the pin's level route is
    committed; on kvm_pvm the exit (and so the kick) comes with the take."""
    with KvmVm(1, irqchip="split") as vm:
        vm.write_rte(0, PIN, LEVEL)
        vm.attach_irqfd(PIN, resample=True)
        vm.irqfd_trigger(PIN)
        assert vm.ack(0) == VEC
        assert vm.vmm is not None
        exits = [e for e in vm.vmm.exits if e["reason"] == "KVM_EXIT_IOAPIC_EOI"]
        if ON_PVM:
            assert vm.resamples(PIN) == 1 and len(exits) == 1
            vm.eoi(0)
            assert vm.resamples(PIN) == 0
        else:
            assert vm.resamples(PIN) == 0 and exits == []
            vm.eoi(0)
            assert vm.resamples(PIN) == 1
        assert vm.vmm.resamplers == {PIN: 1}
        assert _irr(vm) == []


@needs_kvm
def test_split_eoi_register_kicks_the_resamplefd() -> None:
    """The IOAPIC's own EOI register (version 0x20) runs the same broadcast: a guest write of
    the vector kicks the resamplefd; an edge pin with that vector would not (level only)."""
    with KvmVm(1, irqchip="split") as vm:
        vm.write_rte(0, PIN, LEVEL | R.MASK_BIT)
        vm.attach_irqfd(PIN, resample=True)
        vm.mmio(0, "write", 0x40, VEC)
        assert vm.resamples(PIN) == 1
        vm.write_rte(0, PIN, VEC | R.MASK_BIT)  # edge
        vm.mmio(0, "write", 0x40, VEC)
        assert vm.resamples(PIN) == 0


@needs_kvm
def test_one_irqfd_per_gsi_and_close_releases_the_eventfds() -> None:
    vm = KvmVm(1)
    try:
        fd = vm.attach_irqfd(PIN, resample=True)
        with pytest.raises(KvmVmError, match="already attached"):
            vm.attach_irqfd(PIN)
        with pytest.raises(KvmVmError, match="no irqfd"):
            vm.irqfd_trigger(PIN + 1)
    finally:
        vm.close()
    assert fd.trigger.closed and fd.resample is not None and fd.resample.closed
    assert fd.anchor is not None and fd.anchor.closed


# ---- the differential harness


UNMASK_STEPS: list[dict[str, Any]] = [
    {"op": "write_rte", "pin": PIN, "entry": {"vector": VEC, "trigger": "level", "dest": 0}},
    {"op": "resampler", "gsi": PIN},
    {"op": "irqfd", "gsi": PIN},
    {"op": "ack", "vcpu": 0},
    {"op": "patch_rte", "pin": PIN, "fields": {"masked": True}},
    {"op": "eoi", "vcpu": 0},
    {"op": "irqfd", "gsi": PIN},
    {"op": "patch_rte", "pin": PIN, "fields": {"masked": False}},
]


def _doc(irqchip: str, profile: str) -> dict[str, Any]:
    return {"name": "irqfd-diff", "vm": {"vcpus": 1, "irqchip": irqchip, "profile": profile},
            "steps": UNMASK_STEPS}


@needs_kvm
@pytest.mark.parametrize("irqchip", ["kernel", "split"])
def test_resampler_steps_agree_under_the_host_profile(irqchip: str) -> None:
    """The unmask-resamples sequence in both modes runs to the end on KVM and agrees with the
    host's preset at every step, the resample count included."""
    (v,) = SD.diff_scenario(_doc(irqchip, host_profile()))["variants"]
    assert v["stopped"] is None
    assert [s["ran"] for s in v["steps"]] == ["model+kvm"] * len(UNMASK_STEPS)
    assert v["differences"] == 0, v["first_difference"]


@needs_kvm
@only_on_pvm
def test_resample_count_is_compared() -> None:
    """Under upstream linux-latest the model resamples at the guest's EOI; on kvm_pvm it
    happened at the take: the harness reports the resample count (not only ISR) at the ack."""
    (v,) = SD.diff_scenario(_doc("kernel", "linux-latest"))["variants"]
    ack = v["steps"][3]
    assert {"path": "resamplers.10", "model": 0, "kvm": 1} in ack["differences"]
    eoi = v["steps"][5]
    assert not [d for d in eoi["differences"] if d["path"].startswith("resamplers")]
