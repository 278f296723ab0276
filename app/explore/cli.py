"""`irqlab explore`: search every interleaving of an exploration's actors, in this process.

    irqlab explore FILE|NAME... [--library] [--profile P[,P...]|all] [--max-states N]
                   [--max-seconds S] [--workers N] [--json | --markdown]
                   [--counterexample-dir DIR] [--junit FILE] [--svg DIR]

A live progress line (states, frontier, depth, rate) on standard error while it runs, then per
profile the verdict and, for a violation, the shortest counterexample as a table; several
explorations or profiles end with the census table (exploration x profile -> verdict,
counterexample length, states). --json prints one JSON object per line and profile instead.
--junit FILE writes a JUnit file (a case per exploration and profile: a violation fails with
the counterexample, a bounded run is an error) and --svg DIR a timeline per counterexample
(app/explore/outputs.py).
Exit status: 0 every run verified, 1 some violation, 3 some run bounded by a budget (and no
violation), 2 an error (malformed document, unknown name or profile).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.engine.errors import EngineError

from .run import EXIT_ERROR, Options, exit_code, explore, profiles_arg

EPILOG = ("exit status: 0 verified, 1 a property is violated, 3 bounded by a budget, "
          "2 an error")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "explore", help="search every interleaving of an exploration for races",
        epilog=EPILOG,
        description="Explore every order of an exploration's actors and the hardware's moves "
                    "(vCPU entries, interrupt acknowledgements, handler steps) breadth-first, "
                    "and report per profile: verified (no order violates a property), "
                    "violation (with the shortest counterexample, replayable as a scenario) "
                    "or bounded (a budget stopped the search).")
    p.add_argument("sources", nargs="*", metavar="FILE|NAME",
                   help="exploration files (YAML, or JSON for *.json) or library names")
    p.add_argument("--library", action="store_true",
                   help="every exploration of the built-in library")
    p.add_argument("--profile", metavar="P[,P...]|all",
                   help="behaviour presets to explore under (default: the document's)")
    p.add_argument("--max-states", type=int, default=1_000_000, metavar="N",
                   help="stop (bounded) after N distinct states (default 1000000)")
    p.add_argument("--max-seconds", type=float, default=600.0, metavar="S",
                   help="stop (bounded) after S seconds per profile (default 600)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes (default 1)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="search on a Ray cluster: 'auto' (the running one), 'local' (start "
                        "one here) or an address; --workers partitions (needs the 'ray' "
                        "extra; explores the unreduced graph)")
    p.add_argument("--swarm", type=int, default=0, metavar="N",
                   help="with --ray: N randomized depth-first searches instead of the "
                        "exhaustive BFS (verdict violation or bounded, never verified)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line and profile instead of tables")
    p.add_argument("--markdown", action="store_true",
                   help="print only the census, as a markdown table (for README)")
    p.add_argument("--counterexample-dir", metavar="DIR",
                   help="write each counterexample as a scenario (NAME-PROFILE.yaml) that "
                        "irqlab run replays")
    p.add_argument("--junit", metavar="FILE",
                   help="write a JUnit XML file ('-': standard output): one test case per "
                        "exploration and profile; a violation is a failure with the "
                        "counterexample, a bounded run an error (no verdict)")
    p.add_argument("--svg", metavar="DIR",
                   help="draw each counterexample's timeline as DIR/NAME-PROFILE.svg")


def _documents(args: argparse.Namespace) -> list[tuple[str, Any]]:
    from app import explorations

    from .document import load_file

    out: list[tuple[str, Any]] = []
    for src in args.sources:
        if Path(src).exists():
            out.append((src, load_file(src)))
            continue
        doc = explorations.get(src)
        if doc is None:
            raise EngineError(_invalid_kind(), f"{src}: no such file and no exploration of "
                              f"that name (library: {', '.join(explorations.names())})", "")
        out.append((src, doc))
    if args.library:
        out.extend((n, explorations.get(n)) for n in explorations.names())
    if not out:
        raise EngineError(_invalid_kind(), "name an exploration file or library name, or "
                          "give --library", "")
    return out


def _invalid_kind() -> Any:
    from app.engine.errors import ErrorKind

    return ErrorKind.INVALID


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .document import parse

    console = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    if args.max_states < 1 or args.max_seconds <= 0 or args.workers < 1 or args.swarm < 0:
        err.print("irqlab: --max-states, --max-seconds and --workers must be positive")
        return EXIT_ERROR
    if args.swarm and not args.ray:
        err.print("irqlab: --swarm needs --ray")
        return EXIT_ERROR
    options = Options(args.max_states, args.max_seconds, args.workers, args.ray, args.swarm)
    try:
        docs = [(label, parse(doc)) for label, doc in _documents(args)]
        plan = [(label, exp, profiles_arg(args.profile, exp)) for label, exp in docs]
    except EngineError as exc:
        where = f" (at {exc.field})" if exc.field else ""
        err.print(f"irqlab: {exc.detail}{where}")
        return EXIT_ERROR
    results: list[dict[str, Any]] = []
    for label, exp, profiles in plan:
        for prof in profiles:
            try:
                result = _run_one(exp, prof, options, err, show=not args.json)
            except EngineError as exc:
                where = f" (at {exc.field})" if exc.field else ""
                err.print(f"irqlab: {label} under {prof}: {exc.detail}{where}")
                return EXIT_ERROR
            except (RuntimeError, ConnectionError) as exc:  # a Ray search that failed
                err.print(f"irqlab: {label} under {prof}: {exc}")
                return EXIT_ERROR
            results.append(result)
            if args.counterexample_dir and result["counterexample"]:
                _save(Path(args.counterexample_dir), result)
            if args.svg and result["counterexample"]:
                from .outputs import write_counterexample_svg

                try:
                    write_counterexample_svg(args.svg, result)
                except OSError as exc:
                    err.print(f"irqlab: cannot write {args.svg}: {exc}")
                    return EXIT_ERROR
            if args.json:
                print(json.dumps(result, ensure_ascii=False, sort_keys=False), flush=True)
            elif not args.markdown:
                print_result(console, result)
    if args.junit:
        from .outputs import write_explore_junit

        try:
            write_explore_junit(args.junit, results)
        except OSError as exc:
            err.print(f"irqlab: cannot write {args.junit}: {exc}")
            return EXIT_ERROR
    if args.markdown:
        print(census_markdown(results), end="")
    elif not args.json and len(results) > 1:
        print_census(console, results)
    return exit_code([r["verdict"] for r in results])


def _run_one(exp: Any, profile: str, options: Options, err: Any, show: bool) -> dict[str, Any]:
    if not show or not err.is_terminal:
        return explore(exp, profile, options)
    from rich.live import Live
    from rich.text import Text

    def line(s: dict[str, Any]) -> Text:
        return Text(f"{exp.name} under {profile}: {s.get('states', 0):,} states, frontier "
                    f"{s.get('frontier', 0):,}, depth {s.get('max_depth', 0)}, "
                    f"{s.get('states_per_s', 0):,} states/s, {s.get('seconds', 0):.1f} s")

    with Live(line({}), console=err, transient=True, refresh_per_second=8) as live:
        return explore(exp, profile, options, progress=lambda s: live.update(line(s)))


def _save(directory: Path, result: dict[str, Any]) -> None:
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{result['exploration']}-{result['profile']}.yaml"
    path.write_text(yaml.safe_dump(result["counterexample"]["scenario"], sort_keys=False),
                    encoding="utf-8")


VERDICT_STYLE = {"violation": "bold red", "verified": "bold green", "bounded": "bold yellow"}


def print_result(console: Any, r: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    s = r["stats"]
    head = Text.assemble((r["exploration"], "bold"), f" under {r['profile']}: ",
                         (r["verdict"], VERDICT_STYLE.get(r["verdict"], "")))
    if r["property"]:
        head.append(f" of {r['property']}")
    head.append(f"  ({s['states']:,} states, {s['transitions']:,} transitions, depth "
                f"{s['max_depth']}, {s['seconds']:.2f} s)", style="dim")
    if r.get("expected") and r["expected"] != r["verdict"]:
        head.append(f"  expected {r['expected']}", style="bold yellow")
    console.print(head)
    if r["property_description"]:
        console.print(Text(f"  {r['property']}: {r['property_description']}", style="dim"))
    cx = r["counterexample"]
    if cx:
        table = Table(title=f"shortest counterexample ({cx['length']} steps)",
                      title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("step (actor: what it does)")
        for row in cx["steps"]:
            table.add_row(str(row["index"] + 1), row["action"])
        console.print(table)


CENSUS_MARKS = {"violation": "✗", "verified": "✓", "bounded": "…"}
CENSUS_LEGEND = ("✗ n/s: violation, shortest counterexample n steps, s states explored; "
                 "✓ s: verified over s states; … s: bounded after s states")


def census_rows(results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Profile x exploration -> "✗ length/states", "✓ states" or "… states" cells."""
    profiles: list[str] = []
    explorations: list[str] = []
    cells: dict[tuple[str, str], str] = {}
    for r in results:
        if r["profile"] not in profiles:
            profiles.append(r["profile"])
        if r["exploration"] not in explorations:
            explorations.append(r["exploration"])
        mark = CENSUS_MARKS.get(r["verdict"], "?")
        states = r["stats"]["states"]
        if r["verdict"] == "violation":
            cell = f"{mark} {r['counterexample']['length']}/{states}"
        else:
            cell = f"{mark} {states}"
        cells[(r["profile"], r["exploration"])] = cell
    rows = [[p] + [cells.get((p, e), "") for e in explorations] for p in profiles]
    return explorations, rows


def print_census(console: Any, results: list[dict[str, Any]]) -> None:
    from rich.table import Table

    explorations, rows = census_rows(results)
    table = Table(title="race census", caption=CENSUS_LEGEND, title_justify="left")
    table.add_column("profile")
    for e in explorations:
        table.add_column(e)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def census_markdown(results: list[dict[str, Any]]) -> str:
    explorations, rows = census_rows(results)
    lines = ["| profile | " + " | ".join(f"`{e}`" for e in explorations) + " |",
             "|---|" + "---|" * len(explorations)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n\n" + CENSUS_LEGEND + ".\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(2)
