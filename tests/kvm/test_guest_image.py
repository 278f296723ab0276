"""The guest image irqlab emits: layout and the encodings the host protocol depends on."""

from __future__ import annotations

import itertools
import struct

import pytest

from app.kvm import guest as G


def test_image_regions_do_not_overlap() -> None:
    spans = sorted((a, a + len(b)) for a, b in G.image().items())
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start
    assert spans[-1][1] <= G.STACK_TOP <= G.MEM_SIZE


def test_idt_gates_point_at_stubs() -> None:
    idt = G.image()[G.IDT_ADDR]
    assert len(idt) == 256 * 8 == G.IDT_LIMIT + 1
    for v in (0, 0x40, 0xFF):
        lo, sel, zero, attr, hi = struct.unpack_from("<HHBBH", idt, 8 * v)
        assert (hi << 16 | lo, sel, zero, attr) == (G.STUBS + 8 * v, G.CODE_SEL, 0, 0x8E)


def test_stubs_push_their_vector_and_jump_to_the_right_path() -> None:
    stubs = G.image()[G.STUBS]
    for v in (3, 0x40, 0xFF):
        s = stubs[8 * v : 8 * v + 8]
        assert s[0] == 0x6A and s[1] == v and s[2] == 0xE9
        target = G.STUBS + 8 * v + 7 + struct.unpack("<i", s[3:7])[0]
        assert target == (G.COMMON + 0x40 if v < 32 else G.COMMON)


def test_irq_path_returns_to_the_command_loop_without_iret() -> None:
    common = G.image()[G.COMMON]
    irq = common[:0x40]
    assert b"\xcf" not in irq.rstrip(b"\x90")  # no IRET (see the module docstring)
    assert irq[:3] == bytes([0x58, 0xE6, G.VECTOR_PORT])
    jmp_at = irq.index(b"\xe9", 3)
    target = G.COMMON + jmp_at + 5 + struct.unpack("<i", irq[jmp_at + 1 : jmp_at + 5])[0]
    assert target == G.loop_address()
    assert G.image()[G.ENTRY][G.loop_address() - G.ENTRY :][:2] == bytes([0xE5, G.CMD_PORT])


def test_gdt_is_flat() -> None:
    null, code, data = struct.unpack("<QQQ", G.image()[G.GDT_ADDR])
    assert (null, code, data) == (0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF)


# ---- the command dispatch, MMIO access sizes, MSRs and the x2APIC image


def _dispatch(x2apic: bool) -> dict[int, bytes]:
    """command -> the first bytes of its handler, read from the `cmp al, imm8; je rel32`
    chain at the command loop."""
    code = G.image(x2apic)[G.ENTRY]
    at = G.loop_address(x2apic) - G.ENTRY + 2  # past `in eax, CMD_PORT`
    out: dict[int, bytes] = {}
    while code[at] == 0x3C:  # cmp al, imm8
        cmd = code[at + 1]
        assert code[at + 2 : at + 4] == b"\x0f\x84"  # je rel32
        target = at + 8 + struct.unpack("<i", code[at + 4 : at + 8])[0]
        out[cmd] = code[target : target + 40]
        at += 8
    return out


ADDR = bytes([0xE5, G.ARG_PORT, 0x89, 0xC3])  # in eax, ARG; mov ebx, eax
ARG = bytes([0xE5, G.ARG_PORT])
SCRATCH = struct.pack("<I", G.SCRATCH)


