"""Issue 5: every library scenario, in-kernel and split, agrees with this host's real KVM under
the host's preset (app.kvm.differential.host_profile: kvm-pvm on kvm_pvm, linux-latest on an
upstream vendor module).

Each document runs through app.kvm.scenario_diff (the engine and a KvmVm side by side, compared
after every step) with vm.profile replaced by the host profile in every variant, as
`irqlab diff --profile kvm-pvm` does. Every variant that runs to the end must show no
difference, except the KNOWN ones below: each names its scenario and variant, says why it
differs, and explains exactly which differences it allows (a predicate over each difference),
so a new or different disagreement in those variants fails too.

Variants that stop at an op irqlab's guest cannot do yet (`cli`, `lapic`, `resampler`, `exit`,
handlers that use them) are not compared past the stop; when the guest learns an op, those
variants run to the end and are checked here automatically. test_enough_variants_run keeps
this from passing vacuously (a harness regression that stops everything early fails it).

IRQLAB_DIFF_PROFILE=<preset> replaces the host profile (as in test_random_diff.py): with
linux-latest on kvm_pvm 16 of the 29 documents fail here (the implicit EOI; differences
before a stop count too).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest

from app import scenarios as library
from app.api.scenarios import override_vm
from app.engine.scenario import variants
from app.kvm.differential import host_profile
from app.kvm.scenario_diff import KVM_SETTLE_CAP, diff_scenario

from .conftest import needs_kvm

# The settle budget given to documents whose handlers storm on this host (see KNOWN): both
# sides stop at their cap, so a full 10000-step storm only costs time (~50 s for the 9
# variants of kut-level-coalesce) and tells nothing more than 200 steps do.
STORM_BUDGET = 200
STORM_DOCS = {"kut-level-coalesce"}

# Variants that ran to the end on this host (2026-11-25, kvm_pvm): in-kernel 45, split 83.
# New guest ops only raise these; fewer means the harness stops earlier than it did.
MIN_COMPLETE = {"kernel": 45, "split": 83}

Diff = dict[str, Any]  # {"path", "model", "kvm"} of one difference


@dataclass(frozen=True)
class Known:
    """A documented disagreement: `allows(op, diff, variant)` says whether one difference of
    a step with op `op` is the documented one."""

    scenario: str
    variant: str | None  # a regex the variant's name must match; None: every variant
    reason: str
    allows: Callable[[str, Diff, dict[str, Any]], bool]


def _storm_count(op: str, d: Diff, v: dict[str, Any]) -> bool:
    # The engine's settle budget counts VM entries as steps (one per vCPU before the first
    # take), the KVM side's cap counts takes only; both exhaust it.
    return (op == "settle" and d["path"] in ("result.taken_total", "counters.g_isr_98")
            and d["kvm"] == min(STORM_BUDGET, KVM_SETTLE_CAP)
            and STORM_BUDGET - v["vcpus"] <= d["model"] < STORM_BUDGET)


def _nothing_accepted_on_kvm(op: str, d: Diff, v: dict[str, Any]) -> bool:
    # Every difference is KVM having delivered/taken/counted nothing where the model did,
    # plus pin 14's Remote IRR: in-kernel KVM does not set it when no LAPIC accepted (model
    # True, KVM False at the line), QEMU's IOAPIC sets it before delivering and nobody EOIs
    # (model False, KVM True after the settle).
    if d["path"] == "pins.14.remote_irr":
        return True
    return d["kvm"] in ([], 0) and d["model"] not in ([], 0)


def _irr_where_the_model_posts(op: str, d: Diff, v: dict[str, Any]) -> bool:
    # The model (APICv) holds the vector in PIR, not IRR, until the vCPU's next entry; this
    # host's KVM has no APICv and sets IRR at once.
    return (op == "line" and re.fullmatch(r"vcpus\.\d+\.irr", d["path"]) is not None
            and set(d["model"]) < set(d["kvm"]))


KNOWN = [
    Known("kut-level-coalesce", None,
          "harness: scenario handlers have no conditionals, so the handler re-raises the line "
          "on every run (kvm-unit-tests on the first only); under kvm_pvm's implicit EOI each "
          "take re-delivers the still-high line and both sides storm until their settle cap, "
          "which the engine counts in steps (VM entries included) and the KVM side in takes",
          _storm_count),
    Known("kut-logical-destination", None,
          "harness: the variant's vCPUs are x2APIC (cluster logical IDs); irqlab's guest stays "
          "in xAPIC mode with LDR 0, so no LAPIC matches the logical destination on KVM",
          _nothing_accepted_on_kvm),
    Known("kut-self-reconfigure", r".*APICv",
          "the variant models APICv (posted interrupts); this host has none, so the line's "
          "vector is in IRR on KVM and in PIR in the model",
          _irr_where_the_model_posts),
]


def known_for(scenario: str, variant: str) -> Known | None:
    for k in KNOWN:
        if k.scenario == scenario and (k.variant is None or re.fullmatch(k.variant, variant)):
            return k
    return None


def profile() -> str:
    return os.environ.get("IRQLAB_DIFF_PROFILE") or host_profile()


def host_document(name: str) -> dict[str, Any]:
    """The library document `name` with every variant on the host profile."""
    doc = library.get(name)
    assert doc is not None
    doc = override_vm(doc, profile())
    if name in STORM_DOCS:
        # On each settle step: the KVM side of scenario_diff reads a step's `budget` but not
        # the document's `settle_budget` (only the engine's Runner does).
        for step in doc["steps"]:
            if step.get("op") == "settle":
                step["budget"] = STORM_BUDGET
    return doc


@cache
def host_diff(name: str) -> dict[str, Any]:
    return diff_scenario(host_document(name))


def unexplained(name: str, v: dict[str, Any]) -> list[tuple[int, str, Diff]]:
    """The differences of variant `v` that no Known entry explains."""
    known = known_for(name, v["name"])
    return [(s["index"], s["op"], d) for s in v["steps"] for d in s["differences"]
            if known is None or not known.allows(s["op"], d, v)]


@needs_kvm
@pytest.mark.parametrize("name", library.names())
def test_library_scenario_agrees_under_the_host_profile(name: str) -> None:
    result = host_diff(name)
    assert result["host"]["engine_profile"] == profile()
    for v in result["variants"]:
        assert v["skipped"] is None, v["skipped"]
        if v["stopped"] is not None:
            # The guest cannot do this op: nothing after it is compared. What ran before must
            # agree all the same (a KVM failure stops a variant too, and fails here).
            assert not v["stopped"]["reason"].startswith("KVM failed"), v["stopped"]
        assert unexplained(name, v) == [], f"{name} / {v['name']} ({v['irqchip']})"


@needs_kvm
def test_enough_variants_run() -> None:
    complete = {"kernel": 0, "split": 0}
    for name in library.names():
        for v in host_diff(name)["variants"]:
            if v["stopped"] is None and v["skipped"] is None:
                complete[v["irqchip"]] += 1
    for irqchip, n in MIN_COMPLETE.items():
        assert complete[irqchip] >= n, complete


def test_known_exceptions_name_real_variants() -> None:
    """Each KNOWN entry matches at least one variant of an existing library document (so a
    renamed scenario or variant does not leave a stale exception behind)."""
    for k in KNOWN:
        doc = library.get(k.scenario)
        assert doc is not None, k.scenario
        names = [n for n, _, _ in variants(doc)]
        assert any(k.variant is None or re.fullmatch(k.variant, n) for n in names), k


def test_known_predicates_are_narrow() -> None:
    """The predicates explain only their own differences (runs without /dev/kvm)."""
    v = {"vcpus": 2}
    cap = min(STORM_BUDGET, KVM_SETTLE_CAP)
    assert _storm_count("settle", {"path": "result.taken_total", "model": STORM_BUDGET - 2,
                                   "kvm": cap}, v)
    assert not _storm_count("settle", {"path": "result.taken_total", "model": 1, "kvm": 2}, v)
    assert not _storm_count("ack", {"path": "result.taken_total",
                                    "model": STORM_BUDGET - 1, "kvm": cap}, v)
    assert not _storm_count("settle", {"path": "vcpus.0.irr", "model": [], "kvm": [0x98]}, v)
    assert _nothing_accepted_on_kvm("line", {"path": "vcpus.2.irr", "model": [0x86],
                                             "kvm": []}, v)
    assert not _nothing_accepted_on_kvm("line", {"path": "vcpus.2.irr", "model": [],
                                                 "kvm": [0x86]}, v)
    assert _irr_where_the_model_posts("line", {"path": "vcpus.0.irr", "model": [],
                                               "kvm": [0x64]}, v)
    assert not _irr_where_the_model_posts("settle", {"path": "vcpus.0.irr", "model": [],
                                                     "kvm": [0x64]}, v)
    assert not _irr_where_the_model_posts("line", {"path": "vcpus.0.isr", "model": [],
                                                   "kvm": [0x64]}, v)
