"""Boot kits: per kernel release its vmlinuz and an initramfs (busybox-static, the kvm/kvm_amd
modules with their dependencies, the virtio/9p/ext4 modules for the root filesystem and the
shares, and an /init); and one root filesystem image with Python shared by every kernel.

Everything is cached under the rig's cache directory and rebuilt only when missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import lzma
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .archive import ArchiveError, Kernel, PrivateApt

# What the guest loads, in this order (each with its dependencies first): KVM itself, then
# what mounting the root disk and the 9p shares needs. Modules a kernel has built in are
# skipped (modprobe --show-depends says "builtin").
MODULES = ("kvm_amd", "virtio_pci", "virtio_blk", "9pnet_virtio", "9p", "crc32c_generic", "ext4")
BUSYBOX = "/bin/busybox"
# The root filesystem's Debian suite: its python3 must be the host's minor version (3.11),
# because the guest runs the host's venv (compiled wheels such as pydantic-core included).
ROOTFS_SUITE = "bookworm"
ROOTFS_PACKAGES = ("python3",)
ROOTFS_SIZE = "768M"


class KitError(Exception):
    """A kit could not be prepared (a tool missing or failing)."""


@dataclass(frozen=True)
class Kit:
    kernel: Kernel
    vmlinuz: Path
    initrd: Path
    seconds: float  # what preparing it took (0 when it was cached)
    bytes: int  # disk used by this kernel's directory


def _run(cmd: list[str], timeout: float = 900, cwd: Path | None = None) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except (OSError, subprocess.SubprocessError) as e:
        raise KitError(f"{cmd[0]}: {e}") from e
    if p.returncode != 0:
        raise KitError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return p.stdout


def disk_usage(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total


# ---- module dependency order


def parse_show_depends(text: str) -> list[str]:
    """`modprobe --show-depends` output → module files in load order (dependencies first);
    builtin modules are left out."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "insmod":
            out.append(parts[1])
    return out


def module_order(root: Path, abi: str, modules: Iterable[str] = MODULES) -> list[str]:
    """Module files (paths inside `root`) to insmod, in order, each once. KVM's modules must
    be found; the others may be built in, which 7.x packages do not say (they ship no
    modules.builtin), so one that is not found is left out: if it was not built in after all,
    the guest cannot mount its root and the boot reports that."""
    order: list[str] = []
    for name in modules:
        try:
            out = _run(["modprobe", "-d", str(root), "-S", abi, "--show-depends", name])
        except KitError:
            if name.startswith("kvm"):
                raise
            continue
        for path in parse_show_depends(out):
            if path not in order:
                order.append(path)
    return order


# ---- initramfs (cpio "newc", written here so that no cpio tool is needed)


def _cpio_entry(name: str, mode: int, data: bytes, ino: int) -> bytes:
    namez = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(namez), 0]
    head = b"070701" + b"".join(b"%08X" % f for f in fields)
    pad1 = b"\0" * (-(len(head) + len(namez)) % 4)
    pad2 = b"\0" * (-len(data) % 4)
    return head + namez + pad1 + data + pad2


def cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc archive of (path, mode, content) entries; a symlink's content is its target."""
    out = [_cpio_entry(name, mode, data, i + 1) for i, (name, mode, data) in enumerate(entries)]
    out.append(_cpio_entry("TRAILER!!!", 0, b"", 0))
    blob = b"".join(out)
    return blob + b"\0" * (-len(blob) % 512)


def busybox_links(applets: Iterable[str]) -> list[str]:
    """The applets to link to busybox: never `busybox` itself (a link named busybox pointing
    at busybox replaces the binary with a self-link and the kernel panics at /init)."""
    return sorted({a for a in applets if a and a != "busybox" and "/" not in a})


INIT = r"""#!/bin/busybox sh
# irqlab upstream rig: load KVM and the disk/share modules, mount the root filesystem and the
# shares, run the job, power off. Markers on the console (IRQLAB-…) are read by the host.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do
  insmod /modules/$m $(grep "^${m%.ko} " /modules/params | cut -d' ' -f2-) \
    || echo "IRQLAB-INSMOD-FAILED $m"
done
echo "IRQLAB-MODULES-LOADED"
arg() { tr ' ' '\n' < /proc/cmdline | grep "^irqlab\.$1=" | cut -d= -f2-; }
mkdir -p /newroot
if mount -t ext4 /dev/vda /newroot; then
  mount -t devtmpfs dev /newroot/dev
  mount -t proc proc /newroot/proc
  mount -t sysfs sysfs /newroot/sys
  mount -t tmpfs tmp /newroot/tmp
  for s in $(arg shares | tr ',' ' '); do
    tag=${s%%:*}; path=${s#*:}
    mkdir -p /newroot$path
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose $tag /newroot$path \
      || echo "IRQLAB-MOUNT-FAILED $tag"
  done
  echo "IRQLAB-RUN"
  chroot /newroot /bin/sh "$(arg run)"
  echo "IRQLAB-EXIT $?"
  sync
else
  echo "IRQLAB-NO-ROOT"
fi
poweroff -f
"""


