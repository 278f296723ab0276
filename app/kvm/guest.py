"""irqlab's own guest: 32-bit flat protected-mode machine code emitted by Python.

No assembler runs at any time: every instruction below is written as bytes with its encoding
in a comment. The vCPU starts directly in protected mode (KVM_SET_SREGS loads CS/DS/SS with
base 0, limit 4 GiB; paging off, so linear = physical; CR4.OSFXSR set for MMX). A GDT is still
placed in guest memory because interrupt delivery and IRET reload CS from it.

Two images: xAPIC (the LAPIC by MMIO at 0xFEE00000) and x2APIC (`image(x2apic=True)`: the
guest sets IA32_APIC_BASE.EN|EXTD first and then uses the x2APIC MSRs 0x800 + offset >> 4; the
host gives it CPUID.1:ECX.x2APIC with KVM_SET_CPUID2, without which KVM #GPs the EXTD write).

Guest-physical layout (one memslot at GPA 0, MEM_SIZE bytes):

    0x0800  GDT: null, 0x08 code (flat, 32-bit, ring 0), 0x10 data (flat, 32-bit)
    0x1000  IDT: 256 32-bit interrupt gates (0x8E), gate v -> STUBS + 8*v
    0x2000  ENTRY: LAPIC setup, then the command loop
    0x3000  STUBS: 256 stubs of 8 bytes
    0x3800  interrupt/exception common paths
    0x8000  stack top (grows down)
    0x9000  SCRATCH: 8 bytes where an 8-byte MMIO access is staged

Port protocol (all port I/O exits to the host, KVM_EXIT_IO):

    in  eax, CMD_PORT      the guest waits for a command; the host answers with a 32-bit value
    in  eax, ARG_PORT      a command argument (address, value, MSR index, dword of a value)
    out VECTOR_PORT, al    an interrupt stub reports the vector it was entered through
    out RESULT_PORT, eax   a value read (8-byte reads and rdmsr: two, low dword first)
    out WINDOW_PORT, al    inside the ACK window (the host just resumes)
    out FAULT_PORT, al     an exception stub (vectors 0..31) reports the exception and goes
                           back to the command loop; the host treats it as fatal except a #GP
                           from RDMSR/WRMSR (a register the LAPIC's mode does not have)

Commands (CMD_PORT answer, low byte):

    ACK   sti; nop; out WINDOW_PORT, al; cli -- the interrupt window. On hardware a pending
          interrupt is taken after the nop (the STI shadow ends there); a KVM that injects only
          on entry takes it when KVM_RUN resumes after the OUT exit. The stub reports the
          vector and jumps back to the command loop with IF still clear (no IRET), so at most
          one interrupt is taken per window. No report means none was taken.
    EOI   xAPIC: mov [0xFEE000B0], eax (eax = 0). x2APIC: wrmsr 0x80B (edx:eax = 0). The LAPIC
          is in-kernel, so neither exits to userspace.
    MMIO_WRITE{8,16,,64}  addr = in ARG; value = in ARG (64: two ARGs, low first); one store
          of 1 (mov [ebx], al), 2 (66 mov [ebx], ax), 4 (mov [ebx], eax) or 8 bytes. 32-bit mode
          has no 8-byte integer move: the 8-byte one is MMX movq from SCRATCH, which KVM's
          emulator (em_mov, Mmx) performs as ONE 8-byte access (tests/kvm/test_guest_modes.py
          sees a single 8-byte KVM_EXIT_MMIO). x87 fild/fistp is not emulated by KVM, SSE movq
          (F3 0F 7E) is not in its opcode table, and cmpxchg8b reads first and stores only on
          a match, so none of those would do.
    MMIO_READ{8,16,,64}   addr = in ARG; movzx / mov / MMX movq load; out RESULT (64: two).
    RDMSR  ecx = in ARG; rdmsr; out RESULT eax; out RESULT edx.
    WRMSR  ecx, eax, edx = three ARGs; wrmsr.
    SPIN  jmp $ -- never exits again; only for testing the watchdog.
    HALT  area, eoi, sti, takes = four ARGs. The kvm-unit-tests wait: `sti; hlt` (or `hlt` with
          IF still clear when sti = 0) until `takes` interrupts were taken, with interrupts
          that became pending while IF was clear taken at the first `sti; hlt`. EBP holds the
          vCPU's HALT area while the command runs (EBP is 0 otherwise), which is how the
          interrupt path tells a take inside HALT from an ACK window's: it records the vector
          in the area *without any exit*, writes EOI if `eoi` (as kvm-unit-tests' handler
          does: the LAPIC is in-kernel, so no userspace exit either) and goes back to
          `sti; hlt`. After the last take, or when the host set the area's abort word and
          woke the vCPU, the recorded vectors are reported on VECTOR_PORT (one OUT each) and
          the command ends. With the in-kernel LAPIC KVM handles HLT itself (KVM_RUN blocks
          while the vCPU is halted), so the host bounds the command in time and reads
          KVM_GET_MP_STATE (app.kvm.vm.KvmVm.halt).

Apart from HALT the guest never halts and never waits on time: every command ends by returning
to the command IN, which is how the host knows the command is complete.
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
SCRATCH = 0x9000  # 8 bytes of RAM where an 8-byte MMIO access is staged (MMX movq)
# HALT areas, one per vCPU (HALT_AREA + HALT_AREA_SIZE * n): dwords at these offsets.
HALT_AREA = 0xA000
HALT_AREA_SIZE = 0x100
HALT_LEFT = 0x00  # takes still awaited (the command ends when it reaches 0)
HALT_EOI = 0x04  # non-zero: the handler writes EOI
HALT_STI = 0x08  # non-zero: `sti; hlt`; zero: `hlt` with IF clear
HALT_COUNT = 0x0C  # takes recorded so far
HALT_ABORT = 0x10  # set by the host (guest memory) to end the command at the next wake-up
HALT_VECS = 0x20  # the recorded vectors, one dword each
HALT_MAX_TAKES = 16

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
CMD_MMIO_WRITE8 = 6
CMD_MMIO_WRITE16 = 7
CMD_MMIO_WRITE64 = 8
CMD_MMIO_READ8 = 9
CMD_MMIO_READ16 = 10
CMD_MMIO_READ64 = 11
CMD_RDMSR = 12
CMD_WRMSR = 13
CMD_HALT = 14

LAPIC_BASE = 0xFEE00000
LAPIC_EOI = LAPIC_BASE + 0xB0
LAPIC_SVR = LAPIC_BASE + 0xF0
LAPIC_LVT0 = LAPIC_BASE + 0x350
LAPIC_LVT1 = LAPIC_BASE + 0x360
MSR_APIC_BASE = 0x1B
APIC_BASE_EN = 1 << 11
APIC_BASE_EXTD = 1 << 10
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
    """Append-only byte buffer at a known origin, with forward/backward jump patching (rel8
    for short jumps, rel32 for the command dispatch, whose handlers lie beyond rel8 range)."""

    def __init__(self, origin: int) -> None:
        self.origin = origin
        self.buf = bytearray()
        self.labels: dict[str, int] = {}
        self.fixups: list[tuple[int, int, str]] = []  # (index of the rel field, width, label)

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
        self.fixups.append((len(self.buf) - 1, 1, target))

    def je32(self, target: str) -> None:
        self.emit(0x0F, 0x84, bytes(4))  # 0F 84 cd    je rel32
        self.fixups.append((len(self.buf) - 4, 4, target))

    def jmp32(self, target: str) -> None:
        self.emit(0xE9, bytes(4))  # E9 cd    jmp rel32
        self.fixups.append((len(self.buf) - 4, 4, target))

    def finish(self) -> bytes:
        for idx, width, name in self.fixups:
            rel = self.labels[name] - (self.origin + idx + width)
            if width == 1:
                if not -128 <= rel <= 127:
                    raise ValueError(f"rel8 to {name} out of range")
                self.buf[idx] = rel & 0xFF
            else:
                self.buf[idx : idx + 4] = struct.pack("<i", rel)
        return bytes(self.buf)


def _wrmsr_imm(a: _Asm, msr: int, value: int) -> None:
    """wrmsr with constant operands (edx:eax = value, ecx = msr)."""
    a.emit(0xB9, _u32(msr))  # B9 id    mov ecx, imm32
    a.emit(0xB8, _u32(value))  # B8 id    mov eax, imm32
    a.emit(0xBA, _u32(value >> 32))  # BA id    mov edx, imm32
    a.emit(0x0F, 0x30)  # 0F 30    wrmsr


def _addr_to_ebx(a: _Asm) -> None:
    a.emit(0xE5, ARG_PORT)  # E5 ib    in eax, imm8 (the address)
    a.emit(0x89, 0xC3)  # 89 C3    mov ebx, eax


def _eoi(a: _Asm, x2apic: bool) -> None:
    """The guest's LAPIC EOI (clobbers eax, and ecx/edx in x2APIC mode)."""
    if x2apic:
        # x2APIC EOI: wrmsr 0x80B with edx:eax = 0 (a non-zero value would #GP).
        _wrmsr_imm(a, x2apic_msr(0xB0), 0)
    else:
        a.emit(0x31, 0xC0)  # 31 C0    xor eax, eax
        a.emit(0xA3, _u32(LAPIC_EOI))  # A3 moffs32   mov [moffs32], eax


