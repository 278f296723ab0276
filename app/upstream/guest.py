"""The rig's guest side: `python -m app.upstream.guest JOB.json`, run inside the VM booted by
the rig (as root, with the Debian kernel's own kvm + kvm_amd loaded), against its /dev/kvm.

The job (written by the host into the output share) says what to run:

    {"out": "/…/result.json", "kernel": "6.1.192", "profile": null | "linux-6.1",
     "library": true | false | [names], "irqchips": ["kernel", "split"],
     "random": 300, "probe": true, "counterexamples": [entries of
     app.upstream.counterexamples.collect, computed on the host]}

Results are written to `out` as JSON after every part (a guest that dies mid-run leaves what
it finished): facts about the kernel's KVM, the library table (per scenario and variant:
agree, or the first differing step), the random-sequence counts, the probe's flags.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from app import scenarios as library
from app.api.scenarios import override_vm
from app.kvm.detect import kvm_available, vendor_module
from app.kvm.differential import describe, differing_fields, preset_for_release
from app.kvm.scenario_diff import diff_scenario

# Documents whose handlers re-raise their line on every run storm under an implicit EOI; a
# smaller settle budget keeps their cost bounded (both sides honour it).
STORM_DOCS = {"kut-level-coalesce": 200}


def _write(out: Path, result: dict[str, Any]) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, out)


def facts() -> dict[str, Any]:
    ok, why = kvm_available()
    params: dict[str, str] = {}
    pdir = Path("/sys/module/kvm_amd/parameters")
    for name in ("npt", "avic", "nested", "vgif", "vls"):
        p = pdir / name
        if p.exists():
            params[name] = p.read_text().strip()
    return {"release": os.uname().release, "version": os.uname().version,
            "kvm": ok, "kvm_detail": why, "vendor_module": vendor_module(),
            "kvm_amd_parameters": params, "python": sys.version.split()[0]}


def summarize_variant(v: dict[str, Any]) -> dict[str, Any]:
    """One variant's diff reduced to the table's cell: agree / differ (first differing step
    with what differed) / stopped (an op the guest cannot do; what ran before is compared)."""
    first = v.get("first_difference")
    cell: dict[str, Any] = {"variant": v["name"], "irqchip": v["irqchip"],
                            "vcpus": v["vcpus"], "agree": first is None and not v["skipped"],
                            "stopped": v["stopped"], "skipped": v["skipped"]}
    if first is not None:
        step = next(s for s in v["steps"] if s["index"] == first["index"])
        cell["first_difference"] = {"index": first["index"], "op": first["op"],
                                    "label": step.get("label"),
                                    "differences": step["differences"][:8]}
        cell["differing_steps"] = sum(1 for s in v["steps"] if s["differences"])
    return cell


def run_library(names: list[str], profile: str, irqchips: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        doc = library.get(name)
        if doc is None:
            rows.append({"scenario": name, "error": "not in the library"})
            continue
        doc = override_vm(doc, profile)
        if name in STORM_DOCS:
            doc["settle_budget"] = STORM_DOCS[name]
        t0 = time.monotonic()
        try:
            result = diff_scenario(doc)
        except Exception as e:  # a harness failure is a result for the table, not a crash
            rows.append({"scenario": name, "error": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc()[-2000:]})
            continue
        cells = [summarize_variant(v) for v in result["variants"]
                 if v["irqchip"] in irqchips]
        row: dict[str, Any] = {"scenario": name, "seconds": round(time.monotonic() - t0, 2),
                               "variants": cells}
        rows.append(row)
    return rows


class RandomTally:
    """Counts the random sequences of one irqchip mode that agree, and keeps the first
    differences (the first MAX_ACCOUNTS with their full account)."""

    MAX_ACCOUNTS = 20

    def __init__(self, irqchip: str, profile: str) -> None:
        self.irqchip, self.profile = irqchip, profile
        self.seen = self.agree = 0
        self.failures: list[dict[str, Any]] = []

    def visit(self, case: Any) -> None:
        from app.kvm.random_sequences import compare_case

        self.seen += 1
        try:
            div = compare_case(case, self.irqchip, self.profile)
        except Exception as e:  # a harness failure is counted, not raised (no shrinking)
            self.failures.append({"error": f"{type(e).__name__}: {e}", "case": repr(case)})
            return
        if div is None:
            self.agree += 1
        elif len(self.failures) < self.MAX_ACCOUNTS:
            i, m, r = div
            self.failures.append({"step": i, "op": case[2][i][0],
                                  "fields": differing_fields(m, r),
                                  "account": describe(div, case[2])})
        else:
            self.failures.append({"step": div[0], "op": case[2][div[0]][0]})


def run_random(count: int, profile: str, irqchips: list[str]) -> dict[str, Any]:
    from app.kvm.random_sequences import for_each_case

    out: dict[str, Any] = {}
    for irqchip in irqchips:
        t0 = time.monotonic()
        tally = RandomTally(irqchip, profile)
        for_each_case(count, tally.visit)
        out[irqchip] = {"sequences": tally.seen, "agree": tally.agree,
                        "differ": tally.seen - tally.agree,
                        "seconds": round(time.monotonic() - t0, 1),
                        "failures": tally.failures}
    return out


def main(argv: list[str]) -> int:
    job_path = Path(argv[0])
    job = json.loads(job_path.read_text())
    out = Path(job["out"])
    t0 = time.monotonic()
    # The counterexamples' documents are in the host's report already: the job names them.
    echo = {**job, "counterexamples": [e["id"] for e in job.get("counterexamples") or ()]}
    result: dict[str, Any] = {"job": echo, "facts": facts(), "parts": {}}
    _write(out, result)
    if not result["facts"]["kvm"]:
        result["error"] = f"no usable /dev/kvm: {result['facts']['kvm_detail']}"
        _write(out, result)
        return 1
    profile = job.get("profile") or preset_for_release(job.get("kernel") or os.uname().release)
    result["profile"] = profile
    irqchips = list(job.get("irqchips") or ["kernel", "split"])
    if job.get("probe"):
        from app.kvm.probe import probe

        t = time.monotonic()
        result["probe"] = probe(base_profile=profile)
        result["parts"]["probe"] = round(time.monotonic() - t, 1)
        _write(out, result)
    if job.get("counterexamples"):
        from .counterexamples import replay

        # Under the preset the probe picked for this kernel (its overrides too), else the
        # release's.
        rec = (result.get("probe") or {}).get("recommended") or {"profile": profile,
                                                                  "overrides": {}}
        t = time.monotonic()
        result["counterexample_profile"] = rec
        result["counterexamples"] = replay(job["counterexamples"], rec["profile"],
                                           rec["overrides"])
        result["parts"]["counterexamples"] = round(time.monotonic() - t, 1)
        _write(out, result)
    lib = job.get("library")
    if lib:
        names = library.names() if lib is True else list(lib)
        t = time.monotonic()
        result["library"] = run_library(names, profile, irqchips)
        result["parts"]["library"] = round(time.monotonic() - t, 1)
        _write(out, result)
    if job.get("random"):
        t = time.monotonic()
        result["random"] = run_random(int(job["random"]), profile, irqchips)
        result["parts"]["random"] = round(time.monotonic() - t, 1)
        _write(out, result)
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["done"] = True
    _write(out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
