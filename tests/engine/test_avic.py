"""AMD AVIC (apicv: "avic") next to Intel APICv, and the in-kernel IOAPIC's lazy EOI history
(f458d039db7e, 8be8f932e3db, 77377064c3a9). Each behaviour with the flag (or flavour) that
decides it, both outcomes asserted."""

from __future__ import annotations

from typing import Any

import pytest

from app.engine import rte as R
from app.engine.events import event_fields
from app.engine.vm import Vm
from tests.engine.conftest import P, V, make_vm, rirr

VE = 0x60  # an edge vector
RTC = 8


def kinds(vm: Vm, kind: str) -> list[dict[str, Any]]:
    return [dict(event_fields(e), actor=e[1]) for e in vm.log.events if e[2] == kind]


def level_in_service(profile: str, irqchip: str, apicv: bool | str, **config: Any) -> Vm:
    """Level pin P -> vCPU0 with vector V, delivered and taken (V in ISR0, Remote IRR set),
    the line lowered again."""
    vm = make_vm(profile, irqchip, apicv=apicv, **config)
    vm.write_rte(0, P, R.encode(vector=V, trigger="level", dest=0))
    vm.enter(0)
    vm.enter(1)
    vm.set_line(P, 1)
    assert vm.ack(0)["vector"] == V
    vm.set_line(P, 0)
    assert rirr(vm, P) == 1
    return vm


def test_config_accepts_true_apicv_avic_and_rejects_other_words() -> None:
    assert make_vm(apicv=True).apicv_intel and not make_vm(apicv=True).avic
    assert make_vm(apicv="apicv").apicv_intel
    vm = make_vm(irqchip="split", apicv="avic")
    assert vm.avic and not vm.apicv_intel and vm.apic_virt
    assert vm.summary()["apicv"] == "avic"  # kept as written
    with pytest.raises(Exception, match="apicv must be"):
        make_vm(apicv="vmx")


@pytest.mark.parametrize("irqchip", ["kernel", "split"])
def test_avic_traps_level_eoi_and_forwards_it(irqchip: str) -> None:
    """A level EOI under AVIC is an unaccelerated-access trap (avic_unaccelerated_access_
    interception -> kvm_lapic_reg_write(APIC_EOI) -> apic_set_eoi): the IOAPIC hears of it."""
    vm = level_in_service("linux-latest", irqchip, "avic")
    result = vm.eoi(0, run_exits=True)
    assert result["path"] == "avic-trap"
    assert result["forwarded"] is True
    assert rirr(vm, P) == 0
    if irqchip == "split":
        assert result["exits"][0]["reason"] == "KVM_EXIT_IOAPIC_EOI"


def test_avic_never_exits_on_edge_eoi_where_apicv_follows_its_bitmap() -> None:
    """Before 7455a8327674 (linux-4.15) split mode scanned edge MSI routes, so an edge pin's
    vector was in the EOI-exit bitmap: Intel APICv took an EOI-induced exit and KVM sent
    KVM_EXIT_IOAPIC_EOI; AVIC has no bitmap and retires an edge EOI in hardware."""
    outcomes = {}
    for apicv in (True, "avic"):
        vm = make_vm("linux-4.15", "split", apicv=apicv)
        vm.write_rte(0, 3, R.encode(vector=VE, trigger="edge", dest=0))
        vm.enter(0)
        vm.enter(1)
        assert vm.vcpus[0].handled >> VE & 1  # the edge route was scanned
        vm.set_line(3, 1)
        vm.set_line(3, 0)
        assert vm.ack(0)["vector"] == VE
        r = vm.eoi(0, run_exits=True)
        outcomes[apicv] = (r["path"], [x["reason"] for x in r.get("exits", [])])
    assert outcomes[True] == ("eoi-induced-exit", ["KVM_EXIT_IOAPIC_EOI"])
    assert outcomes["avic"] == ("virtualized", [])