def _main_code(x2apic: bool = False) -> bytes:
    return _main_asm(x2apic)[0]


def _main_asm(x2apic: bool = False) -> tuple[bytes, dict[str, int]]:
    """The entry code and command loop, and the address of each label."""
    a = _Asm(ENTRY)
    if x2apic:
        # Switch to x2APIC: IA32_APIC_BASE |= EN | EXTD (xAPIC -> x2APIC is a legal transition;
        # the BSP flag and the base are kept). KVM requires CPUID.1:ECX.x2APIC for EXTD, which
        # the host sets with KVM_SET_CPUID2 before the first entry.
        a.emit(0xB9, _u32(MSR_APIC_BASE))  # B9 id    mov ecx, imm32
        a.emit(0x0F, 0x32)  # 0F 32    rdmsr          (edx:eax = IA32_APIC_BASE)
        a.emit(0x0D, _u32(APIC_BASE_EN | APIC_BASE_EXTD))  # 0D id    or eax, imm32
        a.emit(0x0F, 0x30)  # 0F 30    wrmsr
        # The same LAPIC set-up as xAPIC, through the x2APIC MSRs (0x800 + offset/16).
        _wrmsr_imm(a, x2apic_msr(0xF0), 0x1FF)  # SVR: software enable, spurious 0xFF
        _wrmsr_imm(a, x2apic_msr(0x350), 0x10000)  # LVT0 masked
        _wrmsr_imm(a, x2apic_msr(0x360), 0x10000)  # LVT1 masked
    else:
        # Bring the LAPIC up: software-enable with spurious vector 0xFF (SVR = 0x1FF), and mask
        # LINT0/LINT1 so the in-kernel PIC (ExtINT on the BSP's LINT0 at reset) cannot inject.
        # C7 05 <abs32> <imm32>      mov dword [abs32], imm32
        a.emit(0xC7, 0x05, _u32(LAPIC_SVR), _u32(0x1FF))
        a.emit(0xC7, 0x05, _u32(LAPIC_LVT0), _u32(0x10000))
        a.emit(0xC7, 0x05, _u32(LAPIC_LVT1), _u32(0x10000))
    a.label("loop")
    a.emit(0xE5, CMD_PORT)  # E5 ib    in eax, imm8
    for cmd, name in _DISPATCH:
        a.emit(0x3C, cmd)  # 3C ib    cmp al, imm8
        a.je32(name)  # 0F 84 cd    je rel32
    a.jcc8(0xEB, "loop")  # EB cb    jmp rel8 (unknown command: ignore)

    a.label("ack")
    a.emit(0xFB)  # FB       sti   (interrupts enabled after the next instruction)
    a.emit(0x90)  # 90       nop   (STI shadow; on hardware a pending interrupt is taken after it)
    a.emit(0xE6, WINDOW_PORT)  # E6 ib  out imm8, al -- an exit inside the window, so that a
    # KVM that only injects at entry (the kvm_pvm emulator) injects here, before the cli
    a.emit(0xFA)  # FA       cli
    a.jmp32("loop")

    a.label("eoi")
    _eoi(a, x2apic)
    a.jmp32("loop")

    a.label("mmio_write")
    _addr_to_ebx(a)
    a.emit(0xE5, ARG_PORT)  # in eax, ARG (the value)
    a.emit(0x89, 0x03)  # 89 03    mov [ebx], eax        (4 bytes)
    a.jmp32("loop")

    a.label("mmio_write8")
    _addr_to_ebx(a)
    a.emit(0xE5, ARG_PORT)
    a.emit(0x88, 0x03)  # 88 03    mov [ebx], al         (1 byte)
    a.jmp32("loop")

    a.label("mmio_write16")
    _addr_to_ebx(a)
    a.emit(0xE5, ARG_PORT)
    a.emit(0x66, 0x89, 0x03)  # 66 89 03   mov [ebx], ax  (operand-size prefix: 2 bytes)
    a.jmp32("loop")

    a.label("mmio_write64")
    # 32-bit mode has no 8-byte integer store. MMX movq is one 8-byte memory access, which
    # KVM's emulator (em_mov with the Mmx flag) turns into one 8-byte MMIO write; the value is
    # staged in RAM first. (cmpxchg8b would read before writing and store only on a match.)
    _addr_to_ebx(a)
    a.emit(0xE5, ARG_PORT)  # in eax, ARG (low dword)
    a.emit(0xA3, _u32(SCRATCH))  # A3 moffs32   mov [SCRATCH], eax
    a.emit(0xE5, ARG_PORT)  # in eax, ARG (high dword)
    a.emit(0xA3, _u32(SCRATCH + 4))  # A3 moffs32   mov [SCRATCH+4], eax
    a.emit(0x0F, 0x6F, 0x05, _u32(SCRATCH))  # 0F 6F /r (modrm 05: [disp32])  movq mm0, [SCRATCH]
    a.emit(0x0F, 0x7F, 0x03)  # 0F 7F /r (modrm 03: mm0, [ebx])  movq [ebx], mm0
    a.jmp32("loop")

    a.label("mmio_read")
    _addr_to_ebx(a)
    a.emit(0x8B, 0x03)  # 8B 03    mov eax, [ebx]        (4 bytes)
    a.emit(0xE7, RESULT_PORT)  # E7 ib    out imm8, eax
    a.jmp32("loop")

    a.label("mmio_read8")
    _addr_to_ebx(a)
    a.emit(0x0F, 0xB6, 0x03)  # 0F B6 03   movzx eax, byte [ebx]
    a.emit(0xE7, RESULT_PORT)
    a.jmp32("loop")

    a.label("mmio_read16")
    _addr_to_ebx(a)
    a.emit(0x0F, 0xB7, 0x03)  # 0F B7 03   movzx eax, word [ebx]
    a.emit(0xE7, RESULT_PORT)
    a.jmp32("loop")

    a.label("mmio_read64")
    _addr_to_ebx(a)
    a.emit(0x0F, 0x6F, 0x03)  # 0F 6F 03   movq mm0, [ebx]     (one 8-byte read)
    a.emit(0x0F, 0x7F, 0x05, _u32(SCRATCH))  # 0F 7F 05 disp32   movq [SCRATCH], mm0
    a.emit(0xA1, _u32(SCRATCH))  # A1 moffs32   mov eax, [SCRATCH]
    a.emit(0xE7, RESULT_PORT)  # out RESULT, eax (low dword first)
    a.emit(0xA1, _u32(SCRATCH + 4))  # mov eax, [SCRATCH+4]
    a.emit(0xE7, RESULT_PORT)  # out RESULT, eax (high dword)
    a.jmp32("loop")

    a.label("rdmsr")
    a.emit(0xE5, ARG_PORT)  # in eax, ARG (the MSR index)
    a.emit(0x89, 0xC1)  # 89 C1    mov ecx, eax
    a.emit(0x0F, 0x32)  # 0F 32    rdmsr          (#GP goes to the fault path)
    a.emit(0xE7, RESULT_PORT)  # out RESULT, eax (low dword)
    a.emit(0x89, 0xD0)  # 89 D0    mov eax, edx
    a.emit(0xE7, RESULT_PORT)  # out RESULT, eax (high dword)
    a.jmp32("loop")

    a.label("wrmsr")
    a.emit(0xE5, ARG_PORT)  # in eax, ARG (the MSR index)
    a.emit(0x89, 0xC1)  # 89 C1    mov ecx, eax
    a.emit(0xE5, ARG_PORT)  # in eax, ARG (low dword)
    a.emit(0x89, 0xC3)  # 89 C3    mov ebx, eax
    a.emit(0xE5, ARG_PORT)  # in eax, ARG (high dword)
    a.emit(0x89, 0xC2)  # 89 C2    mov edx, eax
    a.emit(0x89, 0xD8)  # 89 D8    mov eax, ebx
    a.emit(0x0F, 0x30)  # 0F 30    wrmsr          (#GP goes to the fault path)
    a.jmp32("loop")

    a.label("spin")
    a.emit(0xEB, 0xFE)  # EB FE    jmp $

    _halt_code(a, x2apic)
    code = a.finish()
    return code, dict(a.labels)


