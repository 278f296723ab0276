"""Boot kit assembly without QEMU: the initramfs archive, busybox links, module order."""

from __future__ import annotations

import lzma
import stat
from pathlib import Path

from app.upstream.kit import (
    INIT,
    busybox_links,
    cpio_newc,
    initramfs,
    initramfs_stamp,
    parse_show_depends,
    read_module,
)


def read_newc(blob: bytes) -> dict[str, tuple[int, bytes]]:
    """An independent reader of the newc format: {name: (mode, data)}."""
    out: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while True:
        assert blob[pos:pos + 6] == b"070701", pos
        fields = [int(blob[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = blob[name_start:name_start + namesize - 1].decode()
        data_start = (name_start + namesize + 3) & ~3
        data = blob[data_start:data_start + size]
        pos = (data_start + size + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, data)


def test_cpio_round_trip() -> None:
    blob = cpio_newc([("d", stat.S_IFDIR | 0o755, b""), ("d/f", stat.S_IFREG | 0o644, b"abc"),
                      ("l", stat.S_IFLNK | 0o777, b"d/f")])
    assert len(blob) % 512 == 0
    got = read_newc(blob)
    assert got["d/f"] == (stat.S_IFREG | 0o644, b"abc")
    assert got["l"] == (stat.S_IFLNK | 0o777, b"d/f")
    assert stat.S_ISDIR(got["d"][0])


def test_busybox_is_never_linked_to_itself() -> None:
    assert busybox_links(["sh", "busybox", "insmod", "sh", ""]) == ["insmod", "sh"]


def test_initramfs_holds_init_busybox_and_modules_in_order() -> None:
    blob = initramfs([("kvm.ko", b"K"), ("kvm-amd.ko", b"A")], b"\x7fELFbusybox",
                     ["sh", "mount", "busybox", "insmod"], {"kvm_amd": "nested=0"})
    files = read_newc(blob)
    assert files["init"][1].decode() == INIT and files["init"][0] & 0o111
    assert files["bin/busybox"][1] == b"\x7fELFbusybox"
    assert stat.S_ISLNK(files["bin/sh"][0]) and files["bin/sh"][1] == b"busybox"
    assert "bin/busybox" in files and stat.S_ISREG(files["bin/busybox"][0])
    assert files["modules/order"][1] == b"kvm.ko\nkvm-amd.ko\n"
    assert files["modules/params"][1] == b"kvm_amd nested=0\n"
    assert files["modules/kvm-amd.ko"][1] == b"A"


def test_init_loads_modules_mounts_and_powers_off() -> None:
    for needle in ("insmod /modules/$m", "mount -t ext4 /dev/vda /newroot",
                   "trans=virtio", "IRQLAB-EXIT $?", "poweroff -f", "mount -t devtmpfs"):
        assert needle in INIT
    assert len(initramfs_stamp()) == 10


def test_show_depends_order_skips_builtins() -> None:
    out = ("insmod /lib/modules/6.1.0-57-amd64/kernel/virt/lib/irqbypass.ko \n"
           "insmod /lib/modules/6.1.0-57-amd64/kernel/arch/x86/kvm/kvm.ko \n"
           "builtin virtio_pci\n"
           "insmod /lib/modules/6.1.0-57-amd64/kernel/arch/x86/kvm/kvm-amd.ko nested=1\n")
    assert [p.rsplit("/", 1)[1] for p in parse_show_depends(out)] == [
        "irqbypass.ko", "kvm.ko", "kvm-amd.ko"]


def test_compressed_modules_are_decompressed(tmp_path: Path) -> None:
    p = tmp_path / "kvm.ko.xz"
    p.write_bytes(lzma.compress(b"\x7fELF module", format=lzma.FORMAT_XZ))
    assert read_module(p) == ("kvm.ko", b"\x7fELF module")
    plain = tmp_path / "ccp.ko"
    plain.write_bytes(b"x")
    assert read_module(plain) == ("ccp.ko", b"x")
