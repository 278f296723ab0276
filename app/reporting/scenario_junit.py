"""Scenario results as JUnit: one <testsuite> per document, one <testcase> per variant and
matrix cell.

A test case is named `VARIANT [IRQCHIP, PROFILE]` (the variant's effective vm, so the cell is
visible in every CI's list even though the junit-10 schema has no per-case properties) with the
document's name as classname. A variant that did not pass is a <failure>: the message names the
failed expect labels and the findings, the body lists every failed check (path, expected,
actual), refused steps and the findings with their details. A document that could not be run
at all (malformed, unknown name, server error) is one <error> case. The suite's <properties>
hold the source, the scenario's commits and the profiles and irqchip modes its cases ran with.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.reporting.junit import Outcome, TestCase, TestSuite
from app.reporting.records import RunRecord, cell_text


def _fmt(value: Any, key: str) -> str:
    from app.cli import _fmt as cli_fmt  # the tables' formatting: vectors in hex

    return cli_fmt(value, key)


def _vm_facts(variant: dict[str, Any]) -> tuple[str, str]:
    vm = variant.get("vm") if isinstance(variant.get("vm"), dict) else {}
    assert isinstance(vm, dict)
    return str(vm.get("irqchip", "?")), str(vm.get("profile", "?"))


def case_name(variant: dict[str, Any]) -> str:
    irqchip, profile = _vm_facts(variant)
    return f"{variant.get('name')} [{irqchip}, {profile}]"


def failed_checks(variant: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, check) for every check that did not hold: expect steps, then handler expects."""
    out: list[tuple[str, dict[str, Any]]] = []
    for s in variant.get("steps") or ():
        res = s.get("result")
        if s.get("op") == "expect" and isinstance(res, dict):
            where = f"step {s.get('index')}" + (f" ({s['label']})" if s.get("label") else "")
            out += [(where, c) for c in res.get("checks") or () if not c.get("ok")]
    for x in variant.get("handler_expects") or ():
        where = f"{x.get('where')} (step {x.get('step')})" + (
            f" ({x['label']})" if x.get("label") else "")
        out += [(where, c) for c in x.get("checks") or () if not c.get("ok")]
    return out


def variant_text(variant: dict[str, Any], record: RunRecord) -> str:
    """The detail of one variant, as plain text: the cell, failed checks, refused steps and
    findings (the failure body, or the system-out of a passing case)."""
    irqchip, profile = _vm_facts(variant)
    lines = [f"document: {record.label}", f"profile: {profile}", f"irqchip: {irqchip}",
             f"overrides: {cell_text(record.cell)}"]
    checks = failed_checks(variant)
    if checks:
        lines.append(f"failed checks ({len(checks)}):")
        for where, c in checks:
            key = str(c.get("path")).rsplit(".", 1)[-1]
            lines.append(f"  {where}: {c.get('path')}: expected {_fmt(c.get('expected'), key)}, "
                         f"actual {_fmt(c.get('actual'), key)}")
    refused = [s for s in variant.get("steps") or () if not s.get("ok")]
    if refused:
        lines.append(f"refused steps ({len(refused)}):")
        for s in refused:
            lines.append(f"  step {s.get('index')} ({s.get('op')}): "
                         f"{(s.get('error') or {}).get('detail')}")
    findings = variant.get("findings") or []
    if findings:
        lines.append(f"findings ({len(findings)}):")
        for f in findings:
            lines.append(f"  step {f.get('step')}: {f.get('kind')}: {f.get('detail', '')}")
    return "\n".join(lines) + "\n"


def failure_message(variant: dict[str, Any]) -> str:
    checks = failed_checks(variant)
    where = list(dict.fromkeys(w for w, _ in checks))  # in step order
    parts = []
    if checks:
        parts.append(f"{len(checks)} check{'s' if len(checks) != 1 else ''} failed at "
                     + ", ".join(where))
    refused = sum(1 for s in variant.get("steps") or () if not s.get("ok"))
    if refused:
        parts.append(f"{refused} step{'s' if refused != 1 else ''} refused")
    kinds = sorted({str(f.get("kind")) for f in variant.get("findings") or ()})
    if kinds:
        parts.append("findings: " + ", ".join(kinds))
    return "; ".join(parts) or "variant did not pass"


def suites_from_records(records: Iterable[RunRecord]) -> list[TestSuite]:
    """One TestSuite per document (records of the same label, in first-seen order)."""
    by_label: dict[str, list[RunRecord]] = {}
    for r in records:
        by_label.setdefault(r.label, []).append(r)
    suites = []
    for label, recs in by_label.items():
        name = next((r.document for r in recs if r.result is not None), label)
        suite = TestSuite(name=name, time=sum(r.seconds for r in recs))
        profiles: list[str] = []
        irqchips: list[str] = []
        commits: list[str] = []
        for rec in recs:
            if rec.result is None:
                suite.cases.append(TestCase(
                    name=f"{label} ({cell_text(rec.cell)})", classname=name, time=rec.seconds,
                    error=Outcome(message=rec.error or "could not run", type="irqlab.error",
                                  body=f"document: {label}\noverrides: {cell_text(rec.cell)}\n"
                                       f"{rec.error}\n")))
                continue
            commits += [str(c) for c in rec.result.get("commits") or () if str(c) not in commits]
            variants = rec.result.get("variants") or []
            share = rec.seconds / len(variants) if variants else 0.0
            for v in variants:
                irqchip, profile = _vm_facts(v)
                if profile not in profiles:
                    profiles.append(profile)
                if irqchip not in irqchips:
                    irqchips.append(irqchip)
                case = TestCase(name=case_name(v), classname=name, time=share,
                                system_out=variant_text(v, rec))
                if not v.get("passed"):
                    case.failure = Outcome(message=failure_message(v), type="irqlab.expect",
                                           body=case.system_out)
                    case.system_out = ""
                suite.cases.append(case)
        suite.properties = {"source": label, "profile": ",".join(profiles),
                            "irqchip": ",".join(irqchips)}
        if commits:
            suite.properties["commits"] = ",".join(commits)
        suites.append(suite)
    return suites