def _halt_code(a: _Asm, x2apic: bool) -> None:
    """CMD_HALT and the interrupt path's HALT branch (`halt_irq`). Area fields are addressed
    as [ebp + disp8] (ModRM mod=01, rm=101)."""
    a.label("halt")
    a.emit(0xE5, ARG_PORT)  # E5 ib    in eax, imm8 (the vCPU's HALT area)
    a.emit(0x89, 0xC5)  # 89 C5    mov ebp, eax
    a.emit(0xE5, ARG_PORT)  # in eax, ARG (eoi)
    a.emit(0x89, 0x45, HALT_EOI)  # 89 45 db   mov [ebp+disp8], eax
    a.emit(0xE5, ARG_PORT)  # in eax, ARG (sti)
    a.emit(0x89, 0x45, HALT_STI)  # 89 45 db   mov [ebp+disp8], eax
    a.emit(0xC7, 0x45, HALT_COUNT, _u32(0))  # C7 45 db id   mov dword [ebp+disp8], imm32
    a.emit(0xC7, 0x45, HALT_ABORT, _u32(0))  # C7 45 db id   mov dword [ebp+disp8], imm32
    a.emit(0xE5, ARG_PORT)  # in eax, ARG (takes; the last IN, so nothing exits after it)
    a.emit(0x89, 0x45, HALT_LEFT)  # 89 45 db   mov [ebp+disp8], eax
    a.label("halt_wait")
    a.emit(0x83, 0x7D, HALT_ABORT, 0)  # 83 7D db ib   cmp dword [ebp+disp8], imm8
    a.jcc8(0x75, "halt_done")  # 75 cb    jne rel8 (the host asked to end)
    a.emit(0x83, 0x7D, HALT_STI, 0)  # 83 7D db ib   cmp dword [ebp+disp8], imm8
    a.jcc8(0x74, "halt_if0")  # 74 cb    je rel8
    a.emit(0xFB)  # FB       sti   (the STI shadow covers the hlt, as kvm-unit-tests' `sti; hlt`)
    a.emit(0xF4)  # F4       hlt
    a.emit(0xFA)  # FA       cli   (reached when hlt resumes without a take)
    a.jcc8(0xEB, "halt_wait")  # EB cb    jmp rel8
    a.label("halt_if0")
    a.emit(0xF4)  # F4       hlt   (IF clear: a pending interrupt does not wake it)
    a.jcc8(0xEB, "halt_wait")  # EB cb    jmp rel8

    a.label("halt_irq")  # from the interrupt path: eax = the vector, IF clear (the gate)
    a.emit(0xBC, _u32(STACK_TOP))  # BC id    mov esp, imm32 (drop the interrupt frame)
    a.emit(0x0F, 0xB6, 0xC0)  # 0F B6 C0   movzx eax, al (the stub's push sign-extended it)
    a.emit(0x8B, 0x4D, HALT_COUNT)  # 8B 4D db   mov ecx, [ebp+disp8]
    a.emit(0x89, 0x44, 0x8D, HALT_VECS)  # 89 44 8D db   mov [ebp+ecx*4+disp8], eax
    # (ModRM 44: mod=01 reg=eax rm=100 SIB; SIB 8D: scale 4, index ecx, base ebp)
    a.emit(0x41)  # 41       inc ecx
    a.emit(0x89, 0x4D, HALT_COUNT)  # 89 4D db   mov [ebp+disp8], ecx
    a.emit(0x83, 0x7D, HALT_EOI, 0)  # 83 7D db ib   cmp dword [ebp+disp8], imm8
    a.jcc8(0x74, "halt_no_eoi")  # 74 cb    je rel8
    _eoi(a, x2apic)
    a.label("halt_no_eoi")
    a.emit(0xFF, 0x4D, HALT_LEFT)  # FF 4D db   dec dword [ebp+disp8]
    a.emit(0x0F, 0x85, bytes(4))  # 0F 85 cd   jnz rel32 (back to `sti; hlt`)
    a.fixups.append((len(a.buf) - 4, 4, "halt_wait"))

    a.label("halt_done")  # IF clear: report the recorded vectors, then the command loop
    a.emit(0x31, 0xC9)  # 31 C9    xor ecx, ecx
    a.label("halt_report")
    a.emit(0x3B, 0x4D, HALT_COUNT)  # 3B 4D db   cmp ecx, [ebp+disp8]
    a.jcc8(0x73, "halt_end")  # 73 cb    jae rel8
    a.emit(0x8B, 0x44, 0x8D, HALT_VECS)  # 8B 44 8D db   mov eax, [ebp+ecx*4+disp8]
    a.emit(0xE6, VECTOR_PORT)  # E6 ib    out imm8, al
    a.emit(0x41)  # 41       inc ecx
    a.jcc8(0xEB, "halt_report")  # EB cb    jmp rel8
    a.label("halt_end")
    a.emit(0x31, 0xED)  # 31 ED    xor ebp, ebp (the interrupt path is the ACK window's again)
    a.jmp32("loop")


