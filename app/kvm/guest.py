"""irqlab's own guest: 32-bit flat protected-mode machine code emitted by Python.

No assembler runs at any time: every instruction below is written as bytes with its encoding
in a comment. The vCPU starts directly in protected mode (KVM_SET_SREGS loads CS/DS/SS with
base 0, limit 4 GiB; paging off, so linear = physical). A GDT is still placed in guest memory
because interrupt delivery and IRET reload CS from it.

Guest-physical layout (one memslot at GPA 0, MEM_SIZE bytes):

    0x0800  GDT: null, 0x08 code (flat, 32-bit, ring 0), 0x10 data (flat, 32-bit)
    0x1000  IDT: 256 32-bit interrupt gates (0x8E), gate v -> STUBS + 8*v
    0x2000  ENTRY: LAPIC setup, then the command loop
    0x3000  STUBS: 256 stubs of 8 bytes
    0x3800  interrupt/exception common paths
    0x8000  stack top (grows down)

Port protocol (all port I/O exits to the host, KVM_EXIT_IO):

    in  eax, CMD_PORT      the guest waits for a command; the host answers with a 32-bit value
    in  eax, ARG_PORT      a command argument (MMIO address or value)
    out VECTOR_PORT, al    an interrupt stub reports the vector it was entered through
    out RESULT_PORT, eax   the value a MMIO read returned
    out WINDOW_PORT, al    inside the ACK window (the host just resumes)
    out FAULT_PORT, al     an exception stub (vectors 0..31) reports the exception; the guest
                           then spins, so the host must treat the vCPU as dead

Commands (CMD_PORT answer, low byte):

    ACK   sti; nop; out WINDOW_PORT, al; cli -- the interrupt window. On hardware a pending
          interrupt is taken after the nop (the STI shadow ends there); a KVM that injects only
          on entry takes it when KVM_RUN resumes after the OUT exit. The stub reports the
          vector and jumps back to the command loop with IF still clear (no IRET), so at most
          one interrupt is taken per window. No report means none was taken.
    EOI   mov [0xFEE000B0], eax (eax = 0): the xAPIC EOI register. The LAPIC page is in-kernel,
          so this does not exit to userspace.
    MMIO_WRITE  addr = in ARG; value = in ARG; mov [addr], eax (32-bit)
    MMIO_READ   addr = in ARG; mov eax, [addr]; out RESULT, eax
    SPIN  jmp $ -- never exits again; only for testing the watchdog.

The guest never halts and never waits on time: every command ends by returning to the command
IN, which is how the host knows the command is complete.
"""

from __future__ import annotations

import struct

MEM_SIZE = 0x10000
GDT_ADDR = 0x0800
IDT_ADDR = 0x1000
ENTRY = 0x2000
STUBS = 0x3000
STUB_SIZE = 8
COMMON = 0x3800
STACK_TOP = 0x8000

CODE_SEL = 0x08
DATA_SEL = 0x10

CMD_PORT = 0x10
ARG_PORT = 0x11
VECTOR_PORT = 0x12
RESULT_PORT = 0x13
FAULT_PORT = 0x14
WINDOW_PORT = 0x15

CMD_ACK = 1
CMD_EOI = 2
CMD_MMIO_WRITE = 3
CMD_MMIO_READ = 4
CMD_SPIN = 5

LAPIC_BASE = 0xFEE00000
LAPIC_EOI = LAPIC_BASE + 0xB0
LAPIC_SVR = LAPIC_BASE + 0xF0
LAPIC_LVT0 = LAPIC_BASE + 0x350
LAPIC_LVT1 = LAPIC_BASE + 0x360
IOAPIC_BASE = 0xFEC00000
IOREGSEL = IOAPIC_BASE + 0x00
IOWIN = IOAPIC_BASE + 0x10

# Exceptions that push an error code (the stub must discard it before IRET; we never IRET
# from an exception, but the common path reads the vector from the stack top either way).
EXCEPTIONS = 32


def _u32(v: int) -> bytes:
    return struct.pack("<I", v & 0xFFFFFFFF)


def _rel32(src_next: int, dst: int) -> bytes:
    return struct.pack("<i", dst - src_next)


class _Asm:
    """Append-only byte buffer at a known origin, with forward jump patching for rel8."""

    def __init__(self, origin: int) -> None:
        self.origin = origin
        self.buf = bytearray()
        self.labels: dict[str, int] = {}
        self.fixups: list[tuple[int, str]] = []  # (index of rel8 byte, label)

    @property
    def here(self) -> int:
        return self.origin + len(self.buf)

    def emit(self, *parts: bytes | int) -> None:
        for p in parts:
            self.buf += bytes([p]) if isinstance(p, int) else p

    def label(self, name: str) -> None:
        self.labels[name] = self.here

    def jcc8(self, opcode: int, target: str) -> None:
        self.emit(opcode, 0)
        self.fixups.append((len(self.buf) - 1, target))

    def finish(self) -> bytes:
        for idx, name in self.fixups:
            rel = self.labels[name] - (self.origin + idx + 1)
            if not -128 <= rel <= 127:
                raise ValueError(f"rel8 to {name} out of range")
            self.buf[idx] = rel & 0xFF
        return bytes(self.buf)


