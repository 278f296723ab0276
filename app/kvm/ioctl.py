"""A thin ctypes layer over the Linux KVM ioctl API (x86-64), no C extension.

Every ioctl number is computed with the asm-generic _IO/_IOR/_IOW/_IOWR encoding from the size of
the ctypes structure it carries, exactly as <linux/kvm.h> computes it. The expected values are
pinned in tests/kvm/test_ioctl_numbers.py; they were produced by compiling a C program that
prints the macros from the uapi headers (linux-libc-dev, /usr/include/linux/kvm.h and
/usr/include/x86_64-linux-gnu/asm/kvm.h) and agree with torvalds/linux include/uapi.

ioctl(2) is called through libc with ctypes (the GIL is released for the call and errno is
captured), so a KVM_RUN that a watchdog interrupts returns EINTR to us instead of being retried.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import mmap
import os
from types import TracebackType
from typing import Any, Self

# ---- _IOC encoding (include/uapi/asm-generic/ioctl.h) ----

_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2

KVMIO = 0xAE


def _ioc(direction: int, type_: int, nr: int, size: int) -> int:
    if not 0 <= size < 1 << _IOC_SIZEBITS:
        raise ValueError(f"ioctl argument size {size} does not fit in _IOC_SIZEBITS")
    return (
        (direction << _IOC_DIRSHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _IO(nr: int) -> int:
    return _ioc(_IOC_NONE, KVMIO, nr, 0)


def _IOR(nr: int, t: Any) -> int:
    return _ioc(_IOC_READ, KVMIO, nr, ctypes.sizeof(t))


def _IOW(nr: int, t: Any) -> int:
    return _ioc(_IOC_WRITE, KVMIO, nr, ctypes.sizeof(t))


def _IOWR(nr: int, t: Any) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, KVMIO, nr, ctypes.sizeof(t))


# ---- structures (include/uapi/linux/kvm.h, arch/x86/include/uapi/asm/kvm.h) ----

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class KvmUserspaceMemoryRegion(ctypes.Structure):
    _fields_ = (
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),
        ("userspace_addr", u64),
    )


class KvmEnableCap(ctypes.Structure):
    _fields_ = (("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64))


_REG_NAMES = "rax rbx rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags"


class KvmRegs(ctypes.Structure):
    _fields_ = tuple((name, u64) for name in _REG_NAMES.split())


class KvmSegment(ctypes.Structure):
    _fields_ = (
        ("base", u64),
        ("limit", u32),
        ("selector", u16),
        ("type", u8),
        ("present", u8),
        ("dpl", u8),
        ("db", u8),
        ("s", u8),
        ("l", u8),
        ("g", u8),
        ("avl", u8),
        ("unusable", u8),
        ("padding", u8),
    )


class KvmDtable(ctypes.Structure):
    _fields_ = (("base", u64), ("limit", u16), ("padding", u16 * 3))


KVM_NR_INTERRUPTS = 256


class KvmSregs(ctypes.Structure):
    _fields_ = (
        ("cs", KvmSegment),
        ("ds", KvmSegment),
        ("es", KvmSegment),
        ("fs", KvmSegment),
        ("gs", KvmSegment),
        ("ss", KvmSegment),
        ("tr", KvmSegment),
        ("ldt", KvmSegment),
        ("gdt", KvmDtable),
        ("idt", KvmDtable),
        ("cr0", u64),
        ("cr2", u64),
        ("cr3", u64),
        ("cr4", u64),
        ("cr8", u64),
        ("efer", u64),
        ("apic_base", u64),
        ("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    )


class KvmCpuidEntry2(ctypes.Structure):
    _fields_ = (
        ("function", u32),
        ("index", u32),
        ("flags", u32),
        ("eax", u32),
        ("ebx", u32),
        ("ecx", u32),
        ("edx", u32),
        ("padding", u32 * 3),
    )


class KvmCpuid2(ctypes.Structure):
    """The header of struct kvm_cpuid2 (nent, padding); the entries follow it."""

    _fields_ = (("nent", u32), ("padding", u32))


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1  # sic: the uapi spelling


class KvmMpState(ctypes.Structure):
    _fields_ = (("mp_state", u32),)


KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED = 0, 1
KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_HALTED = 2, 3


class KvmIrqLevel(ctypes.Structure):
    """irq (in) and status (out, KVM_IRQ_LINE_STATUS) share a union."""

    _fields_ = (("irq", u32), ("level", u32))


KVM_IOAPIC_NUM_PINS = 24
KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC = 0, 1, 2


class KvmIoapicState(ctypes.Structure):
    _fields_ = (
        ("base_address", u64),
        ("ioregsel", u32),
        ("id", u32),
        ("irr", u32),
        ("pad", u32),
        ("redirtbl", u64 * KVM_IOAPIC_NUM_PINS),  # union { __u64 bits; fields }
    )


class _IrqchipUnion(ctypes.Union):
    _fields_ = (("dummy", ctypes.c_char * 512), ("ioapic", KvmIoapicState))


class KvmIrqchip(ctypes.Structure):
    _fields_ = (("chip_id", u32), ("pad", u32), ("chip", _IrqchipUnion))


KVM_APIC_REG_SIZE = 0x400


class KvmLapicState(ctypes.Structure):
    _fields_ = (("regs", u8 * KVM_APIC_REG_SIZE),)


KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI = 1, 2


class KvmIrqRoutingIrqchip(ctypes.Structure):
    _fields_ = (("irqchip", u32), ("pin", u32))


class KvmIrqRoutingMsi(ctypes.Structure):
    _fields_ = (
        ("address_lo", u32),
        ("address_hi", u32),
        ("data", u32),
        ("devid", u32),  # union { __u32 pad; __u32 devid; }
    )


class _RoutingUnion(ctypes.Union):
    _fields_ = (
        ("irqchip", KvmIrqRoutingIrqchip),
        ("msi", KvmIrqRoutingMsi),
        ("pad", u32 * 8),
    )


class KvmIrqRoutingEntry(ctypes.Structure):
    _fields_ = (
        ("gsi", u32),
        ("type", u32),
        ("flags", u32),
        ("pad", u32),
        ("u", _RoutingUnion),
    )


class KvmIrqRouting(ctypes.Structure):
    """Header only; the entries follow it (flexible array), see set_gsi_routing."""

    _fields_ = (("nr", u32), ("flags", u32))


class KvmIrqfd(ctypes.Structure):
    """struct kvm_irqfd: the eventfd that injects into `gsi`, and with KVM_IRQFD_FLAG_RESAMPLE
    the eventfd KVM signals when the guest acknowledges the level interrupt."""

    _fields_ = (
        ("fd", u32),
        ("gsi", u32),
        ("flags", u32),
        ("resamplefd", u32),
        ("pad", u8 * 16),
    )


class KvmMsi(ctypes.Structure):
    _fields_ = (
        ("address_lo", u32),
        ("address_hi", u32),
        ("data", u32),
        ("flags", u32),
        ("devid", u32),
        ("pad", u8 * 12),
    )


# struct kvm_run: the fixed header and the exit union at offset 32 (x86 has no s390 psw fields).
class KvmRunIo(ctypes.Structure):
    _fields_ = (
        ("direction", u8),
        ("size", u8),
        ("port", u16),
        ("count", u32),
        ("data_offset", u64),
    )


class KvmRunMmio(ctypes.Structure):
    _fields_ = (("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8))


class KvmRunEoi(ctypes.Structure):
    _fields_ = (("vector", u8),)


class KvmRunFailEntry(ctypes.Structure):
    _fields_ = (("hardware_entry_failure_reason", u64), ("cpu", u32))


class KvmRunInternal(ctypes.Structure):
    _fields_ = (("suberror", u32), ("ndata", u32), ("data", u64 * 16))


class _ExitUnion(ctypes.Union):
    _fields_ = (
        ("io", KvmRunIo),
        ("mmio", KvmRunMmio),
        ("eoi", KvmRunEoi),
        ("fail_entry", KvmRunFailEntry),
        ("internal", KvmRunInternal),
        ("padding", ctypes.c_char * 256),
    )


class KvmRun(ctypes.Structure):
    _fields_ = (
        ("request_interrupt_window", u8),
        ("immediate_exit", u8),
        ("padding1", u8 * 6),
        ("exit_reason", u32),
        ("ready_for_interrupt_injection", u8),
        ("if_flag", u8),
        ("flags", u16),
        ("cr8", u64),
        ("apic_base", u64),
        ("u", _ExitUnion),
    )


KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT = 0, 1

# Exit reasons (include/uapi/linux/kvm.h).
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_IOAPIC_EOI = 26
EXIT_NAMES = {
    KVM_EXIT_UNKNOWN: "UNKNOWN",
    KVM_EXIT_EXCEPTION: "EXCEPTION",
    KVM_EXIT_IO: "IO",
    KVM_EXIT_HLT: "HLT",
    KVM_EXIT_MMIO: "MMIO",
    KVM_EXIT_SHUTDOWN: "SHUTDOWN",
    KVM_EXIT_FAIL_ENTRY: "FAIL_ENTRY",
    KVM_EXIT_INTR: "INTR",
    KVM_EXIT_INTERNAL_ERROR: "INTERNAL_ERROR",
    KVM_EXIT_IOAPIC_EOI: "IOAPIC_EOI",
}

# Capabilities.
KVM_CAP_IRQCHIP = 0
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_IRQFD = 32
KVM_CAP_IRQFD_RESAMPLE = 82
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_SPLIT_IRQCHIP = 121
KVM_CAP_X2APIC_API = 129
# KVM_ENABLE_CAP(KVM_CAP_X2APIC_API) args[0] flags (include/uapi/linux/kvm.h).
KVM_X2APIC_API_USE_32BIT_IDS = 1 << 0  # x2APIC ids in KVM_GET/SET_LAPIC and MSI address_hi
KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK = 1 << 1  # 0xff is not a broadcast to x2APIC LAPICs

# struct kvm_irqfd flags.
KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1

KVM_API_VERSION = 12

# ---- ioctl numbers ----

KVM_GET_API_VERSION = _IO(0x00)
KVM_CREATE_VM = _IO(0x01)
KVM_CHECK_EXTENSION = _IO(0x03)
KVM_GET_SUPPORTED_CPUID = _IOWR(0x05, KvmCpuid2)
KVM_GET_VCPU_MMAP_SIZE = _IO(0x04)
KVM_CREATE_VCPU = _IO(0x41)
KVM_SET_USER_MEMORY_REGION = _IOW(0x46, KvmUserspaceMemoryRegion)
KVM_CREATE_IRQCHIP = _IO(0x60)
KVM_GET_IRQCHIP = _IOWR(0x62, KvmIrqchip)
KVM_SET_IRQCHIP = _IOR(0x63, KvmIrqchip)  # sic: _IOR in the uapi header
KVM_IRQ_LINE_STATUS = _IOWR(0x67, KvmIrqLevel)
KVM_SET_GSI_ROUTING = _IOW(0x6A, KvmIrqRouting)
KVM_IRQFD = _IOW(0x76, KvmIrqfd)
KVM_RUN = _IO(0x80)
KVM_GET_REGS = _IOR(0x81, KvmRegs)
KVM_SET_REGS = _IOW(0x82, KvmRegs)
KVM_GET_SREGS = _IOR(0x83, KvmSregs)
KVM_SET_SREGS = _IOW(0x84, KvmSregs)
KVM_GET_LAPIC = _IOR(0x8E, KvmLapicState)
KVM_SET_LAPIC = _IOW(0x8F, KvmLapicState)
KVM_GET_MP_STATE = _IOR(0x98, KvmMpState)
KVM_SET_MP_STATE = _IOW(0x99, KvmMpState)
KVM_SET_CPUID2 = _IOW(0x90, KvmCpuid2)
KVM_ENABLE_CAP = _IOW(0xA3, KvmEnableCap)
KVM_SIGNAL_MSI = _IOW(0xA5, KvmMsi)

# ---- libc ioctl ----

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc_ioctl = _libc.ioctl
_libc_ioctl.restype = ctypes.c_int
_libc_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)


class KvmError(OSError):
    """An ioctl failed: errno, the ioctl's name and the fd."""