@pytest.mark.parametrize("x2apic", [False, True])
def test_every_mmio_size_is_one_access_of_that_size(x2apic: bool) -> None:
    d = _dispatch(x2apic)
    # writes: the value's IN, then one store through ebx of the access size
    assert d[G.CMD_MMIO_WRITE8].startswith(ADDR + ARG + b"\x88\x03")  # mov [ebx], al
    assert d[G.CMD_MMIO_WRITE16].startswith(ADDR + ARG + b"\x66\x89\x03")  # mov [ebx], ax
    assert d[G.CMD_MMIO_WRITE].startswith(ADDR + ARG + b"\x89\x03")  # mov [ebx], eax
    # 8: both dwords staged in RAM, movq mm0, [SCRATCH]; movq [ebx], mm0 (one 8-byte store)
    assert d[G.CMD_MMIO_WRITE64].startswith(
        ADDR + ARG + b"\xa3" + SCRATCH + ARG + b"\xa3" + struct.pack("<I", G.SCRATCH + 4)
        + b"\x0f\x6f\x05" + SCRATCH + b"\x0f\x7f\x03")
    out = bytes([0xE7, G.RESULT_PORT])
    assert d[G.CMD_MMIO_READ8].startswith(ADDR + b"\x0f\xb6\x03" + out)  # movzx eax, byte
    assert d[G.CMD_MMIO_READ16].startswith(ADDR + b"\x0f\xb7\x03" + out)  # movzx eax, word
    assert d[G.CMD_MMIO_READ].startswith(ADDR + b"\x8b\x03" + out)
    assert d[G.CMD_MMIO_READ64].startswith(
        ADDR + b"\x0f\x6f\x03" + b"\x0f\x7f\x05" + SCRATCH + b"\xa1" + SCRATCH + out)
    assert G.MMIO_WRITE_CMDS[8] == G.CMD_MMIO_WRITE64 and G.MMIO_READ_CMDS[1] == G.CMD_MMIO_READ8


@pytest.mark.parametrize("x2apic", [False, True])
def test_msr_commands(x2apic: bool) -> None:
    d = _dispatch(x2apic)
    # rdmsr: ecx from ARG, then edx:eax reported low dword first
    assert d[G.CMD_RDMSR].startswith(ARG + b"\x89\xc1\x0f\x32\xe7" + bytes([G.RESULT_PORT])
                                     + b"\x89\xd0\xe7" + bytes([G.RESULT_PORT]))
    # wrmsr: ecx, eax (low), edx (high) from three ARGs
    assert d[G.CMD_WRMSR].startswith(ARG + b"\x89\xc1" + ARG + b"\x89\xc3" + ARG
                                     + b"\x89\xc2\x89\xd8\x0f\x30")
    assert set(d) == {c for c, _ in G._DISPATCH}


def test_x2apic_image_enables_x2apic_and_never_touches_the_xapic_page() -> None:
    code = G.image(True)[G.ENTRY]
    # mov ecx, 0x1B; rdmsr; or eax, EN|EXTD; wrmsr -- first thing at the entry point
    assert code.startswith(b"\xb9\x1b\x00\x00\x00\x0f\x32\x0d\x00\x0c\x00\x00\x0f\x30")
    # SVR by MSR 0x80F, LVT0/LVT1 masked by MSRs 0x835/0x836
    for msr, value in ((0x80F, 0x1FF), (0x835, 0x10000), (0x836, 0x10000)):
        assert b"\xb9" + struct.pack("<I", msr) + b"\xb8" + struct.pack("<I", value) in code
    # in x2APIC mode an access to 0xFEE00xxx would be a plain MMIO exit: none in the image
    assert struct.pack("<I", G.LAPIC_BASE)[2:] not in code
    assert struct.pack("<I", G.LAPIC_EOI) in G.image(False)[G.ENTRY]
    # EOI is wrmsr 0x80B with edx:eax = 0
    assert _dispatch(True)[G.CMD_EOI].startswith(
        b"\xb9\x0b\x08\x00\x00\xb8\x00\x00\x00\x00\xba\x00\x00\x00\x00\x0f\x30")
    assert (G.x2apic_msr(0xB0), G.x2apic_msr(0x20), G.x2apic_msr(0xD0)) == (0x80B, 0x802, 0x80D)


@pytest.mark.parametrize("x2apic", [False, True])
def test_both_paths_of_each_image_return_to_its_command_loop(x2apic: bool) -> None:
    common = G.image(x2apic)[G.COMMON]
    loop = G.loop_address(x2apic)
    for base, port in ((0, G.VECTOR_PORT), (0x40, G.FAULT_PORT)):
        path = common[base : base + 0x40]
        assert path[:3] == bytes([0x58, 0xE6, port])
        jmp_at = path.index(b"\xe9", 3)
        rel = struct.unpack("<i", path[jmp_at + 1 : jmp_at + 5])[0]
        assert G.COMMON + base + jmp_at + 5 + rel == loop
    spans = sorted((a, a + len(b)) for a, b in G.image(x2apic).items())
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start
    assert G.STACK_TOP <= G.SCRATCH and G.SCRATCH + 8 <= G.MEM_SIZE
