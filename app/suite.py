"""`irqlab suite`: run a set of scenario documents across a matrix of behaviour presets and
irqchip modes, in parallel worker processes, for CI.

    irqlab suite DIR|FILE|NAME... [--profile P,Q] [--irqchip kernel,split] [--workers N]
                 [--server URL | --local] [--junit FILE] [--report DIR] [--json]

A directory stands for every *.yaml, *.yml and *.json document under it (recursively, sorted);
an existing file for itself; anything else for a built-in scenario's name. Every document runs
once per cell of the matrix profile × irqchip (a list given as P,Q or by repeating the option;
no --profile / --irqchip means the document's own vm settings), on an irqlab server (--server,
POST /v1/scenarios/run and /v1/scenarios/{name}/run, the default being the same as `irqlab
run`'s) or with --local in the worker processes. Exit status as `irqlab run`: 0 every
expectation held, 1 some expectation failed, 2 some document could not be run (malformed,
unknown name) or the server is unreachable.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

from app.cli import (
    DEFAULT_SERVER,
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_OK,
    CliError,
    Local,
    Remote,
    Source,
    Unreachable,
    read_file,
)
from app.reporting.records import RunRecord, cell_text

DOCUMENT_SUFFIXES = (".yaml", ".yml", ".json")
IRQCHIPS = ("kernel", "split")


@dataclass(frozen=True)
class Job:
    """One document in one matrix cell. `path` for a file, else `name` of a library scenario."""

    label: str
    path: str | None
    name: str | None
    cell: tuple[tuple[str, str], ...]


# ---------------------------------------------------------------- the worker side

_TARGET: Local | Remote | None = None


def _target(server: str | None) -> Local | Remote:
    """The worker's target, made once per process (one HTTP connection pool per worker)."""
    global _TARGET
    if _TARGET is None:
        _TARGET = Local() if server is None else Remote(server)
    return _TARGET


