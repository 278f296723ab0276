"""irqlab's guest on real KVM: MMIO access sizes (1, 2, 4, 8 bytes) and the x2APIC guest
(KVM_CAP_X2APIC_API, CPUID, LAPIC registers by MSR), each compared with the engine model where
the model has an answer. Every test skips with the detector's reason without /dev/kvm."""

from __future__ import annotations

from typing import Any

import pytest

from app import scenarios as library
from app.api.scenarios import override_vm
from app.engine.lapic import read_register
from app.engine.state import VmConfig
from app.engine.vm import Vm
from app.kvm import guest as G
from app.kvm import scenario_diff as SD
from app.kvm.vm import KvmVm

from .conftest import ON_PVM, needs_kvm

PIN = 16
SEL_LOW = 0x10 + 2 * PIN  # IOREGSEL index of pin 16's low dword

# One guest access sequence per size: select, write IOWIN, read it back, read IOREGSEL, read
# the version register. Values are as wide as the access (the high dword of an 8-byte write
# is what KVM's in-kernel IOAPIC drops and QEMU's splits off to offset 0x14).
VALUES = {1: 0xC1, 2: 0x80C1, 4: 0x0000_80C1, 8: 0x1234_5678_0000_80C1}


def _sequence(size: int) -> list[tuple[str, int, int]]:
    return [
        ("write", 0x00, SEL_LOW),
        ("write", 0x10, VALUES[size]),
        ("read", 0x10, 0),
        ("read", 0x00, 0),
        ("write", 0x00, 0x01),
        ("read", 0x10, 0),
        ("write", 0x00, SEL_LOW),
        ("read", 0x10, 0),
    ]


@needs_kvm
@pytest.mark.parametrize("irqchip", ["kernel", "split"])
@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_mmio_sizes_agree_with_the_model(irqchip: str, size: int) -> None:
    """In-kernel: ioapic_mmio_read/write (1/2 take the low bytes, 8 returns the dword
    zero-extended and writes its low dword); split: QEMU's ioapic_mem_* behind irqlab's VMM
    (IOWIN answers 4-byte accesses only, 8 bytes split in two dwords). The engine models both;
    after every access the read value and pin 16's RTE must be equal."""
    model = Vm(VmConfig(vcpus=1, irqchip=irqchip, profile="kvm-pvm"))
    with KvmVm(1, irqchip=irqchip) as kvm:
        for i, (op, offset, value) in enumerate(_sequence(size)):
            m = model.mmio(0, op, offset, size, value).get("value")
            k = kvm.mmio(0, op, offset, value, size)
            assert (i, k) == (i, m)
            assert (i, kvm.redirection_table()[PIN]) == (i, model.ioapic.redir[PIN])
    rte = model.ioapic.redir[PIN]
    if irqchip == "kernel":
        # The write reached the RTE (1 and 2 bytes replace the whole low dword, zero-extended).
        assert rte & 0xFFFFFFFF == VALUES[size] & 0xFFFFFFFF
    else:
        # QEMU ignores IOWIN accesses that are not 4 bytes; an 8-byte one is two dwords.
        assert (rte & 0xFF == 0xC1) == (size in (4, 8))


@needs_kvm
@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_one_mmio_exit_per_access_of_the_access_size(size: int) -> None:
    """The guest's access is one exit of exactly `size` bytes (8: MMX movq, which KVM's
    emulator handles as a single 8-byte access: not two 4-byte exits)."""
    seen: list[tuple[int, bool, int, int]] = []
    answer = 0x8877_6655_4433_2211

    def handler(gpa: int, write: bool, length: int, value: int) -> int | None:
        seen.append((gpa, write, length, value))
        return None if write else answer

    with KvmVm(1, irqchip="split", mmio_handler=handler) as vm:
        vm.mmio(0, "write", 0x10, VALUES[size], size)
        assert seen == [(G.IOAPIC_BASE + 0x10, True, size, VALUES[size])]
        seen.clear()
        assert vm.mmio(0, "read", 0x10, 0, size) == answer & ((1 << (8 * size)) - 1)
        assert seen == [(G.IOAPIC_BASE + 0x10, False, size, 0)]


# ---- x2APIC


