"""The guest image irqlab emits: layout and the encodings the host protocol depends on."""

from __future__ import annotations

import itertools
import struct

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
