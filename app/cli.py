"""The `irqlab` command line.

    irqlab serve [--host H] [--port P] [--log-level L]
    irqlab run FILE... [--server URL | --local] [--json] [--svg DIR] [--trace DIR] [--html F]
    irqlab library [--server URL | --local] [--json]
    irqlab library run NAME... [--profile P] [--irqchip M] [--server URL | --local] [--json]
                               [--svg DIR] [--trace DIR] [--html FILE]
    irqlab diff FILE... [--profile P] [--server URL | --local] [--json]
    irqlab suite DIR|FILE|NAME... [--profile P,Q] [--irqchip kernel,split] [--workers N] ...
    irqlab explore FILE|NAME... [--profile P[,P...]|all] [--max-states N] [--json] ...
                                (app/explore/cli.py)
    irqlab campaign N [--profile P,Q...] [--kvm] [--ray ADDRESS] ... (app/campaign/cli.py)
    irqlab token add TENANT [--file PATH]
    irqlab --version

`run`, `library run` and `suite` also write CI results: --junit FILE (JUnit XML, one testcase
per variant) and --report DIR (the JSON results and an index); see app/reporting and
app/suite.py.

`run` and `library` talk to an irqlab server (POST /v1/scenarios/run, GET /v1/scenarios, POST
/v1/scenarios/{name}/run; the bearer token in IRQLAB_TOKEN, if set, for a server with
IRQLAB_TOKENS) or, with --local, run the engine in this process. Results are printed
as one step table per variant (rich), each failed expectation's checks and the findings; --json
prints the raw result JSON instead (one document: the result, or a list of results when several
files or names are given). --svg DIR, --trace DIR and --html FILE also write the run's pictures
(app.pictures: a timeline SVG per variant; a Perfetto trace and a VCD; an HTML report). Exit
status: 0 every expectation held, 1 some expectation failed, 2 a malformed document, an unknown
scenario or an unreachable server (with a message on standard error).

`diff` runs documents on the engine model and on this host's real KVM side by side (POST
/v1/scenarios/diff, or --local: app.kvm.scenario_diff in this process) and prints a table of
steps with their differences per variant; --profile P replaces vm.profile in every variant
first (e.g. kvm-pvm, the engine profile that models this project's CI host). Exit status: 0 no
difference, 1 some difference, 2 a malformed document, no usable KVM or an unreachable server.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import cli_events
from app.settings import get_settings

DEFAULT_SERVER = "http://127.0.0.1:8000"
EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2


class CliError(Exception):
    """Reported on standard error; the command's exit status becomes 2."""


class Unreachable(CliError):
    """The server cannot be reached: nothing else can be done, stop at once."""


@dataclass
class Source:
    """A scenario to run: a document (for the step column) and how to run it."""

    label: str
    doc: Any
    raw: bytes = b""
    media_type: str = "application/json"
    library_name: str | None = None


# ---------------------------------------------------------------- targets


class Local:
    """Runs in this process: app.engine.scenario.run_scenario, no service limits."""

    def run(self, source: Source, profile: str | None = None,
            irqchip: str | None = None, observe: bool = False) -> dict[str, Any]:
        from app.api import scenarios as S
        from app.api.problems import DocumentError

        doc = S.override_vm(source.doc, profile, irqchip) if isinstance(source.doc, dict) \
            else source.doc
        try:
            return S.execute(doc, observe=observe)
        except DocumentError as exc:
            raise CliError(f"{source.label}: malformed scenario document: "
                           f"{exc.field}: {exc.detail}") from None

    def diff(self, source: Source, profile: str | None = None) -> dict[str, Any]:
        from app.api import scenarios as S
        from app.api.problems import DocumentError
        from app.kvm.detect import kvm_available
        from app.kvm.scenario_diff import diff_scenario
        from app.kvm.vm import KvmVmError

        doc = S.override_vm(source.doc, profile) if isinstance(source.doc, dict) \
            else source.doc
        try:
            S.execute(doc)
        except DocumentError as exc:
            raise CliError(f"{source.label}: malformed scenario document: "
                           f"{exc.field}: {exc.detail}") from None
        ok, reason = kvm_available()
        if not ok:
            raise CliError(f"{source.label}: real KVM is not available here: {reason}")
        try:
            return diff_scenario(doc)
        except (KvmVmError, OSError) as exc:
            raise CliError(f"{source.label}: KVM failed: {exc}") from None

    def listing(self) -> dict[str, Any]:
        from app.api import scenarios as S

        return S.listing()

    def document(self, name: str) -> dict[str, Any]:
        from app import scenarios as library

        doc = library.get(name)
        if doc is None:
            raise CliError(f"no scenario {name!r} in the library (irqlab library lists them)")
        return doc