def run_job(job: Job, server: str | None) -> RunRecord:
    """Run one job; any failure to run becomes the record's error, never an exception
    (except Unreachable: the whole suite stops)."""
    cell = dict(job.cell)
    start = time.perf_counter()
    try:
        target = _target(server)
        if job.path is not None:
            source = read_file(job.path)
        else:
            assert job.name is not None
            source = Source(job.name, target.document(job.name), library_name=job.name)
        result = target.run(source, cell.get("profile"), cell.get("irqchip"), observe=True)
        return RunRecord(job.label, cell, result=result, seconds=time.perf_counter() - start,
                         doc=source.doc)
    except Unreachable:
        raise
    except CliError as exc:
        return RunRecord(job.label, cell, error=str(exc), seconds=time.perf_counter() - start)
    except Exception as exc:  # an irqlab bug: reported, and the suite goes on
        return RunRecord(job.label, cell, seconds=time.perf_counter() - start,
                         error=f"{job.label}: internal error: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------- the parent side


def split_list(values: list[str] | None, choices: tuple[str, ...] | list[str],
               option: str) -> list[str]:
    """'a,b' and repeated options as one list, in order, without duplicates; each checked."""
    out: list[str] = []
    for value in values or ():
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            if item not in choices:
                raise CliError(f"{option}: unknown value {item!r} (choose from "
                               f"{', '.join(choices)})")
            if item not in out:
                out.append(item)
    return out


def expand(targets: list[str]) -> tuple[list[tuple[str, str | None, str | None]], list[str]]:
    """(label, path, name) for every document the arguments stand for, and the errors (a
    directory without documents, a path that does not exist)."""
    found: list[tuple[str, str | None, str | None]] = []
    errors: list[str] = []
    for arg in targets:
        p = Path(arg)
        if p.is_dir():
            docs = sorted(f for f in p.rglob("*") if f.is_file()
                          and f.suffix.lower() in DOCUMENT_SUFFIXES)
            if not docs:
                errors.append(f"{arg}: no *.yaml, *.yml or *.json documents in this directory")
            found += [(str(f), str(f), None) for f in docs]
        elif p.is_file() or arg == "-":
            if arg == "-":
                errors.append("-: standard input cannot be shared by worker processes; "
                              "use `irqlab run -`")
            else:
                found.append((arg, arg, None))
        elif "/" in arg or p.suffix.lower() in DOCUMENT_SUFFIXES:
            errors.append(f"{arg}: no such file or directory")
        else:
            found.append((arg, None, arg))
    return found, errors


def make_jobs(docs: list[tuple[str, str | None, str | None]], profiles: list[str],
              irqchips: list[str]) -> list[Job]:
    axes: tuple[list[str | None], list[str | None]] = (list(profiles) or [None],
                                                       list(irqchips) or [None])
    cells = [tuple((k, v) for k, v in (("profile", p), ("irqchip", m)) if v is not None)
             for p, m in product(*axes)]
    return [Job(label, path, name, cell) for (label, path, name) in docs for cell in cells]


def _pool_context() -> Any:
    # fork is cheap and the parent has no threads when the pool starts; spawn elsewhere.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def run_jobs(jobs: list[Job], server: str | None, workers: int) -> Iterator[RunRecord]:
    """The records in job order, computed by `workers` processes (inline for one worker)."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield run_job(job, server)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                             mp_context=_pool_context()) as pool:
        futures: list[Future[RunRecord]] = [pool.submit(run_job, j, server) for j in jobs]
        try:
            for f in futures:
                yield f.result()
        finally:
            for f in futures:
                f.cancel()


def wait_ready(server: str, seconds: float) -> None:
    """Poll GET /readyz until the server says ready (a service starting next to the runner, as
    in the container rig); CliError when it has not within `seconds`."""
    import httpx

    deadline = time.monotonic() + seconds
    last = "no answer"
    url = server.rstrip("/") + "/readyz"
    while True:
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code == 200 and r.json().get("status") == "ready":
                return
            last = f"{r.status_code} {r.text[:200]}"
        except (httpx.HTTPError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise CliError(f"--wait: {url} was not ready within {seconds:g} s ({last})")
        time.sleep(0.5)


def _line(rec: RunRecord) -> str:
    if rec.error is not None:
        return f"ERROR {rec.label} [{cell_text(rec.cell)}]: {rec.error}"
    variants = (rec.result or {}).get("variants") or []
    ok = sum(1 for v in variants if v.get("passed"))
    verdict = "PASS " if rec.passed else "FAIL "
    return (f"{verdict} {rec.document} [{cell_text(rec.cell)}]: {ok} of {len(variants)} "
            f"variants passed ({rec.seconds:.2f} s)")


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def command(args: argparse.Namespace) -> int:
    """irqlab suite: the exit status."""
    from app.cli import _error
    from app.engine import flags as F
    from app.reporting.scenario_junit import failure_message

    try:
        profiles = split_list(args.profile, list(F.PRESETS), "--profile")
        irqchips = split_list(args.irqchip, IRQCHIPS, "--irqchip")
    except CliError as exc:
        _error(str(exc))
        return EXIT_ERROR
    docs, problems = expand(args.targets)
    for p in problems:
        _error(p)
    jobs = make_jobs(docs, profiles, irqchips)
    server = None if getattr(args, "local", False) else getattr(args, "server", DEFAULT_SERVER)
    if server is not None and args.wait > 0:
        try:
            wait_ready(server, args.wait)
        except CliError as exc:
            _error(str(exc))
            return EXIT_ERROR
    if server is not None:
        try:  # a bad URL or a server that is down: say so once, before forking workers
            probe = Remote(server)
            try:
                probe.listing()
            finally:
                probe.close()
        except CliError as exc:
            _error(str(exc))
            return EXIT_ERROR
    workers = args.workers or default_workers()
    as_json = getattr(args, "json", False)
    if not as_json:
        print(f"irqlab suite: {len(docs)} documents × {len(jobs) // max(len(docs), 1)} cells "
              f"= {len(jobs)} runs, {min(workers, max(len(jobs), 1))} workers, "
              f"{'local' if server is None else server}", flush=True)
    records: list[RunRecord] = []
    start = time.perf_counter()
    try:
        for rec in run_jobs(jobs, server, workers):
            records.append(rec)
            if rec.error is not None:
                _error(rec.error)
            if not as_json:
                print(_line(rec), flush=True)
                for v in (rec.result or {}).get("variants") or ():
                    if not v.get("passed"):
                        print(f"      {v.get('name')}: {failure_message(v)}", flush=True)
    except Unreachable as exc:
        _error(str(exc))
        return EXIT_ERROR
    elapsed = time.perf_counter() - start
    meta = {"command": "suite", "targets": args.targets, "profiles": profiles,
            "irqchips": irqchips, "server": server, "seconds": round(elapsed, 3)}
    status = write_outputs(args, records, meta)
    if as_json:
        print(json.dumps([{"source": r.label, "cell": r.cell, "seconds": round(r.seconds, 3),
                           **({"result": r.result} if r.error is None else
                              {"error": r.error})} for r in records],
                         indent=2, ensure_ascii=False))
    else:
        passed = sum(1 for r in records if r.passed)
        failed = sum(1 for r in records if r.error is None and not r.passed)
        errors = sum(1 for r in records if r.error is not None) + len(problems)
        print(f"irqlab suite: {len(records)} runs, {passed} passed, {failed} failed, "
              f"{errors} errors in {elapsed:.1f} s", flush=True)
    if status != EXIT_OK or problems or any(r.error is not None for r in records):
        return EXIT_ERROR
    return EXIT_OK if all(r.passed for r in records) else EXIT_FAILED


def write_outputs(args: argparse.Namespace, records: list[RunRecord],
                  meta: dict[str, Any]) -> int:
    """--junit FILE and --report DIR, for run, library run and suite. EXIT_ERROR (with a
    message) when one cannot be written, else EXIT_OK."""
    from app.cli import _error

    status = EXIT_OK
    junit = getattr(args, "junit", None)
    if junit:
        from app.reporting.junit import write_junit
        from app.reporting.scenario_junit import suites_from_records

        try:
            write_junit(junit, suites_from_records(records))
        except OSError as exc:
            _error(f"--junit {junit}: cannot write: {exc.strerror or exc}")
            status = EXIT_ERROR
    report = getattr(args, "report", None)
    if report:
        from app.reporting.report_dir import write_report

        try:
            write_report(report, records, meta)
        except OSError as exc:
            _error(f"--report {report}: cannot write: {exc.strerror or exc}")
            status = EXIT_ERROR
    return status


def add_parser(sub: Any, common: argparse.ArgumentParser,
               outputs: argparse.ArgumentParser) -> None:
    suite = sub.add_parser(
        "suite", parents=[common, outputs],
        help="run documents and built-in scenarios across a profile × irqchip matrix",
        epilog="exit status: 0 every expectation held, 1 an expectation failed, 2 a malformed "
               "document, an unknown scenario or an unreachable server",
        description="Run every document under the given directories (*.yaml, *.yml, *.json), "
                    "the given files and built-in scenarios (by name) once per cell of the "
                    "matrix --profile × --irqchip, in parallel worker processes, on an irqlab "
                    "server or with --local here. Prints one line per run; --junit and "
                    "--report write CI results.")
    suite.add_argument("targets", nargs="+", metavar="DIR|FILE|NAME")
    suite.add_argument("--profile", action="append", metavar="P[,Q...]",
                       help="behaviour presets to run every document on (default: as written)")
    suite.add_argument("--irqchip", action="append", metavar="kernel[,split]",
                       help="irqchip modes to run every document with (default: as written)")
    suite.add_argument("--workers", type=int, default=0, metavar="N",
                       help="worker processes (default: the CPUs this process may use)")
    suite.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                       help="first wait up to SECONDS for the server's GET /readyz (a service "
                            "starting next to the runner)")

