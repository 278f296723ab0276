"""`irqlab campaign`: the command line of app.campaign (parser and command in one place, so
app/cli.py only hooks it in)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from .driver import CampaignSpec, run_local
from .runner import CampaignResult, is_kernel_side

EXIT_OK, EXIT_DIVERGED, EXIT_ERROR = 0, 1, 2
DEFAULT_PROFILES = "linux-4.14,linux-4.15,linux-6.1,linux-6.2,linux-6.10,linux-latest"


def add_parser(sub: Any) -> None:
    from app.engine import flags as F

    p = sub.add_parser(
        "campaign", help="differential campaign: random sequences across presets / real KVM",
        epilog="exit status: 0 done (preset differences are the census, not failures), "
               "1 the model disagreed with a real kernel (--kvm), 2 bad arguments or no "
               "usable KVM / Ray cluster",
        description="Run N seeded random operation sequences (line changes, RTE writes, MSIs, "
                    "interrupt windows, EOIs, TPR writes on 1-2 vCPUs) on the model under "
                    "every preset given and report, for each pair of presets and irqchip "
                    "mode, how many sequences diverge and where the first one does: a census "
                    "of what each kernel change did. --kvm also runs them on real KVM (this "
                    "host, or every Ray node with /dev/kvm) against the node's own preset. "
                    f"Presets: {', '.join(F.PRESETS)} (or 'all').")
    p.add_argument("sequences", type=int, metavar="N", help="how many sequences")
    p.add_argument("--seed", type=int, default=1, help="campaign seed (default 1)")
    p.add_argument("--profile", default=DEFAULT_PROFILES,
                   help=f"comma-separated presets, or 'all' (default {DEFAULT_PROFILES})")
    p.add_argument("--irqchip", default="kernel,split", help="kernel, split or both")
    p.add_argument("--kvm", action="store_true", help="also compare with real KVM")
    p.add_argument("--workers", type=int, default=1, help="local worker processes")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run on Ray: 'auto' (the running cluster), 'local' (start one here) "
                        "or a cluster address (needs the 'ray' extra)")
    p.add_argument("--batch", type=int, default=200, help="sequences per task (default 200)")
    p.add_argument("--save", type=int, default=3,
                   help="diverging sequences saved as scenarios per pair and mode (default 3)")
    p.add_argument("--out", metavar="DIR",
                   help="write campaign.json and the divergences as scenario YAML files here")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _spec(args: argparse.Namespace) -> CampaignSpec:
    from app.engine import flags as F

    profiles = list(F.PRESETS) if args.profile == "all" else [
        p.strip() for p in args.profile.split(",") if p.strip()]
    unknown = [p for p in profiles if p not in F.PRESETS]
    if unknown:
        raise ValueError(f"unknown preset(s): {', '.join(unknown)}")
    if len(set(profiles)) != len(profiles):
        raise ValueError("a preset is named twice")
    chips = [c.strip() for c in args.irqchip.split(",") if c.strip()]
    if not chips or any(c not in ("kernel", "split") for c in chips):
        raise ValueError("--irqchip takes kernel, split or kernel,split")
    if not 1 <= args.sequences <= 10_000_000:
        raise ValueError("N must be 1..10000000")
    if not 1 <= args.batch <= 100_000 or args.workers < 1 or args.save < 0:
        raise ValueError("--batch must be 1..100000, --workers >= 1, --save >= 0")
    if len(profiles) < 2 and not args.kvm:
        raise ValueError("name at least two presets (or --kvm)")
    return CampaignSpec(args.seed, args.sequences, tuple(profiles), tuple(chips), args.kvm,
                        args.batch, args.save)


def _table(console: Console, result: CampaignResult) -> None:
    for chip in result.irqchips:
        t = Table(title=f"{chip} irqchip: {result.sequences} sequences, seed {result.seed}")
        for col in ("pair", "diverged", "first seq", "at step", "fields", "step kinds"):
            t.add_column(col)
        for s in result.pairs:
            if s.irqchip != chip:
                continue
            first = s.first
            kinds = ", ".join(f"{k} {n}" for k, n in s.by_step_kind.most_common(3))
            t.add_row(s.pair.replace("|", " vs "), f"{s.diverged}/{s.compared}",
                      "-" if s.first_index is None else str(s.first_index),
                      "-" if first is None else f"{first.step} ({first.kind})",
                      "-" if first is None else ", ".join(first.fields), kinds or "-")
        console.print(t)
    if result.kvm:
        for n in result.kvm["nodes"]:
            console.print(f"kernel side {n['side']}: {n['vendor'] or 'upstream'} "
                          f"{n['release']}, compared with preset {n['profile']}")
    for e in result.errors:
        console.print(f"[red]sequence {e['index']} ({e['irqchip']}): {e['error']}[/red]")


def run(args: argparse.Namespace) -> int:
    err = Console(stderr=True, highlight=False)
    try:
        spec = _spec(args)
    except ValueError as exc:
        err.print(f"irqlab campaign: {exc}")
        return EXIT_ERROR

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            rate = done / max(time.monotonic() - started, 1e-9)
            print(f"\r{done}/{total} sequences, {rate:,.0f}/s", end="", file=sys.stderr)

    started = time.monotonic()
    try:
        if args.ray:
            try:
                from . import on_ray
            except ImportError:
                err.print("irqlab campaign: --ray needs the 'ray' extra "
                          "(pip install -e '.[ray]')")
                return EXIT_ERROR
            on_ray.connect(args.ray)
            result = on_ray.run_on_ray(spec, progress)
        else:
            result = run_local(spec, args.workers, progress)
    except (RuntimeError, ConnectionError) as exc:
        err.print(f"\nirqlab campaign: {exc}")
        return EXIT_ERROR
    seconds = time.monotonic() - started
    if sys.stderr.isatty():
        print(file=sys.stderr)
    body = dict(result.as_dict(), seconds=round(seconds, 3))
    if args.out:
        out = Path(args.out)
        (out / "scenarios").mkdir(parents=True, exist_ok=True)
        (out / "campaign.json").write_text(json.dumps(body, indent=2) + "\n")
        for name, doc in result.scenarios.items():
            (out / "scenarios" / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        console = Console(highlight=False)
        _table(console, result)
        console.print(f"{result.sequences} sequences in {seconds:.1f} s"
                      + (f"; {len(result.scenarios)} divergences saved to {args.out}/scenarios"
                         if args.out else ""))
    kernel_diverged = any(s.diverged for s in result.pairs
                          if any(is_kernel_side(x) for x in s.pair.split("|")))
    return EXIT_DIVERGED if kernel_diverged or result.errors else EXIT_OK
