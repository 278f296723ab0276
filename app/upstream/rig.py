"""`irqlab upstream`: discover the archive's kernels, prepare their kits (cached), boot each one
under QEMU TCG with its own KVM, run the job inside (app.upstream.guest) and collect the JSON.

One QEMU runs at a time unless `parallel` says otherwise (TCG is CPU-bound: at most one per
host core). A boot that panics, oopses or never finishes is a rig failure: it is retried once
(`retries`), and every attempt is reported.
"""

from __future__ import annotations

import json
import shutil
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import app

from .archive import ArchiveError, Kernel, PrivateApt, choose, kernels_from_stanzas, parse_stanzas
from .boot import Boot, boot, qemu_available
from .kit import KitError, disk_usage, prepare_kernel, prepare_rootfs

DEFAULT_CACHE = "~/.cache/irqlab/upstream"
DEFAULT_KERNELS = ("5.10", "6.1", "6.12", "latest")


def cache_dir(value: str | None = None) -> Path:
    """The rig's cache: `value`, else the setting IRQLAB_UPSTREAM_CACHE (default
    ~/.cache/irqlab/upstream)."""
    from app.settings import Settings

    raw = value or Settings().upstream_cache or DEFAULT_CACHE
    return Path(raw).expanduser().resolve()


@dataclass
class Job:
    library: bool | list[str] = True
    irqchips: tuple[str, ...] = ("kernel", "split")
    random: int = 0
    probe: bool = True
    profile: str | None = None  # None: the preset of the kernel's release
    # Every explorer counterexample (app.upstream.counterexamples), replayed in each guest.
    counterexamples: bool = False
    explorations: list[str] | None = None  # None: the whole exploration library
    explore_profiles: list[str] | None = None  # None: every preset
    # What collect() found on the host before the boots (set by Rig.run).
    found: list[dict[str, Any]] = field(default_factory=list)

    def for_kernel(self, kernel: Kernel, out: Path) -> dict[str, Any]:
        return {"out": str(out), "kernel": kernel.version, "abi": kernel.abi,
                "profile": self.profile, "library": self.library,
                "irqchips": list(self.irqchips), "random": self.random, "probe": self.probe,
                "counterexamples": self.found}


@dataclass
class KernelRun:
    kernel: Kernel
    kit_seconds: float = 0.0
    kit_bytes: int = 0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    failure: str | None = None


def project_shares(out: Path) -> list[tuple[str, Path]]:
    """The 9p shares: the project (its source, and the venv when it lives inside), the venv
    when it lives elsewhere, and the output directory; each is mounted at its own path."""
    root = Path(app.__file__).resolve().parent.parent
    prefix = Path(sys.prefix).resolve()
    shares = [root]
    if not prefix.is_relative_to(root):
        shares.append(prefix)
    shares.append(out)
    return [(f"s{i}", p) for i, p in enumerate(shares)]


def guest_script(out: Path, job: Path) -> str:
    """The guest's job: the root filesystem's python3 (Debian's, the host's minor version)
    with the project and the host's site-packages on its path (the host's interpreter may be
    one the guest lacks, so the venv's own python is not used)."""
    root = Path(app.__file__).resolve().parent.parent
    site = sysconfig.get_paths()["purelib"]
    return (f"cd {root}\n"
            f"export PYTHONDONTWRITEBYTECODE=1 HOME=/tmp PYTHONPATH={root}:{site}\n"
            f"python3 -m app.upstream.guest {job} > {out}/guest.log 2>&1\n")