_DISPATCH = (
    (CMD_ACK, "ack"),
    (CMD_EOI, "eoi"),
    (CMD_MMIO_WRITE, "mmio_write"),
    (CMD_MMIO_READ, "mmio_read"),
    (CMD_SPIN, "spin"),
    (CMD_MMIO_WRITE8, "mmio_write8"),
    (CMD_MMIO_WRITE16, "mmio_write16"),
    (CMD_MMIO_WRITE64, "mmio_write64"),
    (CMD_MMIO_READ8, "mmio_read8"),
    (CMD_MMIO_READ16, "mmio_read16"),
    (CMD_MMIO_READ64, "mmio_read64"),
    (CMD_RDMSR, "rdmsr"),
    (CMD_WRMSR, "wrmsr"),
    (CMD_HALT, "halt"),
)
MMIO_WRITE_CMDS = {1: CMD_MMIO_WRITE8, 2: CMD_MMIO_WRITE16, 4: CMD_MMIO_WRITE,
                   8: CMD_MMIO_WRITE64}
MMIO_READ_CMDS = {1: CMD_MMIO_READ8, 2: CMD_MMIO_READ16, 4: CMD_MMIO_READ, 8: CMD_MMIO_READ64}


def x2apic_msr(offset: int) -> int:
    """The x2APIC MSR of the xAPIC register at `offset` (SDM: 0x800 + offset >> 4)."""
    return 0x800 + (offset >> 4)