def test_avic_has_no_eoi_exit_bitmap_and_no_pir() -> None:
    """svm_load_eoi_exitmap does nothing; svm_deliver_avic_intr sets IRR directly."""
    vm = make_vm("linux-latest", "split", apicv="avic")
    vm.write_rte(0, P, R.encode(vector=V, trigger="level", dest=0))
    vm.enter(0)
    assert vm.vcpus[0].handled >> V & 1 and vm.vcpus[0].eoi_exitmap == 0
    vm.exit_guest(0)
    vm.set_line(P, 1)
    assert vm.vcpus[0].pir == 0 and vm.vcpus[0].irr >> V & 1
    assert kinds(vm, "accepted")[-1]["via"] == "avic-irr"


@pytest.mark.parametrize(("apicv", "profile", "lost"), [
    (True, "linux-6.9", True),     # race 2b: V waits in the PIR, the scan misses it
    (True, "linux-6.10", False),   # f3ced000a2df syncs the PIR first
    ("avic", "linux-6.9", False),  # AVIC has no PIR: V is in IRR, the scan keeps the bit
    ("avic", "linux-6.1", True),   # ...but before fceb3a36c29a pending vectors are not kept
])
def test_race2b_f3ced000a2df_needs_a_pir(apicv: bool | str, profile: str, lost: bool) -> None:
    vm = make_vm(profile, "split", apicv=apicv)
    vm.write_rte(0, P, R.encode(vector=V, trigger="level", dest=0))
    vm.enter(0)
    vm.enter(1)
    vm.exit_guest(0)
    vm.set_line(P, 1)
    vm.patch_rte(1, P, {"dest": 1})
    vm.enter(0)
    assert vm.ack(0)["vector"] == V
    vm.set_line(P, 0)
    vm.eoi(0, run_exits=True)
    vm.enter(0)
    assert rirr(vm, P) == int(lost)
    # Under AVIC a lost level EOI still traps: KVM drops it in kvm_ioapic_send_eoi.
    if apicv == "avic" and lost:
        assert kinds(vm, "eoi-not-forwarded")[-1]["reason"] == "not-handled"


@pytest.mark.parametrize(("flag", "active"), [(False, False), (True, True)])
def test_avic_with_kernel_irqchip_from_v56(flag: bool, active: bool) -> None:
    """svm: Allow AVIC with in-kernel irqchip mode (v5.6, with f458d039db7e): before it
    svm_get_enable_apicv required a split irqchip and the VM ran without AVIC."""
    vm = make_vm("linux-latest", "kernel", apicv="avic",
                 overrides={"avic_kernel_irqchip": flag})
    assert vm.avic is active and vm.apic_virt is active
    vm.write_rte(0, 3, R.encode(vector=VE, trigger="edge", dest=0))
    vm.enter(0)
    vm.set_line(3, 1)
    vm.ack(0)
    assert vm.eoi(0)["path"] == ("virtualized" if active else "trap")
    # Split irqchips had AVIC before, whatever the flag.
    assert make_vm("linux-4.15", "split", apicv="avic").avic


def rtc_tick(vm: Vm) -> dict[str, Any]:
    return vm.set_line(RTC, action="pulse")["steps"][0]


def rtc_vm(apicv: bool | str, **overrides: bool) -> Vm:
    vm = make_vm("linux-latest", "kernel", apicv=apicv, overrides=overrides)
    vm.write_rte(0, RTC, R.encode(vector=VE, trigger="edge", dest=0))
    vm.enter(0)
    vm.enter(1)
    return vm


@pytest.mark.parametrize(("flag", "second"), [(False, "coalesced"), (True, "delivered")])
def test_lazy_eoi_settles_rtc_tracking_under_avic_f458d039db7e(flag: bool, second: str) -> None:
    """AVIC retires the RTC's edge EOI without a trap, so rtc_status.pending_eoi never drops
    and every later tick would be reported coalesced; ioapic_lazy_update_eoi (f458d039db7e)
    settles it at the next tick once vCPU0 no longer holds the vector."""
    vm = rtc_vm("avic", ioapic_lazy_eoi=flag)
    assert rtc_tick(vm)["outcome"] == "delivered"
    assert vm.ioapic.rtc_pending_eoi == 1
    assert vm.ack(0)["vector"] == VE
    assert vm.eoi(0)["path"] == "virtualized"
    assert vm.ioapic.rtc_pending_eoi == 1  # the IOAPIC did not hear of the EOI
    assert rtc_tick(vm)["outcome"] == second
    assert bool(kinds(vm, "lazy-eoi")) is flag


