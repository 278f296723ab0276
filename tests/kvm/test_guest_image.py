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


IRQ_HEAD = 9  # pop eax; test ebp, ebp; jnz rel32 (to halt_irq)


def _irq_branch(x2apic: bool) -> int:
    """Where the interrupt path's `jnz rel32` goes (checked to be the HALT branch)."""
    irq = G.image(x2apic)[G.COMMON]
    assert irq[:5] == b"\x58\x85\xed\x0f\x85"  # pop eax; test ebp, ebp; jnz rel32
    return G.COMMON + IRQ_HEAD + struct.unpack("<i", irq[5:9])[0]


def test_irq_path_returns_to_the_command_loop_without_iret() -> None:
    common = G.image()[G.COMMON]
    irq = common[:0x40]
    assert b"\xcf" not in irq.rstrip(b"\x90")  # no IRET (see the module docstring)
    assert _irq_branch(False) == G.halt_irq_address(False)
    assert irq[IRQ_HEAD : IRQ_HEAD + 2] == bytes([0xE6, G.VECTOR_PORT])
    jmp_at = irq.index(b"\xe9", IRQ_HEAD)
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
    for base, port, head in ((0, G.VECTOR_PORT, IRQ_HEAD), (0x40, G.FAULT_PORT, 1)):
        path = common[base : base + 0x40]
        assert path[0] == 0x58 and path[head : head + 2] == bytes([0xE6, port])
        jmp_at = path.index(b"\xe9", head)
        rel = struct.unpack("<i", path[jmp_at + 1 : jmp_at + 5])[0]
        assert G.COMMON + base + jmp_at + 5 + rel == loop
    spans = sorted((a, a + len(b)) for a, b in G.image(x2apic).items())
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start
    assert G.STACK_TOP <= G.SCRATCH and G.SCRATCH + 8 <= G.MEM_SIZE


# ---- CMD_HALT (kvm-unit-tests' `sti; hlt` wait)

def _labels(x2apic: bool) -> dict[str, int]:
    return G._main_asm(x2apic)[1]


def _at(x2apic: bool, start: str, end: str) -> bytes:
    code = G.image(x2apic)[G.ENTRY]
    labels = _labels(x2apic)
    return code[labels[start] - G.ENTRY : labels[end] - G.ENTRY]


@pytest.mark.parametrize("x2apic", [False, True])
def test_halt_command_takes_area_eoi_sti_takes_and_arms_last(x2apic: bool) -> None:
    d = _dispatch(x2apic)
    assert d[G.CMD_HALT].startswith(
        ARG + b"\x89\xc5"  # mov ebp, eax (the area)
        + ARG + bytes([0x89, 0x45, G.HALT_EOI])  # mov [ebp+4], eax
        + ARG + bytes([0x89, 0x45, G.HALT_STI])  # mov [ebp+8], eax
        + bytes([0xC7, 0x45, G.HALT_COUNT]) + bytes(4)  # mov dword [ebp+0x0c], 0
        + bytes([0xC7, 0x45, G.HALT_ABORT]) + bytes(4)  # mov dword [ebp+0x10], 0
        + ARG + bytes([0x89, 0x45, G.HALT_LEFT]))  # takes: the last IN
    assert G.CMD_HALT == 14 and (G.CMD_HALT, "halt") in G._DISPATCH


@pytest.mark.parametrize("x2apic", [False, True])
def test_halt_wait_is_sti_hlt_or_hlt_with_if_clear(x2apic: bool) -> None:
    wait = _at(x2apic, "halt_wait", "halt_irq")
    # abort check, sti check, then `sti; hlt; cli` and the IF-clear `hlt`
    assert wait.startswith(bytes([0x83, 0x7D, G.HALT_ABORT, 0, 0x75]))
    assert wait[6:10] == bytes([0x83, 0x7D, G.HALT_STI, 0]) and wait[10] == 0x74
    # sti; hlt; cli; jmp halt_wait, then the IF-clear hlt; jmp halt_wait: nothing else (no
    # port I/O, so no userspace exit between two halts)
    assert wait[12:] == b"\xfb\xf4\xfa\xeb" + bytes([(-17) & 0xFF]) + b"\xf4\xeb" + bytes(
        [(-20) & 0xFF])


