"""Issue 5: every library scenario, in-kernel and split, agrees with this host's real KVM under
the host's preset (app.kvm.differential.host_profile: kvm-pvm on kvm_pvm, linux-latest on an
upstream vendor module).

Each document runs through app.kvm.scenario_diff (the engine and a KvmVm side by side, compared
after every step) with vm.profile replaced by the host profile in every variant, as
`irqlab diff --profile kvm-pvm` does. Every variant that runs to the end must show no
difference, except:

- the KNOWN ones below: each names its scenario and variant, says why it differs, and explains
  exactly which differences it allows (a predicate over each difference), so a new or
  different disagreement in those variants fails too; and a KNOWN entry that no longer
  explains any difference fails test_known_exceptions_are_still_needed;
- variants that model an older kernel than the host's: their `overrides` pin a kernel flag
  (component kvm or kvm_pvm, not QEMU's, which configure irqlab's VMM alike on both sides) to
  a value the host preset does not have, e.g. directed-eoi-kernel-ioapic's "before
  0bcc3fb95b97" (SVR bit 12 sticks in the model; this 6.18 host has the fix and reads back
  0x1ff). Such a variant may differ only if the *same* variant with those flags set to the
  host's values agrees at every step: then the pinned flag is the whole difference, and the
  scenario's steps are still checked on the host's kernel.

Variants that stop at an op irqlab's guest cannot do (`exit`, ...) are not
compared past the stop; what ran before must agree. test_enough_variants_run keeps this from
passing vacuously (a harness regression that stops everything early fails it).

IRQLAB_DIFF_PROFILE=<preset> replaces the host profile (as in test_random_diff.py): with
linux-latest on kvm_pvm most kvm-unit-tests documents fail here (the implicit EOI).
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
from app.engine.flags import FLAGS, PRESETS, as_dict
from app.engine.scenario import variants
from app.kvm.differential import host_profile
from app.kvm.scenario_diff import KVM_SETTLE_CAP, diff_scenario

from .conftest import needs_kvm

# The settle budget given to documents whose handlers storm on this host (see KNOWN): both
# sides stop at their cap, so a full 10000-step storm only costs time (~50 s for the 9
# variants of kut-level-coalesce) and tells nothing more than 200 steps do.
STORM_BUDGET = 200
STORM_DOCS = {"kut-level-coalesce"}

# Variants that ran to the end on this host (kvm_pvm, after the x2APIC guest, the
# lapic/cli/sti/when steps and the resampler/irqfd steps): in-kernel 63 of 63, split 106 of 108
# (race2b-posted's 2 stop at `exit`). New guest ops only raise these; fewer means the harness
# stops earlier than it did.
MIN_COMPLETE = {"kernel": 63, "split": 106}

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
        doc["settle_budget"] = STORM_BUDGET  # both sides honour it (settle steps have none)
    return doc


@cache
def host_diff(name: str) -> dict[str, Any]:
    return diff_scenario(host_document(name))


def _host_kernel_flags() -> dict[str, bool]:
    """The flags of the host profile that the host's kernel decides (not QEMU's)."""
    return {k: v for k, v in as_dict(PRESETS[profile()].flags).items()
            if FLAGS[k].component != "qemu"}


def older_kernel_pins(cfg: dict[str, Any]) -> dict[str, bool]:
    """The kernel flags a variant's overrides pin to a value the host profile does not have."""
    host = _host_kernel_flags()
    return {k: v for k, v in (cfg.get("overrides") or {}).items()
            if k in host and host[k] != v}


@cache
def aligned_diff(name: str, variant: str) -> dict[str, Any]:
    """Variant `variant` of `name` alone, with the kernel flags it pins set to the host's."""
    doc = host_document(name)
    (cfg,) = [c for n, c, _ in variants(doc) if n == variant]
    host = _host_kernel_flags()
    overrides = {**(cfg.get("overrides") or {}),
                 **{k: host[k] for k in older_kernel_pins(cfg)}}
    one = {k: v for k, v in doc.items() if k != "matrix"}
    one["matrix"] = [{"name": variant, "vm": {**cfg, "overrides": overrides}}]
    # A variant's own expectations describe its pinned kernel: the diff ignores expect steps.
    (v,) = diff_scenario(one)["variants"]
    return v


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
    configs = {n: cfg for n, cfg, _ in variants(host_document(name))}
    for v in result["variants"]:
        assert v["skipped"] is None, v["skipped"]
        if v["stopped"] is not None:
            # The guest cannot do this op: nothing after it is compared. What ran before must
            # agree all the same (a KVM failure stops a variant too, and fails here).
            assert not v["stopped"]["reason"].startswith("KVM failed"), v["stopped"]
        if older_kernel_pins(configs[v["name"]]) and unexplained(name, v):
            # Another kernel than the host's: the pinned flags must be the whole difference.
            aligned = aligned_diff(name, v["name"])
            assert aligned["stopped"] == v["stopped"], aligned["stopped"]
            assert unexplained(name, aligned) == [], (
                f"{name} / {v['name']} ({v['irqchip']}) with the host's "
                f"{older_kernel_pins(configs[v['name']])} flipped")
            continue
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


@needs_kvm
def test_known_exceptions_are_still_needed() -> None:
    """Each KNOWN entry explains at least one difference that would otherwise fail (a guest or
    model change that makes its variants agree leaves no stale exception behind)."""
    if profile() != host_profile():
        pytest.skip("the exceptions describe the host profile")
    for k in KNOWN:
        used = [d for v in host_diff(k.scenario)["variants"]
                if known_for(k.scenario, v["name"]) is k
                for s in v["steps"] for d in s["differences"] if k.allows(s["op"], d, v)]
        assert used, f"stale exception: {k.scenario} / {k.variant}: nothing differs there"


def test_older_kernel_variants_are_found() -> None:
    """The variants pinning a kernel older than linux-latest's (and so the host's) are found
    by their overrides (runs without /dev/kvm)."""
    if profile() not in ("kvm-pvm", "linux-latest"):
        pytest.skip("the pins below are those of a kernel with every upstream fix")
    pinned = {(n, v) for n in library.names() for v, cfg, _ in variants(host_document(n))
              if older_kernel_pins(cfg)}
    assert ("directed-eoi-kernel-ioapic", "before 0bcc3fb95b97") in pinned
    assert ("directed-eoi-kernel-ioapic", "0bcc3fb95b97") not in pinned
    assert {v for n, v in pinned if n == "edge-switch-clears-remote-irr"} == {
        v for v, _, _ in variants(host_document("edge-switch-clears-remote-irr"))}
    # QEMU's flag configures irqlab's VMM alike on both sides: not a kernel pin.
    assert not any(n == "kut-level-mask" for n, _ in pinned)


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
    assert _irr_where_the_model_posts("line", {"path": "vcpus.0.irr", "model": [],
                                               "kvm": [0x64]}, v)
    assert not _irr_where_the_model_posts("settle", {"path": "vcpus.0.irr", "model": [],
                                                     "kvm": [0x64]}, v)
    assert not _irr_where_the_model_posts("line", {"path": "vcpus.0.isr", "model": [],
                                                   "kvm": [0x64]}, v)