def _main_code() -> bytes:
    a = _Asm(ENTRY)
    # Bring the LAPIC up: software-enable with spurious vector 0xFF (SVR = 0x1FF), and mask
    # LINT0/LINT1 so the in-kernel PIC (ExtINT on the BSP's LINT0 at reset) cannot inject.
    # C7 05 <abs32> <imm32>      mov dword [abs32], imm32
    a.emit(0xC7, 0x05, _u32(LAPIC_SVR), _u32(0x1FF))
    a.emit(0xC7, 0x05, _u32(LAPIC_LVT0), _u32(0x10000))
    a.emit(0xC7, 0x05, _u32(LAPIC_LVT1), _u32(0x10000))
    a.label("loop")
    a.emit(0xE5, CMD_PORT)  # E5 ib    in eax, imm8
    a.emit(0x3C, CMD_ACK)  # 3C ib    cmp al, imm8
    a.jcc8(0x74, "ack")  # 74 cb    je rel8
    a.emit(0x3C, CMD_EOI)
    a.jcc8(0x74, "eoi")
    a.emit(0x3C, CMD_MMIO_WRITE)
    a.jcc8(0x74, "mmio_write")
    a.emit(0x3C, CMD_MMIO_READ)
    a.jcc8(0x74, "mmio_read")
    a.emit(0x3C, CMD_SPIN)
    a.jcc8(0x74, "spin")
    a.jcc8(0xEB, "loop")  # EB cb    jmp rel8 (unknown command: ignore)

    a.label("ack")
    a.emit(0xFB)  # FB       sti   (interrupts enabled after the next instruction)
    a.emit(0x90)  # 90       nop   (STI shadow; on hardware a pending interrupt is taken after it)
    a.emit(0xE6, WINDOW_PORT)  # E6 ib  out imm8, al -- an exit inside the window, so that a
    # KVM that only injects at entry (the kvm_pvm emulator) injects here, before the cli
    a.emit(0xFA)  # FA       cli
    a.jcc8(0xEB, "loop")

    a.label("eoi")
    a.emit(0x31, 0xC0)  # 31 C0    xor eax, eax
    a.emit(0xA3, _u32(LAPIC_EOI))  # A3 moffs32   mov [moffs32], eax
    a.jcc8(0xEB, "loop")

    a.label("mmio_write")
    a.emit(0xE5, ARG_PORT)  # in eax, ARG
    a.emit(0x89, 0xC3)  # 89 C3    mov ebx, eax
    a.emit(0xE5, ARG_PORT)  # in eax, ARG
    a.emit(0x89, 0x03)  # 89 03    mov [ebx], eax
    a.jcc8(0xEB, "loop")

    a.label("mmio_read")
    a.emit(0xE5, ARG_PORT)  # in eax, ARG
    a.emit(0x89, 0xC3)  # mov ebx, eax
    a.emit(0x8B, 0x03)  # 8B 03    mov eax, [ebx]
    a.emit(0xE7, RESULT_PORT)  # E7 ib    out imm8, eax
    a.jcc8(0xEB, "loop")

    a.label("spin")
    a.emit(0xEB, 0xFE)  # EB FE    jmp $
    return a.finish()


def loop_address() -> int:
    """Where the command loop starts (the stubs jump back here)."""
    a = _main_code()
    return ENTRY + a.index(bytes([0xE5, CMD_PORT]))


def _stubs() -> bytes:
    out = bytearray()
    for v in range(256):
        at = STUBS + STUB_SIZE * v
        target = COMMON if v >= EXCEPTIONS else COMMON + 0x40
        # 6A ib       push imm8 (the vector; sign-extended, only AL is used)
        # E9 cd       jmp rel32
        # 90          nop (pad to 8 bytes)
        stub = bytes([0x6A, v]) + b"\xe9" + _rel32(at + 7, target) + b"\x90"
        out += stub
    return bytes(out)


def _common() -> bytes:
    # No IRET: KVM's x86 emulator (which runs this guest on kvm_pvm hosts) only emulates a
    # real-mode IRET. The interrupt gate already cleared IF, so the stub discards its frame
    # and goes straight back to the command loop with interrupts disabled.
    irq_at = COMMON
    irq = (
        b"\x58"  # 58          pop eax                (the vector)
        + bytes([0xE6, VECTOR_PORT])  # E6 ib   out imm8, al
        + b"\xbc"  # BC id       mov esp, imm32         (drop the interrupt frame)
        + _u32(STACK_TOP)
    )
    irq += b"\xe9" + _rel32(irq_at + len(irq) + 5, loop_address())  # E9 cd  jmp rel32
    exc = (
        b"\x58"  # pop eax (the vector)
        + bytes([0xE6, FAULT_PORT])  # out FAULT, al
        + b"\xeb\xfe"  # jmp $ (the host marks the vCPU dead)
    )
    body = irq.ljust(0x40, b"\x90") + exc
    return body


def _gdt() -> bytes:
    # Flat 4 GiB descriptors: base 0, limit 0xFFFFF with G=1, D/B=1.
    null = 0
    code = 0x00CF9A000000FFFF  # P=1 DPL=0 S=1 type=0xA (execute/read)
    data = 0x00CF92000000FFFF  # P=1 DPL=0 S=1 type=0x2 (read/write)
    return struct.pack("<QQQ", null, code, data)


def _idt() -> bytes:
    out = bytearray()
    for v in range(256):
        off = STUBS + STUB_SIZE * v
        # 32-bit interrupt gate: offset 15:0, selector, 0, type/attr 0x8E (P, DPL0, gate32),
        # offset 31:16. An interrupt gate clears IF on entry.
        out += struct.pack("<HHBBH", off & 0xFFFF, CODE_SEL, 0, 0x8E, off >> 16)
    return bytes(out)


def image() -> dict[int, bytes]:
    """guest-physical address -> bytes to load."""
    code = _main_code()
    if ENTRY + len(code) > STUBS:
        raise AssertionError("main code overlaps the stubs")
    return {
        GDT_ADDR: _gdt(),
        IDT_ADDR: _idt(),
        ENTRY: code,
        STUBS: _stubs(),
        COMMON: _common(),
    }


GDT_LIMIT = 3 * 8 - 1
IDT_LIMIT = 256 * 8 - 1