@needs_kvm
@pytest.mark.parametrize("fmt", [False, True], ids=["legacy-ids", "32bit-ids"])
def test_x2apic_guest_ids_and_ldr(fmt: bool) -> None:
    """The guest switches to x2APIC at start. KVM_GET_LAPIC's ID register is the 32-bit id
    with KVM_X2APIC_API_USE_32BIT_IDS and id << 24 without (kvm_apic_state_fixup); LDR is
    KVM's derived cluster/bit value, as the model's x2apic_ldr."""
    model = Vm(VmConfig(vcpus=4, x2apic=True, x2apic_format=fmt))
    with KvmVm(4, x2apic=True, x2apic_format=fmt) as vm:
        for n in range(4):
            page = vm.vcpu(n).fd.get_lapic()
            assert vm.lapic_mode(n) == "x2apic"
            assert page.reg(page.ID) == (n if fmt else n << 24)
            view = vm.vcpu_view(n)
            assert (view["apic_id"], view["x2apic"], view["ldr"]) == (n, True, 1 << n)
            v = model.vcpus[n]
            assert view["ldr"] == read_register(model, v, "ldr")
            assert view["apic_id"] == read_register(model, v, "id")
            # ... and what the guest itself reads by MSR (0x802 ID, 0x80D LDR)
            assert vm.rdmsr(n, G.x2apic_msr(0x20)) == n
            assert vm.lapic_read(n, "ldr") == 1 << n
            # EN | EXTD, BSP flag on vCPU 0 only, as the model's APIC_BASE
            base = vm.lapic_read(n, "apic_base")
            assert base == read_register(model, v, "apic_base")
            assert base == 0xFEE00C00 | (0x100 if n == 0 else 0)


@needs_kvm
def test_x2apic_registers_by_msr_and_gp() -> None:
    """TPR by wrmsr 0x808 reaches the LAPIC (and PPR); ID/LDR writes and any DFR access #GP
    in x2APIC mode (the model refuses the same writes as #GP); the guest carries on."""
    model = Vm(VmConfig(vcpus=1, x2apic=True))
    with KvmVm(1, x2apic=True) as vm:
        assert vm.lapic_write(0, "tpr", 0x30)
        view = vm.vcpu_view(0)
        assert (view["tpr"], view["ppr"], vm.lapic_read(0, "tpr")) == (0x30, 0x30, 0x30)
        for reg in ("id", "ldr", "dfr"):
            assert not vm.lapic_write(0, reg, 0x01000000), reg
            with pytest.raises(Exception, match="#GP"):
                model.lapic_write(0, reg, 0x01000000)
        assert vm.lapic_read(0, "dfr") is None
        assert vm.vcpu(0).dead is None
        assert vm.ack(0) is None  # still on its command loop
        vm.eoi(0)  # wrmsr 0x80B, no fault


@needs_kvm
@pytest.mark.parametrize("quirk_disabled", [False, True])
def test_x2apic_broadcast_quirk_flag(quirk_disabled: bool) -> None:
    """Physical destination 0xff to x2APIC LAPICs: a broadcast unless
    KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK (then it is APIC id 0xff, absent). The model's
    broadcast_quirk_disabled gives the same status and IRRs."""
    rte = 0x41 | (0xFF << 56)
    model = Vm(VmConfig(vcpus=2, x2apic=True, broadcast_quirk_disabled=quirk_disabled,
                        profile="kvm-pvm"))
    model.write_rte(0, PIN, rte)
    (m,) = model.set_line(PIN, level=1)["steps"]
    with KvmVm(2, x2apic=True, broadcast_quirk_disabled=quirk_disabled) as vm:
        vm.write_rte(0, PIN, rte)
        status = vm.set_line(PIN, 1)["status"]
        irrs = [vm.vcpu_view(n)["irr"] for n in range(2)]
    assert status == m["status"] == (0 if quirk_disabled else 2)
    assert irrs == [v.irr for v in model.vcpus] == [0 if quirk_disabled else 1 << 0x41] * 2


@needs_kvm
def test_x2apic_logical_cluster_delivery() -> None:
    """Logical destination 0x0d (cluster 0, bits 0, 2, 3) reaches vCPUs 0, 2, 3 of an x2APIC
    guest (the xAPIC guest with LDR 0 matched none: kut-logical-destination's old difference)."""
    rte = 0x86 | (1 << 15) | (1 << 11) | (0x0D << 56)  # level, logical
    model = Vm(VmConfig(vcpus=4, x2apic=True, profile="kvm-pvm"))
    model.write_rte(0, PIN, rte)
    (m,) = model.set_line(PIN, level=1)["steps"]
    with KvmVm(4, x2apic=True) as vm:
        vm.write_rte(0, PIN, rte)
        assert vm.set_line(PIN, 1)["status"] == m["status"] == 3
        assert [vm.vcpu_view(n)["irr"] for n in range(4)] == [v.irr for v in model.vcpus]


