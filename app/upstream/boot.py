"""Booting a kit under QEMU TCG and reading what happened from its serial log.

The guest's /init (kit.INIT) prints markers on the console; the job's results come back as
JSON through a 9p share. A kernel panic, an oops or a BUG in the serial log is a rig failure,
distinct from any difference between the model and the kernel: the run is retried (by
rig.py), and both attempts are reported.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

QEMU = "qemu-system-x86_64"
# Single-threaded TCG and one guest CPU: a 6.12 guest running a long Python workload under
# multi-threaded TCG with -smp 2 once oopsed in __schedule (text patching racing between TCG
# threads, not KVM); irqlab's KvmVm runs its vCPUs one at a time, so one guest CPU is enough.
DEFAULT_SMP = 1
DEFAULT_MEMORY = "2G"
CMDLINE = "console=ttyS0 quiet loglevel=4 panic=-1 oops=panic nokaslr"
# 9p mount tags are at most 31 bytes; shares are tagged s0, s1, ...
PANIC_RE = re.compile(r"Kernel panic|Oops:|BUG: |general protection fault|"
                      r"kernel BUG at|watchdog: BUG: soft lockup|rcu_sched self-detected stall")


@dataclass
class Boot:
    """What one boot did."""

    exit_code: int | None  # the job's exit status (IRQLAB-EXIT), None if it never finished
    seconds: float
    qemu_status: int | None  # None: killed at the timeout
    panic: str | None  # the first panic/oops line of the serial log
    markers: list[str] = field(default_factory=list)
    log: Path | None = None

    @property
    def rig_failure(self) -> str | None:
        """Why this boot is a rig failure (no result can be trusted), or None."""
        if self.panic:
            return f"guest kernel failure: {self.panic}"
        if self.qemu_status is None:
            return "timed out"
        if "IRQLAB-NO-ROOT" in self.markers:
            return "the root filesystem did not mount"
        if self.exit_code is None:
            return f"the job did not finish (QEMU exit {self.qemu_status})"
        return None


def parse_serial(text: str) -> tuple[int | None, str | None, list[str]]:
    """(job exit status, first panic line, IRQLAB-* markers) from a serial log."""
    exit_code = None
    panic = None
    markers = []
    for line in text.splitlines():
        line = line.strip()
        m = re.search(r"(IRQLAB-[A-Z-]+)(?: (\S+))?", line)
        if m:
            markers.append(m.group(1) + (f" {m.group(2)}" if m.group(2) else ""))
            if m.group(1) == "IRQLAB-EXIT" and m.group(2) and m.group(2).lstrip("-").isdigit():
                exit_code = int(m.group(2))
        if panic is None and PANIC_RE.search(line):
            panic = line[-200:]
    return exit_code, panic, markers


def qemu_command(vmlinuz: Path, initrd: Path, rootfs: Path, shares: list[tuple[str, Path]],
                 serial: Path, script: Path, smp: int = DEFAULT_SMP, memory: str = DEFAULT_MEMORY,
                 cpu: str = "EPYC", single_thread: bool = True,
                 writable: tuple[str, ...] = ()) -> list[str]:
    """The QEMU command line: software emulation of an AMD CPU (SVM and nested paging), the
    root filesystem read-only to the host (snapshot=on), each share as 9p at the same path
    inside the guest (the guest runs the host's venv, whose paths are absolute), read-only
    unless its tag is in `writable`."""
    share_arg = ",".join(f"{tag}:{path}" for tag, path in shares)
    if any(c.isspace() for c in share_arg + str(script)):
        raise ValueError("share and script paths must not contain white space (they go on "
                         "the kernel command line)")
    append = f"{CMDLINE} irqlab.shares={share_arg} irqlab.run={script}"
    args = [
        QEMU, "-accel", "tcg,thread=single" if single_thread else "tcg", "-cpu", cpu,
        "-smp", str(smp), "-m", memory, "-nodefaults", "-no-reboot", "-net", "none",
        "-display", "none", "-monitor", "none", "-serial", f"file:{serial}",
        "-kernel", str(vmlinuz), "-initrd", str(initrd), "-append", append,
        "-drive", f"file={rootfs},if=virtio,format=raw,snapshot=on",
    ]
    for tag, path in shares:
        ro = "" if tag in writable else ",readonly=on"
        args += ["-virtfs",
                 f"local,path={path},mount_tag={tag},security_model=none,id={tag}{ro}"]
    return args


def qemu_available() -> tuple[bool, str]:
    if shutil.which(QEMU) is None:
        return False, f"{QEMU} is not installed (Debian package qemu-system-x86)"
    return True, QEMU


def boot(vmlinuz: Path, initrd: Path, rootfs: Path, shares: list[tuple[str, Path]],
         serial: Path, script: Path, timeout: float, smp: int = DEFAULT_SMP,
         single_thread: bool = True, writable: tuple[str, ...] = ()) -> Boot:
    args = qemu_command(vmlinuz, initrd, rootfs, shares, serial, script, smp=smp,
                        single_thread=single_thread, writable=writable)
    serial.unlink(missing_ok=True)
    t0 = time.monotonic()
    status: int | None
    try:
        status = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True,
                                timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        status = None
    seconds = time.monotonic() - t0
    text = serial.read_text(errors="replace") if serial.exists() else ""
    exit_code, panic, markers = parse_serial(text)
    return Boot(exit_code, seconds, status, panic, markers, serial)
