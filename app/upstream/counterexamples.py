"""Every explorer counterexample, replayed on real kernels by the rig.

Host side (`collect`, before any boot): every exploration of the library is explored under
every preset; each violation's shortest counterexample is a standalone scenario document
(app.explore.counterexample). Counterexamples whose steps are the same under several presets
are one entry that lists every preset it was found under, so a trace found under linux-6.1
and linux-4.14 runs once per kernel.

Guest side (`replay`, inside each booted kernel): each entry runs through the diff harness
under the preset `irqlab probe` picked for that kernel (not the preset it was found under),
and the row says whether model and kernel agree (or the first differing step), what the
model under the kernel's preset predicts at the end of the trace, and what the kernel shows:
whether the violation (Remote IRR stuck with nothing in service) reproduces on the real
kernel. A counterexample found under linux-6.1 replayed on a 6.12 kernel must show the
fixed behaviour there. A counterexample that needs APICv is reported as not runnable: the
emulated CPU (TCG's SVM) has neither APICv nor AVIC, so kvm_amd runs a software LAPIC and a
pass there would say nothing about the posted-interrupt path the trace is about.
"""

from __future__ import annotations

import json
import time
from typing import Any

# Properties whose violation leaves Remote IRR set with nothing in service at the end of the
# trace, which the VMM (split) or KVM_GET_IRQCHIP (in-kernel) shows on the real kernel.
REMOTE_IRR_PROPERTIES = ("remote-irr-stuck", "eoi-not-forwarded", "eoi-will-be-lost")
NEEDS_APICV = "not runnable here: needs APICv (the emulated CPU has neither APICv nor AVIC)"
EXPLORE_STATES, EXPLORE_SECONDS = 200_000, 120.0


def _key(scenario: dict[str, Any]) -> str:
    """What makes two counterexamples the same trace: everything but the preset they were
    found under (named in the description and vm.profile)."""
    vm = {k: v for k, v in (scenario.get("vm") or {}).items() if k != "profile"}
    same = {k: v for k, v in scenario.items() if k not in ("description", "vm")}
    return json.dumps({**same, "vm": vm}, sort_keys=True)


def collect(profiles: list[str] | None = None,
            names: list[str] | None = None) -> dict[str, Any]:
    """{"census": [{exploration, profile, verdict, property, length}], "entries": [...],
    "seconds"}: every exploration (or `names`) under every preset (or `profiles`); one entry
    per distinct counterexample trace."""
    from app import explorations
    from app.engine import flags as F
    from app.explore.run import Options, explore

    t0 = time.monotonic()
    census: list[dict[str, Any]] = []
    entries: dict[str, dict[str, Any]] = {}
    options = Options(max_states=EXPLORE_STATES, max_seconds=EXPLORE_SECONDS)
    for name in names or explorations.names():
        doc = explorations.get(name)
        if doc is None:
            raise ValueError(f"no exploration named {name!r}")
        for profile in profiles or list(F.PRESETS):
            r = explore(doc, profile, options)
            ce = r["counterexample"]
            census.append({"exploration": name, "profile": profile, "verdict": r["verdict"],
                           "property": r["property"],
                           "length": ce["length"] if ce else None})
            if not ce:
                continue
            scenario = ce["scenario"]
            key = _key(scenario)
            if key not in entries:
                vm = scenario.get("vm") or {}
                entries[key] = {
                    "id": f"{name}@{profile}", "exploration": name, "found_under": [],
                    "property": r["property"], "length": ce["length"],
                    "irqchip": vm.get("irqchip", "kernel"), "vcpus": vm.get("vcpus", 1),
                    "needs_apicv": bool(vm.get("apicv")), "scenario": scenario}
            entries[key]["found_under"].append(profile)
    return {"census": census, "entries": list(entries.values()),
            "seconds": round(time.monotonic() - t0, 1)}


# ---- guest side


def _stuck(obs: dict[str, Any], vcpus: int) -> list[int]:
    """Pins whose Remote IRR is set while no vCPU has anything requested or in service: a
    level EOI that will never come (the quiescent end state of every Remote IRR
    counterexample; a vector still in some IRR will be taken and EOId)."""
    if any(obs.get(f"vcpus.{n}.{reg}") for n in range(vcpus) for reg in ("irr", "isr")):
        return []
    return sorted(int(p.split(".")[1]) for p, v in obs.items()
                  if p.startswith("pins.") and p.endswith(".remote_irr") and v)


