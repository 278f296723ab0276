"""Debian kernel packages through a private apt configuration.

The rig never touches the system's apt sources: it writes its own sources list, state, cache
and list directories under the cache directory and passes them with `-o Dir::…` options. The
archive's base URIs are not written into the project: they are read at run time from the
system's own apt configuration (`apt-get indextargets`), so the rig uses whatever mirror the
machine is configured for.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# Suites the rig lists: (suite, which base URI). "security" suites live under their own base.
SUITES: tuple[tuple[str, str], ...] = (
    ("bullseye", "main"), ("bullseye-backports", "main"), ("bullseye-security", "security"),
    ("bookworm", "main"), ("bookworm-backports", "main"), ("bookworm-security", "security"),
    ("trixie", "main"), ("trixie-backports", "main"), ("trixie-security", "security"),
    ("sid", "main"),
)
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# A kernel image package of the amd64 flavour: linux-image-<ABI>-amd64 (not -unsigned, -dbg).
IMAGE_RE = re.compile(r"^linux-image-(\d+\.\d+[^ ]*)-amd64$")


class ArchiveError(Exception):
    """No package archive is configured or reachable, or apt failed."""


@dataclass(frozen=True)
class Bases:
    """The archive base URIs found in the system's apt configuration."""

    main: str
    security: str | None


def bases_from_indextargets(text: str) -> Bases:
    """The base URIs from `apt-get indextargets --format '$(URI)'` output: each line is an
    index URI `<base>/dists/<suite>/…`; a suite ending in -security names the security base."""
    main: str | None = None
    security: str | None = None
    for line in text.splitlines():
        m = re.match(r"^(\S+?)/dists/([^/]+)/", line.strip())
        if not m:
            continue
        base, suite = m.group(1), m.group(2)
        if suite.endswith("-security") or suite.endswith("/updates"):
            security = security or base
        else:
            main = main or base
    if main is None:
        raise ArchiveError("the system's apt configuration lists no Debian archive "
                           "(apt-get indextargets found no dists/ URI)")
    return Bases(main, security)