def initramfs(modules: list[tuple[str, bytes]], busybox: bytes, applets: Iterable[str],
              params: dict[str, str] | None = None) -> bytes:
    """The initramfs: /init, busybox with its applet links, /modules/<file>.ko in load order
    (`modules` already decompressed) with /modules/order and /modules/params."""
    d, f, ln = stat.S_IFDIR | 0o755, stat.S_IFREG, stat.S_IFLNK | 0o777
    entries: list[tuple[str, int, bytes]] = [
        (p, d, b"") for p in ("bin", "dev", "proc", "sys", "modules", "newroot", "tmp")]
    entries.append(("init", f | 0o755, INIT.encode()))
    entries.append(("bin/busybox", f | 0o755, busybox))
    entries += [(f"bin/{a}", ln, b"busybox") for a in busybox_links(applets)]
    names = []
    for name, data in modules:
        entries.append((f"modules/{name}", f | 0o644, data))
        names.append(name)
    entries.append(("modules/order", f | 0o644, ("\n".join(names) + "\n").encode()))
    entries.append(("modules/params", f | 0o644, "".join(
        f"{k} {v}\n" for k, v in (params or {}).items()).encode()))
    return cpio_newc(entries)


def initramfs_stamp() -> str:
    """Names the initramfs by what goes into it besides the kernel's files (/init, the module
    list), so that a changed rig rebuilds cached kits."""
    return hashlib.sha256((INIT + ",".join(MODULES)).encode()).hexdigest()[:10]


def read_module(path: Path) -> tuple[str, bytes]:
    """(name.ko, contents) with .ko.xz decompressed (busybox insmod takes plain .ko)."""
    data = path.read_bytes()
    name = path.name
    if name.endswith(".xz"):
        data, name = lzma.decompress(data), name[:-3]
    elif name.endswith(".zst"):
        data = subprocess.run(["zstd", "-dc", str(path)], capture_output=True,
                              check=True).stdout
        name = name[:-4]
    return name, data


# ---- per-kernel kit


def _modules_dir(root: Path, abi: str) -> Path:
    for cand in (root / "lib" / "modules" / abi, root / "usr" / "lib" / "modules" / abi):
        if cand.is_dir():
            return cand
    raise KitError(f"no modules directory for {abi} in the extracted packages")


def prepare_kernel(apt: PrivateApt, kernel: Kernel, cache: Path) -> Kit:
    kdir = cache / "kernels" / kernel.abi
    vmlinuz, initrd = kdir / "vmlinuz", kdir / f"initrd-{initramfs_stamp()}.cpio"
    if vmlinuz.exists() and initrd.exists():
        return Kit(kernel, vmlinuz, initrd, 0.0, disk_usage(kdir))
    t0 = time.monotonic()
    debs = kdir / "debs"
    root = kdir / "root"
    shutil.rmtree(root, ignore_errors=True)
    if not list(debs.glob("*.deb")):
        try:
            apt.download(list(kernel.packages), debs)
        except ArchiveError as e:
            raise KitError(str(e)) from e
    for old in kdir.glob("initrd-*.cpio"):
        old.unlink()  # made by another version of the rig
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(root)])
    mdir = _modules_dir(root, kernel.abi)
    if not (root / "lib" / "modules" / kernel.abi).exists():
        # 7.x packages install under /usr/lib/modules; depmod/modprobe -d look in /lib.
        (root / "lib" / "modules").mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(mdir, root / "lib" / "modules"),
                   root / "lib" / "modules" / kernel.abi)
    _run(["depmod", "-b", str(root), kernel.abi])
    images = sorted((root / "boot").glob("vmlinuz-*")) + sorted(mdir.glob("vmlinuz"))
    if not images:
        raise KitError(f"no vmlinuz in the packages of {kernel.abi}")
    order = module_order(root, kernel.abi)
    mods = [read_module(Path(p) if Path(p).is_absolute() and Path(p).exists()
                        else root / p.lstrip("/")) for p in order]
    applets = _run([BUSYBOX, "--list"]).split()
    blob = initramfs(mods, Path(BUSYBOX).read_bytes(), applets)
    shutil.copyfile(images[0], kdir / "vmlinuz.tmp")
    (kdir / "initrd.tmp").write_bytes(blob)
    (kdir / "modules.txt").write_text("\n".join(n for n, _ in mods) + "\n")
    shutil.rmtree(root)  # the kit keeps what it boots, and the .debs (re-extractable)
    os.replace(kdir / "initrd.tmp", initrd)
    os.replace(kdir / "vmlinuz.tmp", vmlinuz)
    return Kit(kernel, vmlinuz, initrd, time.monotonic() - t0, disk_usage(kdir))


# ---- the root filesystem


def prepare_rootfs(apt: PrivateApt, cache: Path) -> tuple[Path, float]:
    """The Python root filesystem (debootstrap minbase + python3, packed into an ext4 image
    with mkfs.ext4 -d; booted with snapshot=on so it is never modified): (path, seconds)."""
    img = cache / f"rootfs-{ROOTFS_SUITE}.img"
    if img.exists():
        return img, 0.0
    t0 = time.monotonic()
    for tool in ("debootstrap", "mkfs.ext4"):
        if shutil.which(tool) is None:
            raise KitError(f"{tool} is not installed (Debian package "
                           f"{'debootstrap' if tool == 'debootstrap' else 'e2fsprogs'})")
    if apt.bases is None:
        apt.setup()
    assert apt.bases is not None
    tree = cache / f"rootfs-{ROOTFS_SUITE}"
    shutil.rmtree(tree, ignore_errors=True)
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(ROOTFS_PACKAGES)}",
          ROOTFS_SUITE, str(tree), apt.bases.main], timeout=1800)
    shutil.rmtree(tree / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    tmp = cache / "rootfs.img.tmp"
    tmp.unlink(missing_ok=True)
    _run(["mkfs.ext4", "-q", "-F", "-L", "irqlab-rootfs", "-d", str(tree), str(tmp),
          ROOTFS_SIZE])
    shutil.rmtree(tree)
    os.replace(tmp, img)
    return img, time.monotonic() - t0