def test_lazy_eoi_does_not_see_the_pir_f458d039db7e() -> None:
    """kvm_apic_pending_eoi looks at IRR and ISR only: under Intel APICv an RTC tick still
    waiting in a halted vCPU's PIR counts as EOIed by the lazy update, so the next tick is
    not reported coalesced although the first was never taken."""
    vm = rtc_vm(True)
    vm.exit_guest(0)
    assert rtc_tick(vm)["outcome"] == "delivered"
    assert vm.vcpus[0].pir >> VE & 1 and vm.ioapic.rtc_pending_eoi == 1
    assert rtc_tick(vm)["outcome"] == "delivered"
    off = rtc_vm(True, ioapic_lazy_eoi=False)
    off.exit_guest(0)
    rtc_tick(off)
    assert rtc_tick(off)["outcome"] == "coalesced"


@pytest.mark.parametrize(("edge_only", "duplicate"), [(False, True), (True, False)])
def test_lazy_eoi_on_level_pins_until_8be8f932e3db(edge_only: bool, duplicate: bool) -> None:
    """Before 8be8f932e3db (and 77377064c3a9) the lazy EOI also ran for level pins, through
    kvm_ioapic_update_eoi_one: a re-assert after the guest moved an in-flight level pin to
    vCPU1 found vCPU1 with nothing pending, cleared Remote IRR and delivered V again while
    vCPU0 still held it. From 8be8f932e3db only edge pins get it (AVIC traps level EOIs)."""
    vm = make_vm("linux-latest", "kernel", apicv="avic",
                 overrides={"lazy_eoi_edge_only": edge_only, "lazy_eoi_rtc_only": False})
    vm.write_rte(0, P, R.encode(vector=V, trigger="level", dest=0))
    vm.enter(0)
    vm.enter(1)
    vm.set_line(P, 1)
    assert vm.vcpus[0].irr >> V & 1 and rirr(vm, P) == 1
    vm.patch_rte(0, P, {"dest": 1})
    step = vm.set_line(P, 1)["steps"][0]  # the device asserts again (another source, say)
    # The lazy EOI re-serviced the pin itself; the assert proper then found Remote IRR set
    # again, so KVM_IRQ_LINE_STATUS reports it blocked either way.
    assert step["outcome"] == "blocked"
    assert bool(vm.vcpus[1].irr >> V & 1) is duplicate
    assert bool(kinds(vm, "remote-irr-cleared")) is duplicate
    assert rirr(vm, P) == 1


@pytest.mark.parametrize(("rtc_only", "recursed"), [(False, True), (True, False)])
def test_lazy_eoi_resampler_recursion_until_77377064c3a9(rtc_only: bool, recursed: bool) -> None:
    """Between f458d039db7e and 77377064c3a9 the lazy EOI ran the pin's ack notifiers: an
    irqfd resampler on an edge pin deasserts its source and re-enters ioapic_set_irq, and
    while another source keeps the line high that recursed until the host stack overflowed
    (CVE-2020-27152). 77377064c3a9 keeps only the RTC bookkeeping."""
    E = 4
    vm = make_vm("linux-latest", "kernel", apicv="avic",
                 overrides={"lazy_eoi_rtc_only": rtc_only})
    vm.write_rte(0, E, R.encode(vector=VE, trigger="edge", dest=0))
    vm.register_resampler(E)
    vm.enter(0)
    vm.enter(1)
    vm.set_line(E, 1)  # source 0 holds the line high
    vm.ack(0)
    vm.eoi(0)  # virtualized: nobody hears of it
    vm.irqfd_assert(E)
    assert bool(kinds(vm, "lazy-eoi-recursion")) is recursed
    assert (vm.resamplers[E] > 0) is recursed