@pytest.mark.parametrize("x2apic", [False, True])
def test_a_take_inside_halt_is_recorded_and_eoied_without_any_exit(x2apic: bool) -> None:
    """kvm-unit-tests' handler between the take and the next `sti; hlt` has no userspace exit:
    neither has irqlab's (the EOI is the in-kernel LAPIC's), and it returns to halt_wait."""
    assert _irq_branch(x2apic) == G.halt_irq_address(x2apic)
    body = _at(x2apic, "halt_irq", "halt_done")
    eoi = (b"\xb9\x0b\x08\x00\x00\xb8\x00\x00\x00\x00\xba\x00\x00\x00\x00\x0f\x30"
           if x2apic else b"\x31\xc0\xa3" + struct.pack("<I", G.LAPIC_EOI))
    assert body == (
        b"\xbc" + struct.pack("<I", G.STACK_TOP)  # mov esp, STACK_TOP
        + b"\x0f\xb6\xc0"  # movzx eax, al
        + bytes([0x8B, 0x4D, G.HALT_COUNT])  # mov ecx, [ebp+0x0c]
        + bytes([0x89, 0x44, 0x8D, G.HALT_VECS])  # mov [ebp+ecx*4+0x20], eax
        + b"\x41" + bytes([0x89, 0x4D, G.HALT_COUNT])  # inc ecx; mov [ebp+0x0c], ecx
        + bytes([0x83, 0x7D, G.HALT_EOI, 0, 0x74, len(eoi)])  # cmp [ebp+4], 0; je past EOI
        + eoi
        + bytes([0xFF, 0x4D, G.HALT_LEFT])  # dec dword [ebp]
        + b"\x0f\x85" + body[-4:])  # jnz rel32
    jnz_next = G.halt_irq_address(x2apic) + len(body)
    assert jnz_next + struct.unpack("<i", body[-4:])[0] == _labels(x2apic)["halt_wait"]


@pytest.mark.parametrize("x2apic", [False, True])
def test_halt_reports_each_take_and_clears_ebp(x2apic: bool) -> None:
    done = _at(x2apic, "halt_done", "halt_end")
    assert done == (b"\x31\xc9" + bytes([0x3B, 0x4D, G.HALT_COUNT, 0x73, 0x09])
                    + bytes([0x8B, 0x44, 0x8D, G.HALT_VECS, 0xE6, G.VECTOR_PORT])
                    + b"\x41\xeb" + bytes([(-14) & 0xFF]))
    code = G.image(x2apic)[G.ENTRY]
    end = _labels(x2apic)["halt_end"] - G.ENTRY
    assert code[end : end + 3] == b"\x31\xed\xe9"  # xor ebp, ebp; jmp loop
    rel = struct.unpack("<i", code[end + 3 : end + 7])[0]
    assert G.ENTRY + end + 7 + rel == G.loop_address(x2apic)
    # EBP is set only by the HALT command (mov ebp, eax), so an ACK window's take reports
    assert code.count(b"\x89\xc5") == 1


def test_halt_areas_fit_after_the_image_for_64_vcpus() -> None:
    assert G.halt_area(0) == G.HALT_AREA >= G.SCRATCH + 8
    assert G.halt_area(63) + G.HALT_AREA_SIZE <= G.MEM_SIZE
    assert G.HALT_VECS + 4 * G.HALT_MAX_TAKES <= G.HALT_AREA_SIZE
    assert max(G.HALT_LEFT, G.HALT_EOI, G.HALT_STI, G.HALT_COUNT, G.HALT_ABORT) < G.HALT_VECS