class Remote:
    """Talks to an irqlab server over HTTP (httpx)."""

    def __init__(self, url: str) -> None:
        import httpx

        self.url = url.rstrip("/")
        try:
            parsed = httpx.URL(self.url)
        except httpx.InvalidURL:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise Unreachable(f"--server {url!r} is not an http:// or https:// URL")
        # A server with tokens (IRQLAB_TOKENS) wants one: the client's is IRQLAB_TOKEN.
        token = os.environ.get("IRQLAB_TOKEN")
        headers = {"authorization": f"Bearer {token}"} if token else None
        self.http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(600.0, connect=5.0),
                                 headers=headers)

    def close(self) -> None:
        self.http.close()

    def _call(self, label: str, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            r = self.http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise Unreachable(
                f"cannot reach the irqlab server at {self.url} ({type(exc).__name__}: {exc}); "
                "start one with `irqlab serve`, pass --server URL, or run with --local"
            ) from None
        if r.status_code == 200:
            try:
                return r.json()
            except ValueError:
                raise Unreachable(f"{self.url} answered {path} with something that is not "
                                  "JSON: is it an irqlab server?") from None
        try:
            problem = r.json()
            detail = problem.get("detail") or r.text
        except ValueError:
            problem, detail = {}, r.text.strip() or r.reason_phrase
        if r.status_code == 422 and problem.get("type") == "/problems/validation-error":
            raise CliError(f"{label}: malformed scenario document: {detail}")
        raise CliError(f"{label}: the server answered {r.status_code}: {detail}")

    def run(self, source: Source, profile: str | None = None,
            irqchip: str | None = None, observe: bool = False) -> dict[str, Any]:
        extra = {"observe": "true"} if observe else {}
        if source.library_name is None and (profile or irqchip) \
                and isinstance(source.doc, dict):
            # A file with overrides (irqlab suite's matrix): send it with them applied.
            from app.api import scenarios as S

            doc = S.override_vm(source.doc, profile, irqchip)
            source = Source(source.label, doc, json.dumps(doc).encode())
        if source.library_name is not None:
            params = {k: v for k, v in (("profile", profile), ("irqchip", irqchip)) if v}
            result: dict[str, Any] = self._call(
                source.label, "POST", f"/v1/scenarios/{source.library_name}/run",
                params={**params, **extra})
            return result
        result = self._call(source.label, "POST", "/v1/scenarios/run", content=source.raw,
                            headers={"content-type": source.media_type}, params=extra)
        return result

    def diff(self, source: Source, profile: str | None = None) -> dict[str, Any]:
        if profile is not None and isinstance(source.doc, dict):
            # The server diffs the document it is sent: send it with the profile replaced.
            from app.api import scenarios as S

            content = json.dumps(S.override_vm(source.doc, profile)).encode()
            media_type = "application/json"
        else:
            content, media_type = source.raw, source.media_type
        result: dict[str, Any] = self._call(source.label, "POST", "/v1/scenarios/diff",
                                            content=content,
                                            headers={"content-type": media_type})
        return result

    def listing(self) -> dict[str, Any]:
        listing: dict[str, Any] = self._call("library", "GET", "/v1/scenarios")
        return listing

    def document(self, name: str) -> dict[str, Any]:
        doc: dict[str, Any] = self._call(name, "GET", f"/v1/scenarios/{name}")
        return doc


# ---------------------------------------------------------------- reading files


def read_file(path: str) -> Source:
    """A YAML or JSON document (JSON for *.json, YAML otherwise; '-' is standard input)."""
    from app.api import scenarios as S
    from app.api.problems import DocumentError

    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror or exc}") from None
    is_json = path.lower().endswith(".json")
    try:
        doc = S.parse_json(raw) if is_json else S.parse_yaml(raw)
    except DocumentError as exc:
        raise CliError(f"{path}: malformed scenario document: {exc.detail}") from None
    return Source(path, doc, raw, "application/json" if is_json else "application/yaml")


