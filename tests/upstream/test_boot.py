"""Reading a guest's serial log and building QEMU's command line (no QEMU run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.upstream.boot import Boot, parse_serial, qemu_command

OK_LOG = """\
[    1.234] random: crng init done
IRQLAB-MODULES-LOADED
IRQLAB-RUN
IRQLAB-EXIT 0
[   30.1] reboot: Power down
"""

PANIC_LOG = """\
IRQLAB-MODULES-LOADED
IRQLAB-RUN
[  172.5] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI
[  172.6] RIP: 0010:__schedule+0x1/0x2
[  172.7] Kernel panic - not syncing: Fatal exception
"""


def test_a_clean_run() -> None:
    code, panic, markers = parse_serial(OK_LOG)
    assert (code, panic) == (0, None)
    assert markers == ["IRQLAB-MODULES-LOADED", "IRQLAB-RUN", "IRQLAB-EXIT 0"]
    assert Boot(code, 30.0, 0, panic, markers).rig_failure is None


def test_a_panic_is_a_rig_failure() -> None:
    code, panic, markers = parse_serial(PANIC_LOG)
    assert code is None and panic is not None and "Oops: int3" in panic
    assert Boot(code, 172.0, 0, panic, markers).rig_failure.startswith("guest kernel failure")


def test_other_rig_failures() -> None:
    assert Boot(None, 10, None, None, []).rig_failure == "timed out"
    assert Boot(None, 10, 0, None, ["IRQLAB-NO-ROOT"]).rig_failure == (
        "the root filesystem did not mount")
    assert "did not finish" in (Boot(None, 10, 0, None, ["IRQLAB-RUN"]).rig_failure or "")
    # A job that failed is not a rig failure: its result says what went wrong.
    assert Boot(1, 10, 0, None, ["IRQLAB-EXIT 1"]).rig_failure is None


def test_qemu_command(tmp_path: Path) -> None:
    args = qemu_command(Path("/k/vmlinuz"), Path("/k/initrd"), Path("/r/rootfs.img"),
                        [("s0", Path("/src")), ("s1", tmp_path)], tmp_path / "serial.log",
                        tmp_path / "run.sh", writable=("s1",))
    joined = " ".join(args)
    assert args[0] == "qemu-system-x86_64"
    assert "-accel tcg,thread=single -cpu EPYC -smp 1" in joined
    assert "file=/r/rootfs.img,if=virtio,format=raw,snapshot=on" in joined
    assert "local,path=/src,mount_tag=s0,security_model=none,id=s0,readonly=on" in joined
    assert args[-1] == f"local,path={tmp_path},mount_tag=s1,security_model=none,id=s1"
    append = args[args.index("-append") + 1]
    assert "panic=-1" in append and f"irqlab.shares=s0:/src,s1:{tmp_path}" in append
    assert f"irqlab.run={tmp_path / 'run.sh'}" in append
    assert "-no-reboot" in args and "-enable-kvm" not in args


def test_paths_with_white_space_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="white space"):
        qemu_command(Path("/k"), Path("/i"), Path("/r"), [("s0", Path("/a b"))],
                     tmp_path / "s", tmp_path / "r.sh")
