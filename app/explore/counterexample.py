"""A counterexample as a standalone scenario document: the exploration's setup, then one
scenario step per action of the shortest violating order, then an expect step stating the
violated property. `irqlab run` replays it to the same finding; `irqlab diff` runs it on real
KVM (its steps are the scenario vocabulary: enter, ack, line, patch_rte, eoi, ...)."""

from __future__ import annotations

import copy
from typing import Any

from app.engine import rte as R
from app.engine.scenario import run_scenario

from .document import BUILTIN_PROPERTIES
from .irq_model import IrqModel, IrqState
from .model_api import Action

FINDING_PROPERTIES = ("remote-irr-stuck", "eoi-not-forwarded", "eoi-will-be-lost",
                      "handled-vector-stale")


def trace_rows(trace: list[Action]) -> list[dict[str, Any]]:
    return [{"index": i, "actor": a.actor, "action": a.name} for i, a in enumerate(trace)]


def scenario_document(model: IrqModel, trace: list[Action], states: list[IrqState],
                      prop: str) -> dict[str, Any]:
    """The replayable scenario of a violating trace (`states[i]` is the state before
    `trace[i]`; the last state violates `prop`)."""
    exp = model.exp
    vm = {k: v for k, v in model.vm_cfg.items() if k != "event_log"}
    what = (BUILTIN_PROPERTIES[prop][1] if prop in BUILTIN_PROPERTIES
            else f"the user property {prop!r} does not hold")
    steps: list[dict[str, Any]] = copy.deepcopy(exp.setup)
    for i, a in enumerate(trace):
        step = model.scenario_step(states[i], a)
        step["label"] = f"{i + 1}: {a.name}"
        steps.append(step)
    doc: dict[str, Any] = {
        "name": f"{exp.name}-counterexample",
        "description": (f"A shortest order of {exp.name}'s actors and the hardware's moves "
                        f"under {model.profile} that violates {prop}: {what}. Found by "
                        "irqlab explore; replays with irqlab run."),
        "vm": vm,
        "steps": steps,
    }
    if exp.commits:
        doc["commits"] = list(exp.commits)
    if exp.raw.get("handlers"):
        doc["handlers"] = copy.deepcopy(exp.raw["handlers"])
    # Replay once to learn the findings the scenario runner reports, then state them (and
    # the violating state's Remote IRR and vCPU bitmaps) as the final expectation.
    run = run_scenario(doc)["variants"][0]
    kinds = sorted({f["kind"] for f in run["findings"]})
    final = states[-1].vm
    expect: dict[str, Any] = {
        "op": "expect",
        "label": f"violated: {prop}",
        "findings": kinds,
        "remote_irr": [p for p, e in enumerate(final.ioapic.redir) if e & R.REMOTE_IRR_BIT],
        "vcpus": {
            v.idx: {"irr": _vecs(v.irr), "isr": _vecs(v.isr),
                    "handled_vectors": _vecs(v.handled)}
            for v in final.vcpus
        },
    }
    doc["steps"].append(expect)
    return doc


def _vecs(bits: int) -> list[int]:
    return [i for i in range(256) if bits >> i & 1]