def loop_address(x2apic: bool = False) -> int:
    """Where the command loop starts (the stubs jump back here)."""
    return _main_asm(x2apic)[1]["loop"]


def halt_irq_address(x2apic: bool = False) -> int:
    """Where the interrupt path goes for a take inside CMD_HALT (EBP non-zero)."""
    return _main_asm(x2apic)[1]["halt_irq"]


def halt_area(vcpu: int) -> int:
    """The guest-physical address of vCPU `vcpu`'s CMD_HALT area."""
    return HALT_AREA + HALT_AREA_SIZE * vcpu


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


def _common(x2apic: bool = False) -> bytes:
    # No IRET: KVM's x86 emulator (which runs this guest on kvm_pvm hosts) only emulates a
    # real-mode IRET. The interrupt gate already cleared IF, so the stub discards its frame
    # and goes straight back to the command loop with interrupts disabled.
    loop = loop_address(x2apic)
    irq_at = COMMON
    irq = (
        b"\x58"  # 58          pop eax                (the vector)
        + b"\x85\xed"  # 85 ED       test ebp, ebp          (inside CMD_HALT?)
        + b"\x0f\x85"  # 0F 85 cd    jnz rel32              (to halt_irq: no exit)
        + _rel32(irq_at + 9, halt_irq_address(x2apic))
        + bytes([0xE6, VECTOR_PORT])  # E6 ib   out imm8, al
        + b"\xbc"  # BC id       mov esp, imm32         (drop the interrupt frame)
        + _u32(STACK_TOP)
    )
    irq += b"\xe9" + _rel32(irq_at + len(irq) + 5, loop)  # E9 cd  jmp rel32
    # An exception reports its vector and also goes back to the command loop (frame and error
    # code dropped with the stack): the host decides. A #GP from rdmsr/wrmsr (a register the
    # mode does not have, a read-only x2APIC register) is an answer; any other is fatal there.
    exc_at = COMMON + 0x40
    exc = (
        b"\x58"  # pop eax (the vector)
        + bytes([0xE6, FAULT_PORT])  # out FAULT, al
        + b"\xbc"  # mov esp, imm32
        + _u32(STACK_TOP)
    )
    exc += b"\xe9" + _rel32(exc_at + len(exc) + 5, loop)  # jmp rel32
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


def image(x2apic: bool = False) -> dict[int, bytes]:
    """guest-physical address -> bytes to load. `x2apic`: the guest switches its LAPIC to
    x2APIC mode at start and uses the x2APIC MSRs (EOI = wrmsr 0x80B) instead of the MMIO page."""
    code = _main_code(x2apic)
    if ENTRY + len(code) > STUBS:
        raise AssertionError("main code overlaps the stubs")
    return {
        GDT_ADDR: _gdt(),
        IDT_ADDR: _idt(),
        ENTRY: code,
        STUBS: _stubs(),
        COMMON: _common(x2apic),
    }


GDT_LIMIT = 3 * 8 - 1
IDT_LIMIT = 256 * 8 - 1
