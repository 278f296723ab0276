"""The ioctl numbers, struct layouts and constants in app.kvm.ioctl equal the uapi values.

The expected numbers were printed by a C program compiled against linux-libc-dev's
<linux/kvm.h> (x86-64), e.g. printf("%lx", KVM_GET_IRQCHIP); they agree with torvalds/linux
include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h. No /dev/kvm is needed.
"""

from __future__ import annotations

import ctypes

import pytest

from app.kvm import ioctl as K

UAPI_IOCTLS = {
    "KVM_GET_API_VERSION": 0x0000AE00,
    "KVM_CREATE_VM": 0x0000AE01,
    "KVM_CHECK_EXTENSION": 0x0000AE03,
    "KVM_GET_VCPU_MMAP_SIZE": 0x0000AE04,
    "KVM_CREATE_VCPU": 0x0000AE41,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46,
    "KVM_CREATE_IRQCHIP": 0x0000AE60,
    "KVM_GET_IRQCHIP": 0xC208AE62,
    "KVM_SET_IRQCHIP": 0x8208AE63,
    "KVM_IRQ_LINE_STATUS": 0xC008AE67,
    "KVM_SET_GSI_ROUTING": 0x4008AE6A,
    "KVM_RUN": 0x0000AE80,
    "KVM_GET_REGS": 0x8090AE81,
    "KVM_SET_REGS": 0x4090AE82,
    "KVM_GET_SREGS": 0x8138AE83,
    "KVM_SET_SREGS": 0x4138AE84,
    "KVM_GET_LAPIC": 0x8400AE8E,
    "KVM_SET_LAPIC": 0x4400AE8F,
    "KVM_GET_MP_STATE": 0x8004AE98,
    "KVM_SET_MP_STATE": 0x4004AE99,
    "KVM_ENABLE_CAP": 0x4068AEA3,
    "KVM_SIGNAL_MSI": 0x4020AEA5,
    "KVM_SET_CPUID2": 0x4008AE90,
    "KVM_GET_SUPPORTED_CPUID": 0xC008AE05,
    "KVM_IRQFD": 0x4020AE76,
}


@pytest.mark.parametrize("name", sorted(UAPI_IOCTLS))
def test_ioctl_number(name: str) -> None:
    assert getattr(K, name) == UAPI_IOCTLS[name], f"{name} = {getattr(K, name):#x}"


@pytest.mark.parametrize(
    ("struct", "size"),
    [
        (K.KvmUserspaceMemoryRegion, 32),
        (K.KvmEnableCap, 104),
        (K.KvmRegs, 144),
        (K.KvmSegment, 24),
        (K.KvmDtable, 16),
        (K.KvmSregs, 312),
        (K.KvmIrqLevel, 8),
        (K.KvmIoapicState, 216),
        (K.KvmIrqchip, 520),
        (K.KvmLapicState, 1024),
        (K.KvmIrqRouting, 8),
        (K.KvmIrqRoutingEntry, 48),
        (K.KvmMsi, 32),
        (K.KvmCpuid2, 8),
        (K.KvmCpuidEntry2, 40),
        (K.KvmIrqfd, 32),
    ],
)
def test_struct_size(struct: type[ctypes.Structure], size: int) -> None:
    assert ctypes.sizeof(struct) == size


def test_layout_offsets() -> None:
    assert K.KvmRun.exit_reason.offset == 8
    assert K.KvmRun.immediate_exit.offset == 1
    assert K.KvmRun.ready_for_interrupt_injection.offset == 12
    assert K.KvmRun.if_flag.offset == 13
    assert K.KvmRun.u.offset == 32  # io, mmio, eoi, fail_entry, internal all start here
    assert K.KvmSregs.gdt.offset == 192
    assert K.KvmSregs.cr0.offset == 224
    assert K.KvmSregs.efer.offset == 264
    assert K.KvmSregs.interrupt_bitmap.offset == 280
    assert K.KvmIrqchip.chip.offset == 8
    assert K.KvmIoapicState.irr.offset == 16
    assert K.KvmIoapicState.redirtbl.offset == 24
    assert K.KvmIrqRoutingEntry.u.offset == 16
    assert K.KvmMsi.data.offset == 8
    # struct kvm_irqfd (printed with offsetof from <linux/kvm.h>: 0 4 8 12 16)
    assert (K.KvmIrqfd.fd.offset, K.KvmIrqfd.gsi.offset, K.KvmIrqfd.flags.offset) == (0, 4, 8)
    assert (K.KvmIrqfd.resamplefd.offset, K.KvmIrqfd.pad.offset) == (12, 16)


def test_exit_reasons_and_caps() -> None:
    assert (K.KVM_EXIT_IO, K.KVM_EXIT_HLT, K.KVM_EXIT_MMIO) == (2, 5, 6)
    assert (K.KVM_EXIT_SHUTDOWN, K.KVM_EXIT_FAIL_ENTRY, K.KVM_EXIT_INTR) == (8, 9, 10)
    assert (K.KVM_EXIT_INTERNAL_ERROR, K.KVM_EXIT_IOAPIC_EOI) == (17, 26)
    assert (K.KVM_CAP_IRQCHIP, K.KVM_CAP_IRQ_ROUTING) == (0, 25)
    assert (K.KVM_CAP_SIGNAL_MSI, K.KVM_CAP_SPLIT_IRQCHIP) == (77, 121)
    assert (K.KVM_IRQCHIP_IOAPIC, K.KVM_IOAPIC_NUM_PINS) == (2, 24)
    assert (K.KVM_IRQ_ROUTING_IRQCHIP, K.KVM_IRQ_ROUTING_MSI) == (1, 2)
    # KVM_CAP_X2APIC_API and its KVM_ENABLE_CAP flags (printed from <linux/kvm.h>: 129 1 2)
    assert K.KVM_CAP_X2APIC_API == 129
    assert K.KVM_X2APIC_API_USE_32BIT_IDS == 1
    assert K.KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK == 2
    # irqfd (printed from <linux/kvm.h>: KVM_CAP_IRQFD 32, KVM_CAP_IRQFD_RESAMPLE 82,
    # KVM_IRQFD_FLAG_DEASSIGN 1, KVM_IRQFD_FLAG_RESAMPLE 2)
    assert (K.KVM_CAP_IRQFD, K.KVM_CAP_IRQFD_RESAMPLE) == (32, 82)
    assert (K.KVM_IRQFD_FLAG_DEASSIGN, K.KVM_IRQFD_FLAG_RESAMPLE) == (1, 2)


def test_eventfd_counts_signals_since_the_last_take() -> None:
    with K.EventFd() as efd:
        assert efd.take() == 0  # non-blocking: nothing signalled reads as 0, not EAGAIN
        efd.signal()
        efd.signal()
        assert efd.take() == 2
        assert efd.take() == 0


def test_lapic_page_decoding() -> None:
    raw = bytearray(1024)
    raw[0x200 + 0x20] = 0x01  # IRR bit 64
    raw[0x100 + 0x70 + 3] = 0x80  # ISR bit 255
    raw[0xA0] = 0x40
    page = K.LapicPage(bytes(raw))
    assert page.irr == 1 << 64
    assert page.isr == 1 << 255
    assert page.ppr == 0x40
