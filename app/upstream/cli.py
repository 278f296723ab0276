"""The `irqlab upstream` and `irqlab probe` subcommands (registered by app.cli)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .report import render_probe, render_report, unexplained

EXIT_OK, EXIT_DIFFER, EXIT_ERROR = 0, 1, 2


def add_parsers(sub: Any) -> None:
    up = sub.add_parser(
        "upstream", help="run irqlab's KVM backend on stock Debian kernels under QEMU TCG",
        epilog="exit status: 0 every kernel ran and agreed (library variants that pin another "
               "kernel's flag or model APICv may differ; counterexamples that need APICv do "
               "not run), 1 another difference, 2 a rig "
               "failure (no archive, a tool missing, a guest panic after retries)",
        description="Fetch Debian kernel packages (private apt configuration; the archive is "
                    "the one the system's apt uses), prepare a boot kit per kernel (cached "
                    "under --cache / IRQLAB_UPSTREAM_CACHE), boot each under qemu-system-x86_64 "
                    "-accel tcg -cpu EPYC with its own kvm + kvm_amd, run the library diff, "
                    "random sequences and the probe inside, and print kernel x scenario.")
    up.add_argument("--kernels", default="5.10,6.1,6.12,latest",
                    help="comma-separated series (6.1: its newest release), versions, ABIs "
                         "or 'latest' (default %(default)s)")
    up.add_argument("--list", action="store_true", help="list the archive's kernels and exit")
    up.add_argument("--cache", help="cache directory (IRQLAB_UPSTREAM_CACHE, default "
                                    "~/.cache/irqlab/upstream)")
    up.add_argument("--scenarios", default="all",
                    help="library scenarios to diff: 'all', 'none' or comma-separated names")
    up.add_argument("--random", type=int, default=300, metavar="N",
                    help="random operation sequences per irqchip mode (default %(default)s)")
    up.add_argument("--irqchip", choices=["kernel", "split", "both"], default="both")
    up.add_argument("--no-probe", action="store_true", help="skip irqlab probe in the guest")
    up.add_argument("--no-counterexamples", action="store_true",
                    help="skip replaying every explorer counterexample (every library "
                         "exploration under every preset, explored on the host first)")
    up.add_argument("--profile", help="engine preset for every kernel (default: the preset of "
                                      "each kernel's release)")
    up.add_argument("--timeout", type=float, default=3600,
                    help="seconds one boot may take (default %(default)s)")
    up.add_argument("--retries", type=int, default=1,
                    help="boots retried after a guest panic or timeout (default %(default)s)")
    up.add_argument("--parallel", type=int, default=1,
                    help="QEMUs at once (at most one per host core; default %(default)s)")
    up.add_argument("--smp", type=int, default=1, help="guest CPUs (default %(default)s)")
    up.add_argument("--no-refresh", action="store_true",
                    help="use the package lists fetched last time (no apt-get update)")
    up.add_argument("--json", action="store_true", help="print the report as JSON")
    pr = sub.add_parser(
        "probe", help="measure which behaviour flags this machine's KVM has",
        epilog="exit status: 0 the release's preset matches, 1 it needs overrides, 2 no "
               "usable KVM",
        description="Run one discriminating library scenario per observable behaviour flag on "
                    "/dev/kvm, with the flag on and off in the model, and report which the "
                    "kernel matches, the presets that agree with every measured flag and the "
                    "overrides the release's own preset needs.")
    pr.add_argument("--profile", help="preset for the other flags (default: the host's)")
    pr.add_argument("--json", action="store_true", help="print the raw JSON")


def run_probe_cmd(args: argparse.Namespace) -> int:
    from app.kvm.detect import kvm_available
    from app.kvm.probe import probe

    ok, why = kvm_available()
    if not ok:
        print(f"irqlab probe: no usable KVM: {why}", file=sys.stderr)
        return EXIT_ERROR
    result = probe(base_profile=args.profile)
    print(json.dumps(result, indent=1) if args.json else render_probe(result))
    return EXIT_OK if not result["release_preset_overrides"] else EXIT_DIFFER


def run_upstream_cmd(args: argparse.Namespace) -> int:
    from .archive import ArchiveError
    from .kit import KitError
    from .rig import Job, Rig, cache_dir

    rig = Rig(cache_dir(args.cache))
    try:
        if args.list:
            for k in rig.kernels(refresh=not args.no_refresh):
                print(f"{k.series:6} {k.version:10} {k.abi:28} {' '.join(k.packages)}")
            return EXIT_OK
        lib: bool | list[str] = (True if args.scenarios == "all" else False
                                 if args.scenarios == "none" else args.scenarios.split(","))
        irqchips = ("kernel", "split") if args.irqchip == "both" else (args.irqchip,)
        job = Job(library=lib, irqchips=irqchips, random=args.random,
                  probe=not args.no_probe, profile=args.profile,
                  counterexamples=not args.no_counterexamples)
        report = rig.run([k.strip() for k in args.kernels.split(",") if k.strip()], job,
                         timeout=args.timeout, retries=args.retries, parallel=args.parallel,
                         refresh=not args.no_refresh, smp=args.smp)
    except (ArchiveError, KitError) as e:
        print(f"irqlab upstream: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(report, indent=1, default=str) if args.json else render_report(report))
    if any(k["failure"] for k in report["kernels"]):
        return EXIT_ERROR
    return EXIT_DIFFER if any_difference(report) else EXIT_OK


def any_difference(report: dict[str, Any]) -> bool:
    """A library difference not explained in advance (report.explain: a variant pinning
    another kernel's flag, or APICv), a random sequence or a counterexample that differs."""
    if unexplained(report):
        return True
    for k in report["kernels"]:
        res = k.get("result") or {}
        if any(r.get("status") in ("differ", "error") for r in res.get("counterexamples") or ()):
            return True
        for mode in (res.get("random") or {}).values():
            if mode["differ"]:
                return True
    return False
