"""kvm-unit-tests' self-reconfigure test (app/scenarios/kut-self-reconfigure.yaml) on the
kvm_pvm host: which of its reports fail, and why "Higher priority IRQ should be blocked until
IRET restores RFLAGS.IF" passed there although both handlers ran twice.

The guest test's 0x84 handler reports only that g_isr_64 is non-zero. 0x84 is raised inside
0x64's handler, which runs with interrupts off, so whichever vCPU takes 0x84 and however often,
it does so after some run of 0x64's handler has counted: the report holds with g_isr_64 = 1 or
2. The scenario once asked for g_isr_64 == 1 (and 0x84 alone in vCPU0's ISR), stricter than the
guest test, and so predicted a failure the host did not show (docs/kvm-backend-notes.md, "The
kvm-unit-tests failures on this host").
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

import pytest

from app import scenarios as library
from app.api.scenarios import override_vm
from app.engine.scenario import run_scenario, variants
from app.kvm import scenario_diff
from app.kvm.differential import host_profile

from .conftest import ON_PVM, needs_kvm

NAME = "kut-self-reconfigure"
HOST_VARIANT = "split irqchip, x2APIC, 4 vCPUs (the host runs: -smp 4, +x2apic)"
HIGHER = "Higher priority IRQ should be blocked until IRET restores RFLAGS.IF"
# The reports of host-kvm-observations.md that failed (split, -smp 4): one "Reconfigure Remote
# IRR set" and both "Reconfigure self" reports; "Higher priority ..." passed.
HOST_FAILED = Counter({"Reconfigure Remote IRR set (pin 0x0d)": 1,
                       "Reconfigure self highest priority": 1,
                       "Reconfigure self lower priority": 1})


def _document(profile: str) -> dict[str, Any]:
    doc = library.get(NAME)
    assert doc is not None
    return override_vm(doc, profile)


def _guest_reports(variant: dict[str, Any]) -> list[tuple[str, bool]]:
    """The expectations that stand for the guest test's own reports, in the order they ran
    (handlers' first), with their outcome; the `irqlab:` ones check the model's state."""
    out = [(x["label"], x["passed"]) for x in variant["handler_expects"]]
    out += [(s["result"]["label"], s["result"]["passed"]) for s in variant["steps"]
            if s["op"] == "expect"]
    return [(label, ok) for label, ok in out
            if label is not None and not label.startswith(("irqlab:", "poll_remote_irr"))]


def _variant(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in result["variants"] if v["name"] == name)


def test_kvm_pvm_model_predicts_the_host_report_set() -> None:
    """Under the host's preset the model fails exactly the reports the host failed, and
    "Higher priority ..." passes in both runs of 0x84's handler."""
    v = _variant(run_scenario(_document("kvm-pvm")), HOST_VARIANT)
    reports = _guest_reports(v)
    assert Counter(label for label, ok in reports if not ok) == HOST_FAILED
    assert [ok for label, ok in reports if label == HIGHER] == [True, True]
    assert v["counters"]["g_isr_64"] == v["counters"]["g_isr_84"] == 2


def test_upstream_model_passes_every_report_once() -> None:
    """The same transcription under upstream KVM: every report runs once and passes."""
    v = _variant(run_scenario(_document("linux-latest")), HOST_VARIANT)
    reports = _guest_reports(v)
    assert all(ok for _, ok in reports), reports
    assert Counter(label for label, _ in reports)[HIGHER] == 1
    assert len(reports) == 5


class _RecordingSide(scenario_diff.KvmSide):
    """The KVM side, noting the vCPU and the KVM side's own g_isr_64 each time 0x84's handler
    starts (its first step is the report)."""

    seen: ClassVar[list[tuple[int | None, int]]] = []

    def run(self, step: dict[str, Any], where: str, vcpu: int | None = None,
            in_handler: bool = False, depth: int = 0) -> dict[str, Any]:
        if where == "handlers.0x84[0]":
            type(self).seen.append((vcpu, self.counters.get("g_isr_64", 0)))
        return super().run(step, where, vcpu, in_handler, depth)


@needs_kvm
@pytest.mark.parametrize("irqchip", ["kernel", "split"])
def test_higher_priority_report_holds_on_kvm(irqchip: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """On this host's KVM through irqlab's guest: 0x84's handler always starts with g_isr_64
    non-zero (the report passes); on kvm_pvm it runs twice, the second time on vCPU1 with
    g_isr_64 = 2, as the model says, and model and KVM agree at every step."""
    monkeypatch.setattr(scenario_diff, "KvmSide", _RecordingSide)
    monkeypatch.setattr(_RecordingSide, "seen", [])
    doc = _document(host_profile())
    name = (HOST_VARIANT if irqchip == "split"
            else "[ioapic] kernel irqchip, x2APIC, 4 vCPUs")
    _, cfg, extra = next(t for t in variants(doc) if t[0] == name)
    out = scenario_diff.diff_variant(doc, name, cfg, extra)
    assert out["stopped"] is None and out["differences"] == 0, out["first_difference"]
    seen = _RecordingSide.seen
    assert seen and all(g_isr_64 >= 1 for _, g_isr_64 in seen)
    if ON_PVM:
        assert seen == [(0, 1), (1, 2)]
    else:
        assert seen == [(0, 1)]