def ioctl(fd: int, request: int, arg: Any = None, name: str = "") -> int:
    """Call ioctl(fd, request, arg). arg is None, an int (passed by value) or a ctypes object
    (passed by reference). Returns the non-negative result; raises KvmError on -1."""
    ptr: int | None
    if arg is None:
        ptr = None
    elif isinstance(arg, int):
        ptr = arg
    else:
        ptr = ctypes.addressof(arg)
    ret = _libc_ioctl(fd, request, ptr)
    if ret < 0:
        err = ctypes.get_errno()
        raise KvmError(err, f"{name or hex(request)}: {os.strerror(err)}")
    return int(ret)


# ---- handles: every fd and mapping has an owner that closes it ----


class Closing:
    """`with obj:` closes obj on the way out (every owner of fds or mappings here)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Fd(Closing):
    # A class-level default: when os.open fails in a subclass's __init__, __del__ still runs
    # on the half-built object and must find "nothing to close".
    _fd: int | None = None

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"{type(self).__name__} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __del__(self) -> None:  # last resort; callers close explicitly
        with contextlib.suppress(OSError):
            self.close()


class EventFd(_Fd):
    """An eventfd(2), non-blocking: `signal` adds 1 to its counter and `take` reads and resets
    the counter (0 when nothing was signalled), i.e. how many signals arrived since the last
    take. Used both ways: irqlab signals an irqfd, and KVM (or irqlab's VMM, in split mode)
    signals a resamplefd."""

    def __init__(self) -> None:
        super().__init__(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))

    def signal(self, n: int = 1) -> None:
        os.eventfd_write(self.fd, n)

    def take(self) -> int:
        try:
            return os.eventfd_read(self.fd)
        except BlockingIOError:  # EAGAIN: the counter is 0
            return 0


def _flex(header: type[ctypes.Structure], count_field: str, entry: type[ctypes.Structure],
          entries: list[Any], room: int = 0) -> Any:
    """A uapi struct with a flexible array member: `header` (whose `count_field` says how many
    entries follow) then `entries`, or `room` empty slots for KVM to fill."""
    n = max(len(entries), room)

    class _Flex(ctypes.Structure):
        _fields_ = (("hdr", header), ("entries", entry * n))

    c = _Flex()
    setattr(c.hdr, count_field, n)
    for i, e in enumerate(entries):
        c.entries[i] = e
    return c


def _cpuid2(entries: list[KvmCpuidEntry2], room: int = 0) -> Any:
    """A struct kvm_cpuid2 with `entries` (or `room` empty slots for KVM to fill)."""
    return _flex(KvmCpuid2, "nent", KvmCpuidEntry2, entries, room)


class Kvm(_Fd):
    """The /dev/kvm system fd."""

    def __init__(self, path: str = "/dev/kvm") -> None:
        super().__init__(os.open(path, os.O_RDWR | os.O_CLOEXEC))

    def api_version(self) -> int:
        return ioctl(self.fd, KVM_GET_API_VERSION, None, "KVM_GET_API_VERSION")

    def check_extension(self, cap: int) -> int:
        return ioctl(self.fd, KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")

    def vcpu_mmap_size(self) -> int:
        return ioctl(self.fd, KVM_GET_VCPU_MMAP_SIZE, None, "KVM_GET_VCPU_MMAP_SIZE")

    def supported_cpuid(self) -> list[KvmCpuidEntry2]:
        """KVM_GET_SUPPORTED_CPUID (room for 256 entries; KVM writes back how many)."""
        c = _cpuid2([], 256)
        ioctl(self.fd, KVM_GET_SUPPORTED_CPUID, c, "KVM_GET_SUPPORTED_CPUID")
        return [c.entries[i] for i in range(c.hdr.nent)]

    def create_vm(self) -> VmFd:
        return VmFd(ioctl(self.fd, KVM_CREATE_VM, 0, "KVM_CREATE_VM"), self.vcpu_mmap_size())


_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
)
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value


def _mmap(size: int, fd: int = -1) -> int:
    """mmap(2) through libc: a raw address, so no Python buffer export can block munmap."""
    flags = mmap.MAP_SHARED | (mmap.MAP_ANONYMOUS if fd < 0 else 0)
    addr = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, flags, fd, 0)
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        raise KvmError(err, f"mmap: {os.strerror(err)}")
    return int(addr)


def _munmap(addr: int, size: int) -> None:
    if _libc.munmap(addr, size) != 0:
        err = ctypes.get_errno()
        raise KvmError(err, f"munmap: {os.strerror(err)}")


class GuestMemory:
    """Anonymous shared memory backing one memslot."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._addr: int | None = _mmap(size)

    @property
    def address(self) -> int:
        if self._addr is None:
            raise ValueError("guest memory is closed")
        return self._addr

    def _check(self, off: int, n: int) -> None:
        if off < 0 or off + n > self.size:
            raise ValueError("access outside guest memory")

    def write(self, gpa_offset: int, data: bytes) -> None:
        self._check(gpa_offset, len(data))
        ctypes.memmove(self.address + gpa_offset, data, len(data))

    def read(self, gpa_offset: int, n: int) -> bytes:
        self._check(gpa_offset, n)
        return ctypes.string_at(self.address + gpa_offset, n)

    def close(self) -> None:
        if self._addr is not None:
            addr, self._addr = self._addr, None
            _munmap(addr, self.size)

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            self.close()


class VmFd(_Fd):
    def __init__(self, fd: int, vcpu_mmap_size: int) -> None:
        super().__init__(fd)
        self.vcpu_mmap_size = vcpu_mmap_size

    def check_extension(self, cap: int) -> int:
        return ioctl(self.fd, KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION(vm)")

    def set_user_memory_region(self, slot: int, gpa: int, mem: GuestMemory, flags: int = 0) -> None:
        region = KvmUserspaceMemoryRegion(slot, flags, gpa, mem.size, mem.address)
        ioctl(self.fd, KVM_SET_USER_MEMORY_REGION, region, "KVM_SET_USER_MEMORY_REGION")

    def create_irqchip(self) -> None:
        ioctl(self.fd, KVM_CREATE_IRQCHIP, None, "KVM_CREATE_IRQCHIP")

    def enable_cap(self, cap: int, *args: int) -> None:
        ec = KvmEnableCap(cap=cap)
        for i, a in enumerate(args):
            ec.args[i] = a
        ioctl(self.fd, KVM_ENABLE_CAP, ec, "KVM_ENABLE_CAP")

    def enable_split_irqchip(self, ioapic_pins: int = KVM_IOAPIC_NUM_PINS) -> None:
        """KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP, args[0] = pins reserved for the IOAPIC)."""
        self.enable_cap(KVM_CAP_SPLIT_IRQCHIP, ioapic_pins)

    def create_vcpu(self, vcpu_id: int) -> VcpuFd:
        fd = ioctl(self.fd, KVM_CREATE_VCPU, vcpu_id, "KVM_CREATE_VCPU")
        return VcpuFd(fd, vcpu_id, self.vcpu_mmap_size)

    def irq_line_status(self, irq: int, level: int) -> int:
        """KVM_IRQ_LINE_STATUS: returns kvm_set_irq's status (>0 delivered to that many
        LAPICs, 0 coalesced, -1 masked / blocked / no route), which the kernel writes back
        into the irq/status union (the first field); `level` is left as it was passed."""
        il = KvmIrqLevel(irq, level)
        ioctl(self.fd, KVM_IRQ_LINE_STATUS, il, "KVM_IRQ_LINE_STATUS")
        return ctypes.c_int32(il.irq).value

    def get_irqchip(self, chip_id: int) -> KvmIrqchip:
        chip = KvmIrqchip(chip_id=chip_id)
        ioctl(self.fd, KVM_GET_IRQCHIP, chip, "KVM_GET_IRQCHIP")
        return chip

    def get_ioapic(self) -> KvmIoapicState:
        state: KvmIoapicState = self.get_irqchip(KVM_IRQCHIP_IOAPIC).chip.ioapic
        return state

    def set_gsi_routing(self, entries: list[KvmIrqRoutingEntry]) -> None:
        r = _flex(KvmIrqRouting, "nr", KvmIrqRoutingEntry, entries)
        ioctl(self.fd, KVM_SET_GSI_ROUTING, r, "KVM_SET_GSI_ROUTING")

    def signal_msi(self, address_lo: int, address_hi: int, data: int) -> int:
        msi = KvmMsi(address_lo=address_lo, address_hi=address_hi, data=data)
        return ioctl(self.fd, KVM_SIGNAL_MSI, msi, "KVM_SIGNAL_MSI")

    def irqfd(self, fd: int, gsi: int, flags: int = 0, resamplefd: int = 0) -> None:
        """KVM_IRQFD: assign (flags 0 or KVM_IRQFD_FLAG_RESAMPLE with `resamplefd`) or
        deassign (KVM_IRQFD_FLAG_DEASSIGN) the eventfd `fd` on `gsi`. KVM takes its own
        references to the eventfds; the caller still owns and closes its fds."""
        args = KvmIrqfd(fd=fd, gsi=gsi, flags=flags, resamplefd=resamplefd)
        ioctl(self.fd, KVM_IRQFD, args, "KVM_IRQFD")


class VcpuFd(_Fd):
    def __init__(self, fd: int, vcpu_id: int, mmap_size: int) -> None:
        super().__init__(fd)
        self.vcpu_id = vcpu_id
        self._run_size = mmap_size
        try:
            self._run_addr: int | None = _mmap(mmap_size, fd)
        except OSError:
            super().close()
            raise

    @property
    def run(self) -> KvmRun:
        """The mmapped struct kvm_run (a view at its address; valid until close)."""
        if self._run_addr is None:
            raise ValueError("vCPU is closed")
        return KvmRun.from_address(self._run_addr)

    def close(self) -> None:
        if self._run_addr is not None:
            addr, self._run_addr = self._run_addr, None
            _munmap(addr, self._run_size)
        super().close()

    def run_once(self) -> int:
        """KVM_RUN. Returns the exit reason; an interrupted run (EINTR) reports KVM_EXIT_INTR."""
        try:
            ioctl(self.fd, KVM_RUN, None, "KVM_RUN")
        except KvmError as e:
            if e.errno == 4:  # EINTR: a signal (the watchdog kick) or immediate_exit
                return KVM_EXIT_INTR
            raise
        return int(self.run.exit_reason)

    def io_data(self) -> ctypes.Array[ctypes.c_uint8]:
        """The KVM_EXIT_IO data bytes (size * count), inside the mmapped run page."""
        run = self.run
        io = run.u.io
        n = io.size * io.count
        data: ctypes.Array[ctypes.c_uint8] = (ctypes.c_uint8 * n).from_address(
            ctypes.addressof(run) + io.data_offset
        )
        return data

    def get_regs(self) -> KvmRegs:
        regs = KvmRegs()
        ioctl(self.fd, KVM_GET_REGS, regs, "KVM_GET_REGS")
        return regs

    def set_regs(self, regs: KvmRegs) -> None:
        ioctl(self.fd, KVM_SET_REGS, regs, "KVM_SET_REGS")

    def get_sregs(self) -> KvmSregs:
        sregs = KvmSregs()
        ioctl(self.fd, KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
        return sregs

    def set_sregs(self, sregs: KvmSregs) -> None:
        ioctl(self.fd, KVM_SET_SREGS, sregs, "KVM_SET_SREGS")

    def set_cpuid2(self, entries: list[KvmCpuidEntry2]) -> None:
        ioctl(self.fd, KVM_SET_CPUID2, _cpuid2(entries), "KVM_SET_CPUID2")

    def get_mp_state(self) -> int:
        st = KvmMpState()
        ioctl(self.fd, KVM_GET_MP_STATE, st, "KVM_GET_MP_STATE")
        return int(st.mp_state)

    def set_mp_state(self, state: int) -> None:
        ioctl(self.fd, KVM_SET_MP_STATE, KvmMpState(state), "KVM_SET_MP_STATE")

    def get_lapic(self) -> LapicPage:
        st = KvmLapicState()
        ioctl(self.fd, KVM_GET_LAPIC, st, "KVM_GET_LAPIC")
        return LapicPage(bytes(st.regs))  # u8 array: no NUL truncation


class LapicPage:
    """The 1 KiB xAPIC register page KVM_GET_LAPIC returns (each register 32 bits at a
    16-byte-aligned offset)."""

    ID, TPR, PPR, LDR, DFR, SVR = 0x20, 0x80, 0xA0, 0xD0, 0xE0, 0xF0
    ISR, TMR, IRR = 0x100, 0x180, 0x200

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KVM_APIC_REG_SIZE:
            raise ValueError("a LAPIC page is 1024 bytes")
        self.raw = raw

    def reg(self, offset: int) -> int:
        return int.from_bytes(self.raw[offset : offset + 4], "little")

    def bitmap(self, base: int) -> int:
        """A 256-bit vector bitmap (IRR/ISR/TMR): 8 registers, 0x10 apart."""
        return sum(self.reg(base + 0x10 * i) << (32 * i) for i in range(8))

    @property
    def irr(self) -> int:
        return self.bitmap(self.IRR)

    @property
    def isr(self) -> int:
        return self.bitmap(self.ISR)

    @property
    def tmr(self) -> int:
        return self.bitmap(self.TMR)

    @property
    def ppr(self) -> int:
        return self.reg(self.PPR)

    @property
    def tpr(self) -> int:
        return self.reg(self.TPR)

    @property
    def svr(self) -> int:
        return self.reg(self.SVR)
