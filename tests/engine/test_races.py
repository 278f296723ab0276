"""Spec §3: race 1 (in-kernel IOAPIC), race 2 (split irqchip / QEMU IOAPIC) and race 2b
(posted interrupts), replayed step by step; every cell of the tables is asserted.

Row format (see conftest.row): (RIRR, irr, v0 IRR/ISR, v1 IRR/ISR, h0, h1, v0 req, v1 req).

Requests are asserted exactly as KVM raises them. The spec tables leave out KVM_REQ_EVENT
after an EOI: apic_set_eoi() (and kvm_apic_set_eoi_accelerated()) always ends with
kvm_make_request(KVM_REQ_EVENT), so the rows for the EOI step carry "EVENT" where the table
shows "—" or only SCAN / EOI_EXIT. A LOAD_EOI_EXITMAP raised by a scan is consumed in the same
vcpu_enter_guest pass (T11), so it never shows up as pending after an entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from app.engine.vm import Vm
from tests.engine.conftest import P, V, exit_vectors, has, race_vm, rirr, row

Step = tuple[str, Callable[[Vm], Any]]

# The steps of races 1 and 2 (§3). Step 2 ("vCPUn entry: inject V") is the guest taking the
# interrupt, i.e. ack(). Step 4 writes only the high dword (dest 0 -> 1), like the original
# report.
RACE_STEPS: list[Step] = [
    ("1 device: line=1", lambda vm: vm.set_line(P, 1)),
    ("2 vCPU0 entry: inject V", lambda vm: vm.ack(0)),
    ("3 vCPU0 handler quiets the device: line=0", lambda vm: vm.set_line(P, 0)),
    ("4 vCPU0 rewrites RTE high dword: dest 0->1", lambda vm: vm.patch_rte(0, P, {"dest": 1})),
    ("5 vCPU0 re-entry (consumes SCAN)", lambda vm: vm.enter(0)),
    ("6 vCPU1 consumes SCAN", lambda vm: vm.enter(1)),
    ("7 vCPU0 guest: EOI", lambda vm: vm.eoi(0)),
    ("8 vCPU0 re-entry", lambda vm: vm.enter(0)),
    ("9 device: line=1 again", lambda vm: vm.set_line(P, 1)),
]

# ---- race 1: in-kernel IOAPIC ----

RACE1_UNFIXED = [  # linux-4.14, before 0fc5a36dd6b3
    (1, 1, "1/0", "0/0", 1, 0, "EVENT", ""),
    (1, 1, "0/1", "0/0", 1, 0, "", ""),
    (1, 0, "0/1", "0/0", 1, 0, "", ""),
    (1, 0, "0/1", "0/0", 1, 0, "SCAN_IOAPIC", "SCAN_IOAPIC"),
    (1, 0, "0/1", "0/0", 0, 0, "", "SCAN_IOAPIC"),  # h0[V] cleared: level pins not kept
    (1, 0, "0/1", "0/0", 0, 1, "", ""),
    (1, 0, "0/0", "0/0", 0, 1, "EVENT", ""),  # EOI invisible to the IOAPIC (table: "—")
    (1, 0, "0/0", "0/0", 0, 1, "", ""),
    (1, 1, "0/0", "0/0", 0, 1, "", ""),  # RIRR stuck: no delivery, ever again
]

RACE1_FIXED = [  # linux-4.15, first with 0fc5a36dd6b3 (no 87e4951e250b rescan yet)
    (1, 1, "1/0", "0/0", 1, 0, "EVENT", ""),
    (1, 1, "0/1", "0/0", 1, 0, "", ""),
    (1, 0, "0/1", "0/0", 1, 0, "", ""),
    (1, 0, "0/1", "0/0", 1, 0, "SCAN_IOAPIC", "SCAN_IOAPIC"),
    (1, 0, "0/1", "0/0", 1, 0, "", "SCAN_IOAPIC"),  # kept: V is in ISR0
    (1, 0, "0/1", "0/0", 1, 1, "", ""),
    (0, 0, "0/0", "0/0", 1, 1, "EVENT", ""),  # T10 clears RIRR (table: "—")
    (0, 0, "0/0", "0/0", 1, 1, "", ""),  # no self rescan before 87e4951e250b: h0 stays 1
    (1, 1, "0/0", "1/0", 1, 1, "", "EVENT"),  # delivered to the new destination
]

RACE1_FIXED_RESCAN = [  # linux-6.16 / linux-latest: 0fc5a36dd6b3 + 87e4951e250b
    (1, 1, "1/0", "0/0", 1, 0, "EVENT", ""),
    (1, 1, "0/1", "0/0", 1, 0, "", ""),
    (1, 0, "0/1", "0/0", 1, 0, "", ""),
    (1, 0, "0/1", "0/0", 1, 0, "SCAN_IOAPIC", "SCAN_IOAPIC"),
    (1, 0, "0/1", "0/0", 1, 0, "", "SCAN_IOAPIC"),
    (1, 0, "0/1", "0/0", 1, 1, "", ""),
    (0, 0, "0/0", "0/0", 1, 1, "SCAN_IOAPIC+EVENT", ""),  # self SCAN (table omits EVENT)
    (0, 0, "0/0", "0/0", 0, 1, "", ""),  # rescan: no match, not pending -> h0[V]=0
    (1, 1, "0/0", "1/0", 0, 1, "", "EVENT"),
]


def replay(vm: Vm, steps: list[Step], expected: list[tuple[Any, ...]]) -> list[Any]:
    results = []
    for (label, op), want in zip(steps, expected, strict=True):
        results.append(op(vm))
        assert row(vm, P, V) == want, label
    return results


@pytest.mark.parametrize(
    ("profile", "table"),
    [
        ("linux-4.14", RACE1_UNFIXED),
        ("linux-4.15", RACE1_FIXED),
        ("linux-6.16", RACE1_FIXED_RESCAN),
        ("linux-latest", RACE1_FIXED_RESCAN),
    ],
)
def test_race1_in_kernel(profile: str, table: list[tuple[Any, ...]]) -> None:
    vm = race_vm(profile, "kernel")
    results = replay(vm, RACE_STEPS, table)
    eoi = results[6]
    assert eoi["vector"] == V
    assert eoi["forwarded"] is (table is not RACE1_UNFIXED)


def test_race1_stale_vector_bookkeeping() -> None:
    """87e4951e250b: step 5 keeps h0[V] only because V is pending -> highest_stale0 = V;
    the EOI of V requests a self SCAN, whose rescan resets it to -1."""
    vm = race_vm("linux-6.16", "kernel")
    for _label, op in RACE_STEPS[:5]:
        op(vm)
    assert vm.vcpus[0].highest_stale == V
    assert vm.vcpus[1].highest_stale == -1
    vm.enter(1)
    vm.eoi(0)
    vm.enter(0)
    assert vm.vcpus[0].highest_stale == -1


def test_race1_masking_does_not_protect_in_kernel() -> None:
    """§3 note: a masking write also requests a scan and the scan ignores the mask, so masking,
    retargeting, EOI, unmasking still loses the EOI without 0fc5a36dd6b3. (linux-4.14 itself
    cannot show it: before b200dded0a69 the masking write zeroed Remote IRR on its own.)"""
    vm = race_vm("linux-4.15", "kernel", overrides={"scan_keeps_pending_level": False})
    vm.set_line(P, 1)
    vm.ack(0)
    vm.set_line(P, 0)
    vm.patch_rte(0, P, {"masked": True})
    vm.patch_rte(0, P, {"dest": 1})
    vm.enter(0)
    assert has(vm.vcpus[0].handled, V) == 0
    vm.eoi(0)
    vm.patch_rte(0, P, {"masked": False})
    assert rirr(vm, P) == 1


# ---- race 2: split irqchip, QEMU IOAPIC ----

RACE2_UNFIXED = [  # linux-6.1, before fceb3a36c29a
    (1, 1, "1/0", "0/0", 1, 0, "EVENT", ""),
    (1, 1, "0/1", "0/0", 1, 0, "", ""),
    (1, 0, "0/1", "0/0", 1, 0, "", ""),
    (1, 0, "0/1", "0/0", 1, 0, "SCAN_IOAPIC", "SCAN_IOAPIC"),  # route commit: all vCPUs
    (1, 0, "0/1", "0/0", 0, 0, "", "SCAN_IOAPIC"),
    (1, 0, "0/1", "0/0", 0, 1, "", ""),
    (1, 0, "0/0", "0/0", 0, 1, "EVENT", ""),  # no KVM_EXIT_IOAPIC_EOI (table: "—")
    (1, 0, "0/0", "0/0", 0, 1, "", ""),
    (1, 1, "0/0", "0/0", 0, 1, "", ""),  # pin blocked
]

RACE2_FIXED = [  # linux-6.2, first with fceb3a36c29a (no 87e4951e250b rescan yet)
    (1, 1, "1/0", "0/0", 1, 0, "EVENT", ""),
    (1, 1, "0/1", "0/0", 1, 0, "", ""),
    (1, 0, "0/1", "0/0", 1, 0, "", ""),
    (1, 0, "0/1", "0/0", 1, 0, "SCAN_IOAPIC", "SCAN_IOAPIC"),
    (1, 0, "0/1", "0/0", 1, 0, "", "SCAN_IOAPIC"),
    (1, 0, "0/1", "0/0", 1, 1, "", ""),
    (1, 0, "0/0", "0/0", 1, 1, "IOAPIC_EOI_EXIT+EVENT", ""),  # table omits EVENT
    # Step 8: the EOI exit reaches QEMU, ioapic_eoi_broadcast clears RIRR. The spec's h0=0
    # in this row needs the 87e4951e250b rescan; 6.2 keeps the stale bit.
    (0, 0, "0/0", "0/0", 1, 1, "", ""),
    (1, 1, "0/0", "1/0", 1, 1, "", "EVENT"),
]

RACE2_FIXED_RESCAN = [  # linux-latest: fceb3a36c29a + 87e4951e250b
    (1, 1, "1/0", "0/0", 1, 0, "EVENT", ""),
    (1, 1, "0/1", "0/0", 1, 0, "", ""),
    (1, 0, "0/1", "0/0", 1, 0, "", ""),
    (1, 0, "0/1", "0/0", 1, 0, "SCAN_IOAPIC", "SCAN_IOAPIC"),
    (1, 0, "0/1", "0/0", 1, 0, "", "SCAN_IOAPIC"),
    (1, 0, "0/1", "0/0", 1, 1, "", ""),
    (1, 0, "0/0", "0/0", 1, 1, "IOAPIC_EOI_EXIT+SCAN_IOAPIC+EVENT", ""),
    (0, 0, "0/0", "0/0", 0, 1, "", ""),  # exit first, then the stale rescan
    (1, 1, "0/0", "1/0", 0, 1, "", "EVENT"),
]


@pytest.mark.parametrize(
    ("profile", "table", "eoi_exits"),
    [
        ("linux-6.1", RACE2_UNFIXED, []),
        ("linux-6.2", RACE2_FIXED, [V]),
        ("linux-latest", RACE2_FIXED_RESCAN, [V]),
    ],
)
def test_race2_split(profile: str, table: list[tuple[Any, ...]], eoi_exits: list[int]) -> None:
    vm = race_vm(profile, "split")
    results = replay(vm, RACE_STEPS, table)
    assert exit_vectors(results[7]) == eoi_exits  # step 8: KVM_EXIT_IOAPIC_EOI{V} or none


def test_race2_step8_exit_is_consumed_before_the_stale_rescan() -> None:
    """T11: IOAPIC_EOI_EXIT is checked before SCAN_IOAPIC. The exit is taken only if h0[V] is
    still set when it is consumed, so seeing the exit (and h0[V]=0 afterwards) shows the order:
    QEMU's ioapic_eoi_broadcast ran first, then the self SCAN queued by the EOI
    (87e4951e250b) cleared the stale bit."""
    vm = race_vm("linux-latest", "split")
    for _label, op in RACE_STEPS[:7]:
        op(vm)
    assert vm.vcpus[0].pending_ioapic_eoi == V
    result = vm.enter(0)
    assert exit_vectors(result) == [V]
    assert result["exits"][0]["ioapic"][0]["pin"] == P
    assert has(vm.vcpus[0].handled, V) == 0
    assert vm.vcpus[0].highest_stale == -1
    assert rirr(vm, P) == 0


def test_race2_masked_retarget_does_not_hit_the_race() -> None:
    """§3 split nuance: QEMU does not update the route of a masked pin, so mask, retarget,
    EOI, unmask keeps h0[V] even before fceb3a36c29a."""
    vm = race_vm("linux-6.1", "split")
    vm.set_line(P, 1)
    vm.ack(0)
    vm.set_line(P, 0)
    vm.patch_rte(0, P, {"masked": True})
    vm.patch_rte(0, P, {"dest": 1})
    vm.enter(0)
    assert has(vm.vcpus[0].handled, V) == 1
    assert exit_vectors(vm.eoi(0, run_exits=True)) == [V]
    assert rirr(vm, P) == 0
    vm.patch_rte(0, P, {"masked": False})
    vm.set_line(P, 1)
    assert has(vm.vcpus[1].irr, V) == 1


# ---- race 2b: posted interrupts (split + APICv) ----


def race2b_cells(vm: Vm) -> tuple[Any, ...]:
    """(RIRR, irr, v0 PIR, v0 IRR/ISR, h0, v0 VMCS EOI-exit bit)."""
    v0 = vm.vcpus[0]
    return (
        rirr(vm, P),
        vm.ioapic.irr >> P & 1,
        has(v0.pir, V),
        f"{has(v0.irr, V)}/{has(v0.isr, V)}",
        has(v0.handled, V),
        has(v0.eoi_exitmap, V),
    )


@pytest.mark.parametrize(
    ("profile", "after_entry", "eoi_path", "eoi_exits", "final_rirr"),
    [
        # before f3ced000a2df: the scan runs before the PIR sync and clears h0[V]
        ("linux-6.9", (1, 1, 0, "1/0", 0, 0), "virtualized", [], 1),
        # f3ced000a2df: PIR synced in vcpu_scan_ioapic -> V pending -> h0[V] kept
        ("linux-6.10", (1, 1, 0, "1/0", 1, 1), "eoi-induced-exit", [V], 0),
    ],
)
def test_race2b_posted_interrupts(
    profile: str, after_entry: tuple[Any, ...], eoi_path: str, eoi_exits: list[int], final_rirr: int
) -> None:
    vm = race_vm(profile, "split", apicv=True)
    assert vm.vcpus[0].in_guest and vm.vcpus[1].in_guest
    assert race2b_cells(vm) == (0, 0, 0, "0/0", 1, 1)

    vm.exit_guest(0)  # vCPU0 halts / runs host code
    vm.set_line(P, 1)
    # QEMU delivered through KVM: V sits in vCPU0's PIR only.
    assert race2b_cells(vm) == (1, 1, 1, "0/0", 1, 1)
    assert has(vm.vcpus[1].irr | vm.vcpus[1].pir, V) == 0

    vm.patch_rte(1, P, {"dest": 1})  # vCPU1's RTE write -> route commit -> SCAN on all
    assert "SCAN_IOAPIC" in vm.vcpu_view(0)["pending_requests"]
    assert "SCAN_IOAPIC" in vm.vcpu_view(1)["pending_requests"]

    vm.enter(0)
    assert race2b_cells(vm) == after_entry

    assert vm.ack(0)["vector"] == V
    vm.set_line(P, 0)
    result = vm.eoi(0, run_exits=True)
    assert result["vector"] == V
    assert result["path"] == eoi_path
    assert exit_vectors(result) == eoi_exits
    assert rirr(vm, P) == final_rirr
    # The pin works again only when the EOI reached QEMU.
    vm.set_line(P, 1)
    vm.enter(1)
    assert has(vm.vcpus[1].irr | vm.vcpus[1].pir, V) == (1 - final_rirr)