# ---------------------------------------------------------------- output

_HEX_KEYS = {"vector", "value", "raw", "data", "address_lo", "address_hi", "apic_base", "svr",
             "ldr", "dfr", "tpr", "offset", "irr", "isr", "tmr", "pir", "handled_vectors",
             "eoi_exit_bitmap"}


def _fmt(value: Any, key: str | None = None) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return hex(value) if key in _HEX_KEYS and value > 9 else str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v, str(k))}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v, key) for v in value) + "]"
    return str(value)


def _step_text(step: Any) -> str:
    if not isinstance(step, dict):
        return ""
    if step.get("op") == "expect":
        keys = [k for k in step if k not in ("op", "label")]
        return ", ".join(keys) if keys else "(assertions from the matrix)"
    return " ".join(f"{k}={_fmt(v, k)}" for k, v in step.items() if k not in ("op", "label"))


def _summary(op: str | None, result: Any) -> str:
    """One line saying what a step did, from its result (best effort)."""
    if not isinstance(result, dict):
        return ""
    try:
        if op == "settle":
            out = f"{result['steps']} steps, {result['taken_total']} interrupts taken"
            return out + (", budget exhausted (interrupt storm)"
                          if result.get("budget_exhausted") else "")
        if op == "count":
            return f"{result['counter']} = {result['value']}"
        if op == "when":
            return f"ran {len(result['steps'])} steps" if result["ran"] else "skipped"
        if op in ("sti", "cli"):
            return f"IF={int(result['if'])}"
        if op == "line":
            parts = [f"level {s['level']}: " + (
                f"delivered to vCPU {_fmt(s['delivered_to'])}" if s.get("delivered_to")
                else f"status {s.get('status')}") for s in result["steps"]]
            parts.append("Remote IRR " + ("set" if result.get("remote_irr") else "clear"))
            return "; ".join(parts)
        if op in ("write_rte", "patch_rte"):
            return f"pin {result['pin']} = {result['raw']}"
        parts = []
        if "vector" in result:
            parts.append("vector " + (_fmt(result["vector"], "vector")
                                      if result["vector"] is not None else "none"))
        if op == "take" and result.get("handler") is not None:
            parts.append(f"handler ran {len(result['handler'])} steps")
        if "forwarded" in result:
            parts.append("forwarded" if result["forwarded"] else "NOT forwarded")
        if "delivered_to" in result:
            parts.append(f"delivered to vCPU {_fmt(result['delivered_to'])}"
                         if result["delivered_to"] else f"status {result.get('status')}")
        if op == "mmio" and "value" in result:
            parts.append(f"read {_fmt(result['value'], 'value')}")
        for key in ("exits", "entry_exits"):
            reasons = [e.get("reason") for e in result.get(key) or () if isinstance(e, dict)]
            if reasons:
                parts.append("exits " + ", ".join(str(r) for r in reasons))
        if result.get("pending_requests"):
            parts.append("requests " + ", ".join(result["pending_requests"]))
        return "; ".join(parts)
    except (KeyError, TypeError, AttributeError, IndexError):
        return ""


def _variant_caption(v: dict[str, Any]) -> str:
    vm = v.get("vm") or {}
    bits = [str(vm.get("irqchip", "?")), str(vm.get("profile", "?")),
            f"{vm.get('vcpus', '?')} vCPU{'s' if vm.get('vcpus') != 1 else ''}"]
    if vm.get("apicv"):
        bits.append("avic" if vm["apicv"] == "avic" else "apicv")
    bits += ["x2apic"] if vm.get("x2apic") else []
    return ", ".join(bits)