def system_bases() -> Bases:
    try:
        out = subprocess.run(["apt-get", "indextargets", "--format", "$(URI)"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise ArchiveError(f"cannot read the system's apt configuration: {e}") from e
    return bases_from_indextargets(out)


def sources_list(bases: Bases, suites: Iterable[tuple[str, str]] = SUITES,
                 keyring: str = KEYRING) -> str:
    """The private one-line-style sources list (main component, amd64)."""
    lines = []
    for suite, which in suites:
        base = bases.main if which == "main" else bases.security
        if base is None:
            continue
        lines.append(f"deb [arch=amd64 signed-by={keyring}] {base} {suite} main")
    return "\n".join(lines) + "\n"


def missing_suites(apt_error: str) -> list[str]:
    """Suites apt-get update reports as having no Release file."""
    return re.findall(r"The repository '\S+ (\S+) Release' does not have a Release file",
                      apt_error)


class PrivateApt:
    """apt-get / apt-cache with their own sources list and directories under `root`."""

    def __init__(self, root: Path, bases: Bases | None = None) -> None:
        self.root = root
        self.bases = bases

    def options(self) -> list[str]:
        r = self.root
        return [
            "-o", f"Dir::Etc::sourcelist={r / 'sources.list'}",
            "-o", f"Dir::Etc::sourceparts={r / 'sources.list.d'}",
            "-o", f"Dir::State={r / 'state'}",
            "-o", f"Dir::State::status={r / 'state' / 'status'}",
            "-o", f"Dir::Cache={r / 'cache'}",
            "-o", "Dir::Etc::preferencesparts=/nonexistent",
            "-o", "APT::Architecture=amd64",
            "-o", "APT::Architectures=amd64",
            "-o", "Acquire::Languages=none",
            "-o", "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false",
            "-o", "Acquire::Retries=3",
            "-o", "Debug::NoLocking=1",
            "-o", "APT::Sandbox::User=root",
        ]

    def setup(self, suites: Iterable[tuple[str, str]] = SUITES) -> None:
        """Write the private configuration (idempotent)."""
        bases = self.bases or system_bases()
        self.bases = bases
        for d in ("sources.list.d", "state/lists/partial", "cache/archives/partial"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        status = self.root / "state" / "status"
        if not status.exists():
            status.write_text("")
        (self.root / "sources.list").write_text(sources_list(bases, suites))

    def run(self, tool: str, args: list[str], cwd: Path | None = None,
            timeout: float = 900) -> str:
        try:
            proc = subprocess.run([tool, *self.options(), *args], capture_output=True,
                                  text=True, timeout=timeout, cwd=cwd)
        except (OSError, subprocess.SubprocessError) as e:
            raise ArchiveError(f"{tool} {' '.join(args)}: {e}") from e
        if proc.returncode != 0:
            raise ArchiveError(f"{tool} {' '.join(args)} failed ({proc.returncode}): "
                               f"{proc.stderr.strip()[-2000:]}")
        return proc.stdout

    def update(self) -> list[str]:
        """apt-get update over SUITES; a suite the archive no longer has (bullseye-backports
        moved off the main archive) is dropped and the update repeated. The suites kept."""
        suites = list(SUITES)
        for _ in range(len(SUITES)):
            self.setup(suites)
            try:
                self.run("apt-get", ["-q", "update"])
                return [s for s, _ in suites]
            except ArchiveError as e:
                gone = set(missing_suites(str(e)))
                if not gone & {s for s, _ in suites}:
                    raise
                suites = [(s, w) for s, w in suites if s not in gone]
        raise ArchiveError("apt-get update kept failing")

    def image_packages(self) -> list[str]:
        out = self.run("apt-cache", ["--names-only", "search", r"^linux-image-[0-9].*-amd64$"])
        return sorted({line.split(" ", 1)[0] for line in out.splitlines()
                       if IMAGE_RE.match(line.split(" ", 1)[0])})

    def show(self, packages: list[str]) -> str:
        return self.run("apt-cache", ["show", "--no-all-versions", *packages])

    def download(self, packages: list[str], dest: Path) -> list[Path]:
        dest.mkdir(parents=True, exist_ok=True)
        self.run("apt-get", ["-q", "download", *packages], cwd=dest)
        return sorted(dest.glob("*.deb"))


@dataclass(frozen=True)
class Kernel:
    """One kernel release the archive offers."""

    abi: str  # e.g. 6.1.0-41-amd64 (the modules directory's name)
    version: str  # the package's upstream version, e.g. 6.1.158
    package_version: str  # the Debian version, e.g. 6.1.158-1
    packages: tuple[str, ...]  # what to download: the image, or 7.x's binary + modules

    @property
    def series(self) -> str:
        m = re.match(r"(\d+)\.(\d+)", self.version)
        return f"{m.group(1)}.{m.group(2)}" if m else self.version

    def key(self) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", self.version)[:3])


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """apt-cache show output → one dict per package stanza (continuation lines folded)."""
    out: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if cur:
                out.append(cur)
            cur, last = {}, ""
        elif line[0] in " \t" and last:
            cur[last] += "\n" + line.strip()
        elif ":" in line:
            k, v = line.split(":", 1)
            cur[k], last = v.strip(), k
    if cur:
        out.append(cur)
    return out


def kernels_from_stanzas(stanzas: list[dict[str, str]]) -> list[Kernel]:
    """Kernels from linux-image-<ABI>-amd64 stanzas. Since 7.x the image package is a stub
    depending on linux-binary-<ABI> (vmlinuz) and linux-modules-<ABI> (modules); those are
    downloaded with it. Signed and unsigned images of one ABI give one kernel."""
    found: dict[str, Kernel] = {}
    for s in stanzas:
        m = IMAGE_RE.match(s.get("Package", ""))
        if not m:
            continue
        if m.group(1).endswith(("-cloud", "-rt")):
            continue  # other flavours of the same release: the plain one is measured
        abi = m.group(1) + "-amd64"
        pkgver = s.get("Version", "")
        ver = re.match(r"(\d+\.\d+(?:\.\d+)?)", pkgver)
        if not ver:
            continue
        deps = [d.split("(")[0].strip() for d in re.split(r"[,|]", s.get("Depends", ""))]
        extra = tuple(d for d in deps if re.match(rf"^linux-(binary|modules)-{re.escape(abi)}$", d))
        k = Kernel(abi, ver.group(1), pkgver, (s["Package"], *extra))
        if abi not in found or k.key() > found[abi].key():
            found[abi] = k
    return sorted(found.values(), key=lambda k: (k.key(), k.abi))


def choose(kernels: list[Kernel], wanted: list[str]) -> list[Kernel]:
    """`wanted` items: a series (5.10: its newest release), an exact version (6.1.158) or ABI,
    or `latest` (the newest of all). Raises ArchiveError naming what is not offered."""
    out: list[Kernel] = []
    for w in wanted:
        if w == "latest":
            pick = kernels[-1:] if kernels else []
        else:
            pick = [k for k in kernels if w in (k.abi, k.version) or k.series == w]
        if not pick:
            offered = sorted({k.series for k in kernels},
                             key=lambda s: tuple(map(int, s.split("."))))
            raise ArchiveError(f"kernel {w!r} is not in the archive (series offered: "
                               f"{', '.join(offered)})")
        k = max(pick, key=lambda k: (k.key(), k.abi))
        if k not in out:
            out.append(k)
    return out