class Rig:
    def __init__(self, cache: Path, log: Any = None) -> None:
        self.cache = cache
        self.apt = PrivateApt(cache / "apt")
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def kernels(self, refresh: bool = True) -> list[Kernel]:
        """What the archive offers now (apt-get update through the private configuration;
        with refresh=False the lists fetched last time, if any)."""
        lists = self.cache / "apt" / "state" / "lists"
        if refresh or not any(lists.glob("*Packages*")):
            t = time.monotonic()
            suites = self.apt.update()
            self.log(f"archive: {len(suites)} suites ({', '.join(suites)}) in "
                     f"{time.monotonic() - t:.0f} s")
        else:
            self.apt.setup()
        return kernels_from_stanzas(parse_stanzas(self.apt.show(self.apt.image_packages())))

    def run(self, wanted: list[str], job: Job, timeout: float, retries: int = 1,
            parallel: int = 1, refresh: bool = True, smp: int = 1) -> dict[str, Any]:
        t0 = time.monotonic()
        ok, why = qemu_available()
        if not ok:
            raise KitError(why)
        kernels = choose(self.kernels(refresh), wanted)
        rootfs, rootfs_s = prepare_rootfs(self.apt, self.cache)
        self.log(f"rootfs {rootfs} ({'cached' if not rootfs_s else f'{rootfs_s:.0f} s'})")
        explored: dict[str, Any] | None = None
        if job.counterexamples:
            from .counterexamples import collect

            explored = collect(job.explore_profiles, job.explorations)
            job.found = explored["entries"]
            self.log(f"explorer: {len(explored['entries'])} distinct counterexamples in "
                     f"{explored['seconds']:.0f} s")
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        runs_dir = self.cache / "runs" / stamp
        runs = [KernelRun(k) for k in kernels]
        for r in runs:
            kit = prepare_kernel(self.apt, r.kernel, self.cache)
            r.kit_seconds, r.kit_bytes = kit.seconds, kit.bytes
            self.log(f"kit {r.kernel.abi} ({r.kernel.version}): "
                     f"{'cached' if not kit.seconds else f'{kit.seconds:.0f} s'}, "
                     f"{kit.bytes / 2**20:.0f} MiB")

        def one(r: KernelRun) -> None:
            kdir = self.cache / "kernels" / r.kernel.abi
            vmlinuz = kdir / "vmlinuz"
            (initrd,) = kdir.glob("initrd-*.cpio")
            for attempt in range(retries + 1):
                out = runs_dir / f"{r.kernel.abi}-{attempt}"
                out.mkdir(parents=True, exist_ok=True)
                result_path = out / "result.json"
                (out / "job.json").write_text(json.dumps(job.for_kernel(r.kernel, result_path)))
                (out / "run.sh").write_text(guest_script(out, out / "job.json"))
                shares = project_shares(out)
                # Only the output share is writable: the guest runs the checkout, never edits it.
                b: Boot = boot(vmlinuz, initrd, rootfs, shares, out / "serial.log",
                               out / "run.sh", timeout, smp=smp, writable=(shares[-1][0],))
                result = (json.loads(result_path.read_text()) if result_path.exists()
                          else None)
                attempt_rec = {"attempt": attempt, "seconds": round(b.seconds, 1),
                               "exit_code": b.exit_code, "qemu_status": b.qemu_status,
                               "rig_failure": b.rig_failure, "markers": b.markers,
                               "dir": str(out)}
                r.attempts.append(attempt_rec)
                self.log(f"boot {r.kernel.abi} attempt {attempt}: {b.seconds:.0f} s, "
                         f"{b.rig_failure or f'exit {b.exit_code}'}")
                if b.rig_failure is None and result is not None:
                    r.result, r.failure = result, None
                    return
                r.result = result  # partial, if any
                r.failure = b.rig_failure or "no result.json"

        if parallel > 1:
            with ThreadPoolExecutor(parallel) as pool:
                list(pool.map(one, runs))
        else:
            for r in runs:
                one(r)
        report = {
            "cache": str(self.cache), "runs_dir": str(runs_dir),
            "seconds": round(time.monotonic() - t0, 1),
            "rootfs_seconds": round(rootfs_s, 1),
            "disk_bytes": disk_usage(self.cache),
            "explorer": explored,
            "kernels": [{**asdict(r.kernel), "kit_seconds": round(r.kit_seconds, 1),
                         "kit_bytes": r.kit_bytes, "attempts": r.attempts,
                         "failure": r.failure, "result": r.result} for r in runs],
        }
        runs_dir.mkdir(parents=True, exist_ok=True)
        (runs_dir / "report.json").write_text(json.dumps(report, indent=1, default=str))
        return report


def clean_runs(cache: Path, keep: int = 5) -> None:
    """Drop all but the newest `keep` run directories."""
    runs = sorted((cache / "runs").glob("*")) if (cache / "runs").exists() else []
    for d in runs[:-keep] if keep else runs:
        shutil.rmtree(d, ignore_errors=True)


__all__ = ["ArchiveError", "Job", "KitError", "Rig", "cache_dir", "clean_runs", "kit_cached"]


def kit_cached(cache: Path, wanted: list[str]) -> tuple[bool, str]:
    """Whether `wanted` kernels' kits and the root filesystem are all in the cache (from the
    package lists fetched last time; no network). (True, "") or (False, what is missing)."""
    from .kit import ROOTFS_SUITE, initramfs_stamp

    if not any((cache / "apt" / "state" / "lists").glob("*Packages*")):
        return False, f"no package lists in {cache}"
    if not (cache / f"rootfs-{ROOTFS_SUITE}.img").exists():
        return False, "no root filesystem image"
    try:
        rig = Rig(cache, log=lambda _msg: None)
        kernels = choose(rig.kernels(refresh=False), wanted)
    except ArchiveError as e:
        return False, str(e)
    for k in kernels:
        kdir = cache / "kernels" / k.abi
        if not (kdir / "vmlinuz").exists() or not (
                kdir / f"initrd-{initramfs_stamp()}.cpio").exists():
            return False, f"no kit for {k.abi}"
    return True, ""