@needs_kvm
def test_xapic_ldr_dfr_by_mmio() -> None:
    """The xAPIC guest writes LDR/DFR through the LAPIC page; KVM_GET_LAPIC shows them and a
    flat logical destination then reaches the vCPUs whose LDR bit matches."""
    with KvmVm(2) as vm:
        for n in range(2):
            assert vm.lapic_write(n, "ldr", (1 << n) << 24)
            assert vm.lapic_write(n, "dfr", 0xFFFFFFFF)
            assert vm.vcpu_view(n)["ldr"] == vm.lapic_read(n, "ldr") == (1 << n) << 24
        vm.write_rte(0, PIN, 0x45 | (1 << 11) | (0x02 << 56))  # edge, logical, LDR bit 1
        assert vm.set_line(PIN, 1)["status"] == 1
        assert [vm.vcpu_view(n)["irr"] for n in range(2)] == [0, 1 << 0x45]


@needs_kvm
@pytest.mark.parametrize("irqchip", ["kernel", "split"])
def test_directed_eoi_is_offered_only_with_the_split_irqchip(irqchip: str) -> None:
    """With CPUID.x2APIC, KVM offers directed EOI (LVR bit 24) only without the in-kernel
    IOAPIC (0bcc3fb95b97, which this host has), so SVR bit 12 sticks only in split mode. The
    model's linux-latest (and kvm-pvm) agree; see directed-eoi-kernel-ioapic below."""
    model = Vm(VmConfig(vcpus=1, irqchip=irqchip, profile="kvm-pvm"))
    model.lapic_write(0, "svr", 0x11FF)
    with KvmVm(1, irqchip=irqchip, x2apic_cpuid=True) as vm:
        assert vm.lapic_write(0, "svr", 0x11FF)
        svr, lvr = vm.lapic_read(0, "svr"), vm.lapic_read(0, "lvr")
    assert (svr, lvr) == (read_register(model, model.vcpus[0], "svr"),
                          read_register(model, model.vcpus[0], "lvr"))
    assert svr == (0x11FF if irqchip == "split" else 0x1FF)
    assert bool(lvr & 1 << 24) == (irqchip == "split")


# ---- library scenarios that now run to the end on KVM


def _diff(name: str) -> dict[str, Any]:
    doc = library.get(name)
    assert doc is not None
    return SD.diff_scenario(override_vm(doc, "kvm-pvm" if ON_PVM else None))


@needs_kvm
@pytest.mark.parametrize("name", ["kut-logical-destination", "kut-logical-destination-xapic",
                                  "kut-simultaneous", "kut-level-tmr-smp"])
def test_library_scenarios_with_lapic_cli_sti_and_x2apic_agree(name: str) -> None:
    """lapic steps (LDR/DFR by MMIO), cli/sti (the Runner's IF) and x2APIC variants (an x2APIC
    guest) run to the end and agree with the host's profile at every step."""
    result = _diff(name)
    for v in result["variants"]:
        assert v["stopped"] is None, (v["name"], v["stopped"])
        assert v["differences"] == 0, (v["name"], v["first_difference"])


@needs_kvm
def test_directed_eoi_scenario_differs_only_where_the_host_has_the_fix() -> None:
    """directed-eoi-kernel-ioapic: the variant modelling the kernel before 0bcc3fb95b97 lets
    the guest set SVR bit 12; this host's kernel has the fix, so SVR reads 0x1ff (the first
    difference) and the fixed variant agrees at every step."""
    result = _diff("directed-eoi-kernel-ioapic")
    by_name = {v["name"]: v for v in result["variants"]}
    fixed, before = by_name["0bcc3fb95b97"], by_name["before 0bcc3fb95b97"]
    assert fixed["stopped"] is None and fixed["differences"] == 0
    assert before["stopped"] is None
    first = before["steps"][0]
    assert (first["op"], first["differences"]) == (
        "lapic", [{"path": "result.svr", "model": 0x11FF, "kvm": 0x1FF}])


@needs_kvm
def test_edge_switch_scenario_cannot_enable_directed_eoi_on_this_host() -> None:
    """edge-switch-clears-remote-irr relies on directed EOI with the in-kernel IOAPIC (every
    variant sets hide_directed_eoi_with_kernel_ioapic: false, i.e. a kernel before
    0bcc3fb95b97). On this host SVR bit 12 does not stick, so the guest's LAPIC EOI still
    reaches the IOAPIC: each variant's first difference is that SVR read-back, at step 0."""
    for v in _diff("edge-switch-clears-remote-irr")["variants"]:
        assert v["stopped"] is None
        first = v["steps"][0]
        assert (first["op"], first["differences"]) == (
            "lapic", [{"path": "result.svr", "model": 0x11FF, "kvm": 0x1FF}]), v["name"]