def print_result(console: Any, result: dict[str, Any], doc: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    def verdict(passed: bool) -> Text:
        return Text("passed", style="bold green") if passed else Text("FAILED", style="bold red")

    steps_doc = doc.get("steps") if isinstance(doc, dict) else None
    header = Text.assemble((str(result.get("name") or "(unnamed scenario)"), "bold"), "  ",
                           verdict(bool(result.get("passed"))))
    console.rule(header)
    if result.get("commits"):
        console.print(Text("commits: " + ", ".join(str(c) for c in result["commits"])))
    for v in result.get("variants", []):
        table = Table(title=Text.assemble(("variant ", "bold"), (str(v.get("name")), "bold"),
                                          f"  ({_variant_caption(v)})  ",
                                          verdict(bool(v.get("passed")))),
                      title_justify="left", show_lines=False, expand=False)
        table.add_column("#", justify="right")
        table.add_column("op")
        table.add_column("label")
        table.add_column("step")
        table.add_column("outcome")
        table.add_column("findings", style="yellow")
        failed: list[tuple[str, str, dict[str, Any]]] = []
        for s in v.get("steps", []):
            i = s.get("index")
            spec = steps_doc[i] if isinstance(steps_doc, list) and isinstance(i, int) \
                and i < len(steps_doc) else None
            res = s.get("result")
            if not s.get("ok"):
                outcome = Text("refused: " + str((s.get("error") or {}).get("detail")),
                               style="magenta")
            elif s.get("op") == "expect" and isinstance(res, dict):
                checks = res.get("checks") or []
                bad = [c for c in checks if not c.get("ok")]
                outcome = Text(f"passed ({len(checks)} checks)", style="green") if not bad \
                    else Text(f"FAILED ({len(bad)} of {len(checks)} checks)", style="bold red")
                failed += [(f"step {i}", str(s.get("label") or ""), c) for c in bad]
            else:
                outcome = Text(_summary(s.get("op"), res))
            table.add_row(Text(str(i)), Text(str(s.get("op"))), Text(str(s.get("label") or "")),
                          Text(_step_text(spec)), outcome,
                          Text(", ".join(f.get("kind", "?") for f in s.get("findings", []))))
        console.print(table)
        for x in v.get("handler_expects", []):
            failed += [(f"{x.get('where')} (step {x.get('step')})", str(x.get("label") or ""), c)
                       for c in x.get("checks", []) if not c.get("ok")]
        if failed:
            checks = Table(title=Text("failed checks", style="bold red"), title_justify="left")
            for col in ("where", "label", "path", "expected", "actual"):
                checks.add_column(col)
            for where, label, c in failed:
                key = str(c.get("path")).rsplit(".", 1)[-1]
                checks.add_row(Text(where), Text(label), Text(str(c.get("path"))),
                               Text(_fmt(c.get("expected"), key)),
                               Text(_fmt(c.get("actual"), key), style="red"))
            console.print(checks)
        if v.get("findings"):
            found = Table(title=Text("findings", style="bold yellow"), title_justify="left")
            for col in ("step", "kind", "detail"):
                found.add_column(col)
            for f in v["findings"]:
                found.add_row(Text(str(f.get("step"))), Text(str(f.get("kind"))),
                              Text(str(f.get("detail", ""))))
            console.print(found)
    n = len(result.get("variants", []))
    ok = sum(1 for v in result.get("variants", []) if v.get("passed"))
    console.print(Text.assemble(f"{result.get('name')}: {ok} of {n} variants passed ",
                                verdict(ok == n)))
    console.print()


def print_diff(console: Any, result: dict[str, Any], doc: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    steps_doc = doc.get("steps") if isinstance(doc, dict) else None
    host = result.get("host") or {}
    n = int(result.get("differences") or 0)
    console.rule(Text.assemble((str(result.get("name") or "(unnamed scenario)"), "bold"), "  ",
                               Text(f"{n} differences", style="bold red") if n
                               else Text("no difference", style="bold green")))
    console.print(Text(f"host: kernel {host.get('kernel_release')}, vendor module "
                       f"{host.get('vendor_module')}; engine profile "
                       f"{host.get('engine_profile')}; {result.get('expect_steps')}"))
    for v in result.get("variants", []):
        title = Text.assemble(("variant ", "bold"), (str(v.get("name")), "bold"),
                              f"  ({v.get('irqchip')}, {v.get('profile')}, "
                              f"{v.get('vcpus')} vCPU{'s' if v.get('vcpus') != 1 else ''})")
        if v.get("skipped"):
            console.print(Text.assemble(title, "  ", Text(f"skipped: {v['skipped']}",
                                                          style="yellow")))
            continue
        table = Table(title=title, title_justify="left", expand=False)
        for col in ("#", "op", "step", "ran", "path", "model", "kvm"):
            table.add_column(col, justify="right" if col == "#" else "left")
        for s in v.get("steps", []):
            i = s.get("index")
            spec = steps_doc[i] if isinstance(steps_doc, list) and isinstance(i, int) \
                and i < len(steps_doc) else None
            diffs = s.get("differences") or []
            ran = Text(str(s.get("ran")), style="magenta" if s.get("ran") == "unsupported"
                       else "dim" if s.get("ran") == "ignored" else "")
            first = [Text(str(i)), Text(str(s.get("op"))), Text(_step_text(spec)), ran]
            if not diffs:
                note = s.get("note") if s.get("ran") == "unsupported" else ""
                table.add_row(*first, Text(str(note or "")), Text(""), Text(""))
            for k, d in enumerate(diffs):
                key = str(d.get("path")).rsplit(".", 1)[-1]
                cells = first if k == 0 else [Text("")] * 4
                table.add_row(*cells, Text(str(d.get("path"))), Text(_fmt(d.get("model"), key)),
                              Text(_fmt(d.get("kvm"), key), style="red"))
        console.print(table)
        for note in v.get("notes") or ():
            console.print(Text(f"note: {note}", style="dim"))
        if v.get("stopped"):
            st = v["stopped"]
            console.print(Text(f"stopped at step {st.get('index')} ({st.get('op')}): "
                               f"{st.get('reason')}", style="magenta"))
        console.print(Text(f"{v.get('name')}: {v.get('differences')} differences"))
    console.print()


def print_listing(console: Any, listing: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text("built-in scenarios", style="bold"), title_justify="left",
                  show_lines=True)
    for col in ("name", "commits", "variants"):
        table.add_column(col)
    for s in listing.get("scenarios", []):
        table.add_row(Text(s["name"], style="bold"), Text("\n".join(s.get("commits", []))),
                      Text("\n".join(s.get("variants", []))))
    console.print(table)


# ---------------------------------------------------------------- commands


def _target(args: argparse.Namespace) -> Local | Remote:
    if getattr(args, "local", False):
        return Local()
    return Remote(getattr(args, "server", DEFAULT_SERVER))


def _sources(args: argparse.Namespace, target: Local | Remote) -> Iterator[Source]:
    """What to run; a file or name that cannot be had is an error for it alone."""
    for path in getattr(args, "files", None) or ():
        try:
            yield read_file(path)
        except CliError as exc:
            _error(str(exc))
            args.errors += 1
    for name in getattr(args, "names", None) or ():
        try:
            yield Source(name, target.document(name), library_name=name)
        except Unreachable:
            raise
        except CliError as exc:
            _error(str(exc))
            args.errors += 1


def _error(message: str) -> None:
    print(f"irqlab: {message}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    """irqlab run / library run: exit 1 when an expectation fails; --junit / --report write
    the CI results of every source (errors included) afterwards. With --svg / --trace / --html
    the run is observed and its pictures are written (app.pictures.files)."""
    from app.reporting.records import RunRecord

    profile, irqchip = getattr(args, "profile", None), getattr(args, "irqchip", None)
    cell = {k: v for k, v in (("profile", profile), ("irqchip", irqchip)) if v}
    records: list[RunRecord] = []
    wanted = {k: getattr(args, k, None) for k in ("svg", "trace", "html")}
    # Pictures and --report want step bands: observe the run.
    observe = any(v is not None for v in wanted.values()) or bool(getattr(args, "report", None))
    several = len(getattr(args, "files", None) or getattr(args, "names", None) or ()) > 1

    def act(target: Local | Remote, source: Source) -> dict[str, Any]:
        result = target.run(source, profile, irqchip, observe)
        if observe:
            _write_pictures(result, source, wanted, several)
        return result

    docs: dict[str, Any] = {}

    def act_and_keep(target: Local | Remote, source: Source) -> dict[str, Any]:
        docs[source.label] = source.doc
        return act(target, source)

    status = _each_source(
        args, act_and_keep, lambda result: not result.get("passed"), print_result,
        lambda label, result, error, seconds: records.append(
            RunRecord(label, cell, result=result, error=error, seconds=seconds,
                      doc=docs.get(label))),
    )
    if getattr(args, "junit", None) or getattr(args, "report", None):
        from app.suite import write_outputs

        if write_outputs(args, records, {"command": args.cmd}) != EXIT_OK:
            return EXIT_ERROR
    return status


def _write_pictures(result: dict[str, Any], source: Source, wanted: dict[str, str | None],
                    several: bool) -> None:
    from app.pictures.files import html_path_for, write_run_pictures

    html = wanted["html"]
    if html is not None:
        html = html_path_for(html, str(result.get("name") or source.label), several)
    try:
        paths = write_run_pictures(result, source.doc, svg_dir=wanted["svg"],
                                   trace_dir=wanted["trace"], html=html)
    except OSError as exc:
        raise CliError(f"{source.label}: cannot write pictures: {exc}") from None
    for path in paths:
        print(f"irqlab: wrote {path}", file=sys.stderr)


def _diff(args: argparse.Namespace) -> int:
    """irqlab diff: exit 1 when the model and KVM differ anywhere."""
    return _each_source(
        args,
        lambda target, source: target.diff(source, getattr(args, "profile", None)),
        lambda result: bool(result.get("differences")),
        print_diff,
    )


def _each_source(
    args: argparse.Namespace,
    act: Callable[[Any, Source], dict[str, Any]],
    flagged: Callable[[dict[str, Any]], bool],
    show: Callable[[Any, dict[str, Any], Any], None],
    record: Callable[[str, dict[str, Any] | None, str | None, float], None] | None = None,
) -> int:
    """Run `act` on every file or library scenario named on the command line, printing each
    result (or collecting them for --json) and passing each outcome to `record` (label, result
    or error message, seconds). Exit 2 when any source could not be run, else 1
    when `flagged` holds for any result, else 0."""
    import time

    from rich.console import Console

    console = Console(highlight=False)
    args.errors = 0
    try:
        target = _target(args)
    except Unreachable as exc:
        _error(str(exc))
        return EXIT_ERROR
    results: list[dict[str, Any]] = []
    any_flagged = False
    try:
        for source in _sources(args, target):
            start = time.perf_counter()
            try:
                result = act(target, source)
            except Unreachable:
                raise
            except Exception as exc:
                # CliError: a malformed document or a refusal; anything else is an irqlab bug,
                # not a failed expectation or a difference.
                message = str(exc) if isinstance(exc, CliError) else \
                    f"{source.label}: internal error: {type(exc).__name__}: {exc}"
                _error(message)
                args.errors += 1
                if record is not None:
                    record(source.label, None, message, time.perf_counter() - start)
                continue
            if record is not None:
                record(source.label, result, None, time.perf_counter() - start)
            any_flagged = any_flagged or flagged(result)
            if getattr(args, "json", False):
                results.append(result)
            else:
                show(console, result, source.doc)
    except Unreachable as exc:
        _error(str(exc))
        return EXIT_ERROR
    finally:
        if isinstance(target, Remote):
            target.close()
    if getattr(args, "json", False) and results:
        one = len(getattr(args, "files", None) or getattr(args, "names", None) or ()) == 1
        print(json.dumps(results[0] if one else results, indent=2, ensure_ascii=False))
    if args.errors:
        return EXIT_ERROR
    return EXIT_FAILED if any_flagged else EXIT_OK


def _library(args: argparse.Namespace) -> int:
    from rich.console import Console

    try:
        target = _target(args)
    except Unreachable as exc:
        _error(str(exc))
        return EXIT_ERROR
    try:
        listing = target.listing()
    except CliError as exc:
        _error(str(exc))
        return EXIT_ERROR
    finally:
        if isinstance(target, Remote):
            target.close()
    if getattr(args, "json", False):
        print(json.dumps(listing, indent=2, ensure_ascii=False))
    else:
        print_listing(Console(highlight=False), listing)
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    from app import __version__
    from app.engine import flags as F

    settings = get_settings()
    parser = argparse.ArgumentParser(
        prog="irqlab", description="irqlab: KVM's x86 IOAPIC/LAPIC model as a service, and "
                                   "its scenario runner.")
    parser.add_argument("--version", action="version", version=f"irqlab {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser(
        "serve", help="run the HTTP service",
        description="Serve app.main:app with uvicorn. Defaults come from IRQLAB_HOST, "
                    "IRQLAB_PORT and IRQLAB_LOG_LEVEL; flags override them.")
    serve.add_argument("--host", default=settings.host,
                       help=f"bind address (IRQLAB_HOST, now {settings.host})")
    serve.add_argument("--port", type=int, default=settings.port,
                       help=f"TCP port (IRQLAB_PORT, now {settings.port})")
    serve.add_argument("--log-level", default=settings.log_level,
                       choices=["critical", "error", "warning", "info", "debug", "trace"],
                       help=f"log level (IRQLAB_LOG_LEVEL, now {settings.log_level})")

    # Options valid at both levels of `library [run]` default to SUPPRESS, so a value given
    # before `run` is not reset by the subcommand's default.
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_mutually_exclusive_group()
    where.add_argument("--server", metavar="URL", default=argparse.SUPPRESS,
                       help=f"the irqlab server to use (default {DEFAULT_SERVER})")
    where.add_argument("--local", action="store_true", default=argparse.SUPPRESS,
                       help="run in this process instead of on a server")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the raw JSON instead of tables")
    # CI results, for run, library run and suite.
    outputs = argparse.ArgumentParser(add_help=False)
    outputs.add_argument("--junit", metavar="FILE",
                         help="also write JUnit XML: a testsuite per document, a testcase per "
                              "variant ('-' for standard output)")
    outputs.add_argument("--report", metavar="DIR",
                         help="also write the JSON results (DIR/index.json, one folder per "
                              "document run, one file per variant)")
    # Pictures of a run (run, library run).
    pics = argparse.ArgumentParser(add_help=False)
    pics.add_argument("--svg", metavar="DIR", default=argparse.SUPPRESS,
                      help="write each variant's timeline to DIR/<scenario>--<variant>.svg")
    pics.add_argument("--trace", metavar="DIR", default=argparse.SUPPRESS,
                      help="write DIR/<scenario>.perfetto.json (Perfetto / chrome://tracing) "
                           "and DIR/<scenario>.vcd (GTKWave, Surfer)")
    pics.add_argument("--html", metavar="FILE", default=argparse.SUPPRESS,
                      help="write a self-contained HTML report (with several scenarios: "
                           "FILE with each one's name before the suffix)")
    epilog = ("exit status: 0 every expectation held, 1 an expectation failed, 2 a malformed "
              "document, an unknown scenario or an unreachable server")
    run = sub.add_parser(
        "run", parents=[common, outputs, pics], help="run scenario files (YAML or JSON)",
        epilog=epilog,
        description="Run scenario documents (YAML, or JSON for *.json; '-' reads standard "
                    "input) on an irqlab server or, with --local, in this process, and print "
                    "a step table per variant, the failed checks and the findings.")
    run.add_argument("files", nargs="+", metavar="FILE")
    diff = sub.add_parser(
        "diff", parents=[common], help="diff scenario files: engine model vs real KVM",
        epilog="exit status: 0 no difference, 1 some difference, 2 a malformed document, "
               "no usable KVM or an unreachable server",
        description="Run scenario documents on the engine model and on this host's real KVM "
                    "(in-kernel irqchip, or split with irqlab as the VMM) side by side, on an "
                    "irqlab server (POST /v1/scenarios/diff) or, with --local, in this "
                    "process, and print per variant a table of steps with what differed after "
                    "each (path, model, kvm). Expect steps are ignored. --profile replaces "
                    "vm.profile in every variant (kvm-pvm models the kvm_pvm host).")
    diff.add_argument("files", nargs="+", metavar="FILE")
    diff.add_argument("--profile", choices=list(F.PRESETS),
                      help="diff every variant with the engine on this behaviour preset")
    library = sub.add_parser(
        "library", parents=[common], help="list or run the built-in scenarios",
        description="List the built-in scenarios (`irqlab library`), or run some "
                    "(`irqlab library run NAME...`).")
    library_sub = library.add_subparsers(dest="library_cmd")
    library_run = library_sub.add_parser(
        "run", parents=[common, outputs, pics], help="run built-in scenarios", epilog=epilog,
        description="Run built-in scenarios. --profile / --irqchip replace vm.profile / "
                    "vm.irqchip in every variant (names and expectations are kept).")
    token = sub.add_parser(
        "token", help="manage bearer tokens (IRQLAB_TOKENS)",
        description="Bearer tokens for the service's tenants (README \"Tenants and tokens\").")
    token_sub = token.add_subparsers(dest="token_cmd", required=True)
    token_add = token_sub.add_parser(
        "add", help="make a token for TENANT and print it (once)",
        description="Generate a token for TENANT, append its SHA-256 and the tenant to the "
                    "token file (created with mode 0600) and print the token on standard "
                    "output. Only the hash is stored: keep the token. The service reads the "
                    "file at start-up.")
    token_add.add_argument("tenant", metavar="TENANT")
    token_add.add_argument("--file", type=Path, default=settings.tokens,
                           help=f"token file (IRQLAB_TOKENS, now {settings.tokens})")
    library_run.add_argument("names", nargs="+", metavar="NAME")
    library_run.add_argument("--profile", choices=list(F.PRESETS),
                             help="run every variant on this behaviour preset")
    library_run.add_argument("--irqchip", choices=["kernel", "split"],
                             help="run every variant with this irqchip mode")
    from app import suite

    suite.add_parser(sub, common, outputs)
    from app.campaign import cli as campaign_cli

    campaign_cli.add_parser(sub)
    from app.explore import cli as explore_cli

    explore_cli.add_parser(sub)
    cli_events.add_parser(sub)
    from app.upstream.cli import add_parsers as add_upstream_parsers

    add_upstream_parsers(sub)
    return parser


def _access_line(settings: Any, host: str) -> str:
    """The start line's access part: open (no tokens) or the tenants, and the state dir."""
    from app.api.tenants import TokenTable

    if settings.tokens is None:
        where = "anyone who can reach it" if host not in ("127.0.0.1", "::1", "localhost") \
            else "local users (127.0.0.1)"
        access = f"no tokens (IRQLAB_TOKENS unset): the API is open to {where}"
    else:
        table = TokenTable.load(settings.tokens)
        access = (f"bearer tokens required: {len(table.by_hash)} tokens, "
                  f"{len(table.tenants)} tenants ({settings.tokens})")
    state = f"state in {settings.state_dir} (fsync {settings.state_fsync})" \
        if settings.state_dir is not None else "VMs in memory only (IRQLAB_STATE_DIR unset)"
    return f"{access}; {state}"


def _token_add(args: argparse.Namespace) -> int:
    from app.api.tenants import TokenFileError, add_token

    if args.file is None:
        print("irqlab token add: no token file: pass --file or set IRQLAB_TOKENS",
              file=sys.stderr)
        return EXIT_ERROR
    try:
        token = add_token(args.file, args.tenant)
    except (TokenFileError, OSError) as exc:
        print(f"irqlab token add: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(token)
    print(f"irqlab: token for tenant {args.tenant!r} added to {args.file} (only its hash is "
          "stored: this is the only time it is shown; restart the service to use it)",
          file=sys.stderr)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = get_settings()
    if args.cmd == "serve":
        from app.engine import ENGINE_BUILD
        from app.serve import serve

        print(f"irqlab: engine {ENGINE_BUILD}", file=sys.stderr, flush=True)
        print(f"irqlab: {_access_line(settings, args.host)}", file=sys.stderr, flush=True)
        serve(args.host, args.port, args.log_level, settings.shutdown_timeout)
        return EXIT_OK
    if args.cmd == "token":
        return _token_add(args)
    if args.cmd == "diff":
        return _diff(args)
    if args.cmd == "suite":
        from app import suite

        return suite.command(args)
    if args.cmd == "campaign":
        from app.campaign import cli as campaign_cli

        return campaign_cli.run(args)
    if args.cmd == "explore":
        from app.explore import cli as explore_cli

        return explore_cli.main(args)
    if args.cmd == "events":
        return cli_events.run(args)
    if args.cmd in ("upstream", "probe"):
        from app.upstream.cli import run_probe_cmd, run_upstream_cmd

        return run_upstream_cmd(args) if args.cmd == "upstream" else run_probe_cmd(args)
    if args.cmd == "run" or getattr(args, "library_cmd", None) == "run":
        return _run(args)
    return _library(args)


if __name__ == "__main__":
    raise SystemExit(main())