def _end(obs: dict[str, Any], vcpus: int) -> dict[str, Any]:
    """The end state the table's verdict reads: Remote IRR pins, per vCPU IRR and ISR."""
    return {"remote_irr": sorted(int(p.split(".")[1]) for p, v in obs.items()
                                 if p.startswith("pins.") and p.endswith(".remote_irr") and v),
            "irr": [obs.get(f"vcpus.{n}.irr") for n in range(vcpus)],
            "isr": [obs.get(f"vcpus.{n}.isr") for n in range(vcpus)]}


def _model_final(doc: dict[str, Any], upto: int) -> tuple[dict[str, Any], list[str]]:
    """The model's observables and finding kinds after steps[:upto], played as the diff
    harness plays them (the guest's EOI runs the exits)."""
    from app.engine.scenario import Runner, variants
    from app.kvm.scenario_diff import _as_the_guest_does, engine_observables

    ((_name, cfg, extra),) = variants(doc)
    runner = Runner(doc, cfg, extra)
    for i, step in enumerate((doc.get("steps") or [])[:upto]):
        if step.get("op") == "expect":
            continue
        runner.step_index = i
        runner.run_step(_as_the_guest_does(step), f"steps[{i}]")
        runner.collect_findings()
    kinds = sorted({f["kind"] for f in runner.findings})
    return engine_observables(runner.vm, runner.counters), kinds


def replay_one(entry: dict[str, Any], profile: str,
               overrides: dict[str, bool] | None = None) -> dict[str, Any]:
    """One counterexample on this kernel under `profile` (+ `overrides`): the table's row."""
    from app.api.scenarios import override_vm
    from app.kvm.scenario_diff import diff_scenario

    from .guest import summarize_variant

    row: dict[str, Any] = {"id": entry["id"], "exploration": entry["exploration"],
                           "found_under": entry["found_under"], "property": entry["property"],
                           "irqchip": entry["irqchip"], "profile": profile}
    if entry["needs_apicv"]:
        row["status"] = "not-runnable"
        row["reason"] = NEEDS_APICV
        return row
    doc = override_vm(entry["scenario"], profile)
    if overrides:
        doc["vm"]["overrides"] = {**(doc["vm"].get("overrides") or {}), **overrides}
    row["predicted_violation"] = profile in entry["found_under"] and not overrides
    t0 = time.monotonic()
    result = diff_scenario(doc)
    (variant,) = result["variants"]
    row["seconds"] = round(time.monotonic() - t0, 2)
    row["diff"] = summarize_variant(variant)
    ran = [s for s in variant["steps"] if s["ran"] == "model+kvm"]
    row["status"] = ("differ" if variant["first_difference"] is not None
                     else "stopped" if variant["stopped"] else "agree")
    if variant["stopped"]:  # an op the guest cannot do: what ran before it is compared
        row["reason"] = variant["stopped"]["reason"]
    upto = variant["stopped"]["index"] if variant["stopped"] else len(doc["steps"])
    model, kinds = _model_final(doc, upto)
    kernel = dict(model)
    if ran:  # the kernel's observables: the model's, with the last step's differences
        for d in ran[-1]["differences"]:
            if not d["path"].startswith("result."):
                kernel[d["path"]] = d["kvm"]
    vcpus = int(entry["vcpus"])
    row["model"] = {"findings": kinds, "stuck_pins": _stuck(model, vcpus),
                    "end": _end(model, vcpus)}
    if entry["property"] in REMOTE_IRR_PROPERTIES and not variant["stopped"]:
        stuck = _stuck(kernel, vcpus)
        row["kernel"] = {"stuck_pins": stuck, "end": _end(kernel, vcpus)}
        row["reproduces"] = bool(stuck)
    else:
        # A trace cut short says nothing of its end. handled-vector-stale lives in KVM's
        # eoi_exit_bitmap, delivered-twice in what the guest took: neither leaves a state the
        # VMM or KVM_GET_LAPIC shows at the end, so the kernel's verdict is only the diff's
        # (agree: as the model under the kernel's preset).
        row["kernel"] = {"stuck_pins": _stuck(kernel, vcpus), "end": _end(kernel, vcpus)}
        row["reproduces"] = None
    return row


def replay(entries: list[dict[str, Any]], profile: str,
           overrides: dict[str, bool] | None = None) -> list[dict[str, Any]]:
    rows = []
    for entry in entries:
        try:
            rows.append(replay_one(entry, profile, overrides))
        except Exception as e:  # a harness failure is a row of the table, not a crash
            rows.append({"id": entry.get("id"), "exploration": entry.get("exploration"),
                         "found_under": entry.get("found_under"), "status": "error",
                         "reason": f"{type(e).__name__}: {e}"})
    return rows
