"""Run a campaign's sequences and aggregate what they show.

Two comparisons, both over the observations app.kvm.differential records after every step:
- model vs model: each sequence on the engine under every preset given; for each pair of
  presets the first step where they disagree (what the kernel changes between them did);
- model vs kernel: each sequence on the engine under the host's preset and on this host's
  /dev/kvm (`kvm=True`), the conformance question the real-KVM random test asks.

`run_chunk` is the unit of work every backend calls (in process, worker processes, Ray tasks):
a pure function of its arguments returning plain data, so results do not depend on where or in
which order chunks ran; `aggregate` folds the outcomes in index order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any

from app.kvm.differential import Observation, differing_fields, first_divergence, run_engine

from .sequences import PINS, Case, generate, scenario_steps, vm_block

KVM_SIDE = "kvm"  # the name the kernel's side takes in a pair ("kvm-pvm|kvm")


@dataclass(frozen=True, slots=True)
class Divergence:
    """Where two sides first disagree on one sequence."""

    step: int  # index into the sequence's steps
    kind: str  # that step's kind (rte, line, ack...)
    fields: tuple[str, ...]  # the observables that differ there


@dataclass(slots=True)
class SequenceOutcome:
    index: int
    irqchip: str
    steps: int
    # "P|Q" -> first divergence, or None when the two agree on every step.
    pairs: dict[str, Divergence | None] = field(default_factory=dict)
    # Per side, its observation at each pair's divergence step (for the saved scenario).
    at: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None  # the kernel side failed (not a divergence)


def pair_name(a: str, b: str) -> str:
    return f"{a}|{b}"


def _observation_view(o: Observation) -> dict[str, Any]:
    """The state part of an observation, in a scenario expectation's words."""
    vcpus: dict[int, dict[str, Any]] = {}
    for n, (irr, isr, tmr) in enumerate(zip(o.irr, o.isr, o.tmr, strict=True)):
        vcpus[n] = {
            "irr": [v for v in range(256) if irr >> v & 1],
            "isr": [v for v in range(256) if isr >> v & 1],
            "tmr": [v for v in range(256) if tmr >> v & 1],
        }
        if o.ppr:
            vcpus[n]["ppr"] = o.ppr[n]
    return {
        "remote_irr": [p for p, on in zip(PINS, o.remote_irr, strict=True) if on],
        "vcpus": vcpus,
        "ack_vector": o.ack_vector,
        "status": o.status,
    }


def _engine(case: Case, profile: str, irqchip: str) -> list[Observation]:
    return run_engine(list(case.steps), list(PINS), case.vcpus, profile=profile,
                      irqchip=irqchip, ioapic_version=case.ioapic_version,
                      routes_before_service=case.routes_before_service)


def _record(out: SequenceOutcome, a: str, b: str, obs_a: list[Observation],
            obs_b: list[Observation], steps: tuple[Any, ...]) -> None:
    d = first_divergence(obs_a, obs_b)
    name = pair_name(a, b)
    if d is None:
        out.pairs[name] = None
        return
    i, ma, mb = d
    out.pairs[name] = Divergence(i, str(steps[i][0]), tuple(differing_fields(ma, mb)))
    out.at[name] = {a: _observation_view(ma), b: _observation_view(mb)}


def run_sequence(seed: int, index: int, profiles: list[str], irqchip: str,
                 kvm_profile: str | None = None, kvm_side: str = KVM_SIDE) -> SequenceOutcome:
    """One sequence under every preset (and on /dev/kvm when `kvm_profile` names the preset
    that models this host; the kernel's side is called `kvm_side` in the pair's name)."""
    case = generate(seed, index)
    out = SequenceOutcome(index, irqchip, len(case.steps))
    obs = {p: _engine(case, p, irqchip) for p in profiles}
    for a, b in combinations(profiles, 2):
        _record(out, a, b, obs[a], obs[b], case.steps)
    if kvm_profile is not None:
        from app.kvm.differential import run_kvm  # only where /dev/kvm is used

        model = obs[kvm_profile] if kvm_profile in obs else _engine(case, kvm_profile, irqchip)
        try:
            real = run_kvm(list(case.steps), list(PINS), case.vcpus, irqchip=irqchip,
                           ioapic_version=case.ioapic_version,
                           routes_before_service=case.routes_before_service)
        except OSError as exc:
            out.error = f"{type(exc).__name__}: {exc}"
            return out
        _record(out, kvm_profile, kvm_side, model, real, case.steps)
    return out


def run_chunk(seed: int, indices: list[int], profiles: list[str], irqchips: list[str],
              kvm_profile: str | None = None, kvm_side: str = KVM_SIDE
              ) -> list[SequenceOutcome]:
    """The unit of work of every backend: sequences `indices` in every irqchip mode."""
    return [run_sequence(seed, i, profiles, chip, kvm_profile, kvm_side)
            for i in indices for chip in irqchips]


def is_kernel_side(name: str) -> bool:
    """A pair side that is a real kernel ("kvm", "kvm@host") rather than a preset."""
    return name == KVM_SIDE or name.startswith(KVM_SIDE + "@")


@dataclass(slots=True)
class PairSummary:
    """One pair of sides in one irqchip mode, over the whole campaign."""

    irqchip: str
    pair: str
    compared: int = 0
    diverged: int = 0
    first_index: int | None = None  # the lowest sequence index that diverged
    first: Divergence | None = None
    by_step_kind: Counter[str] = field(default_factory=Counter)
    by_field: Counter[str] = field(default_factory=Counter)
    saved: list[int] = field(default_factory=list)  # sequence indices saved as scenarios

    def as_dict(self) -> dict[str, Any]:
        return {
            "irqchip": self.irqchip, "pair": self.pair, "compared": self.compared,
            "diverged": self.diverged, "first_index": self.first_index,
            "first": None if self.first is None else asdict(self.first),
            "by_step_kind": dict(sorted(self.by_step_kind.items())),
            "by_field": dict(sorted(self.by_field.items())),
            "saved": self.saved,
        }


@dataclass(slots=True)
class CampaignResult:
    seed: int
    sequences: int
    profiles: list[str]
    irqchips: list[str]
    kvm: dict[str, Any] | None  # the host side: node, release, preset (None: model only)
    pairs: list[PairSummary]
    errors: list[dict[str, Any]]
    scenarios: dict[str, dict[str, Any]]  # file name -> scenario document

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "sequences": self.sequences, "profiles": self.profiles,
            "irqchips": self.irqchips, "kvm": self.kvm,
            "pairs": [p.as_dict() for p in self.pairs], "errors": self.errors,
            "scenarios": sorted(self.scenarios),
        }


def divergence_scenario(seed: int, outcome: SequenceOutcome, pair: str) -> dict[str, Any]:
    """A scenario document that replays sequence `outcome.index` up to the first step where
    the two sides of `pair` disagree and states, for each side, what it observed there. Model
    sides become matrix variants (each expects its own observation, so the document passes
    and shows the difference); the kernel side's observation is kept as the `kvm` note."""
    case = generate(seed, outcome.index)
    div = outcome.pairs[pair]
    assert div is not None
    a, b = pair.split("|")
    seen = outcome.at[pair]
    steps = scenario_steps(case.steps[: div.step + 1])
    steps.append({"op": "expect", "label": "divergence"})

    def expectation(side: str) -> dict[str, Any]:
        v = seen[side]
        return {"remote_irr": v["remote_irr"], "vcpus": v["vcpus"]}

    variants = [{"name": side, "vm": {"profile": side},
                 "expect": {"divergence": expectation(side)}}
                for side in (a, b) if not is_kernel_side(side)]
    description = (
        f"Campaign seed {seed}, sequence {outcome.index} ({outcome.irqchip}): {a} and {b} "
        f"first disagree at step {div.step} ({div.kind}) on {', '.join(div.fields)}.")
    for side in (a, b):
        if is_kernel_side(side):  # the kernel's observation, for whoever replays it there
            v = seen[side]
            description += (f" The kernel ({side}) observed: Remote IRR {v['remote_irr']}, "
                            f"vCPUs {v['vcpus']}, ack {v['ack_vector']}, status {v['status']}.")
    return {
        "name": f"campaign-{seed}-{outcome.index}-{outcome.irqchip}-{a}-vs-{b}".replace("@", "-"),
        "description": description,
        "vm": vm_block(case, outcome.irqchip),
        "steps": steps,
        "matrix": variants,
    }


def aggregate(seed: int, sequences: int, profiles: list[str], irqchips: list[str],
              outcomes: list[SequenceOutcome], kvm: dict[str, Any] | None = None,
              save: int = 3) -> CampaignResult:
    """Fold outcomes (any order) into per-pair summaries; the first `save` diverging sequences
    of each pair become scenario documents."""
    summaries: dict[tuple[str, str], PairSummary] = {}
    errors: list[dict[str, Any]] = []
    scenarios: dict[str, dict[str, Any]] = {}
    for out in sorted(outcomes, key=lambda o: (o.index, o.irqchip)):
        if out.error is not None:
            errors.append({"index": out.index, "irqchip": out.irqchip, "error": out.error})
        for pair, div in out.pairs.items():
            s = summaries.setdefault((out.irqchip, pair), PairSummary(out.irqchip, pair))
            s.compared += 1
            if div is None:
                continue
            s.diverged += 1
            s.by_step_kind[div.kind] += 1
            s.by_field.update(div.fields)
            if s.first_index is None:
                s.first_index, s.first = out.index, div
            if len(s.saved) < save:
                s.saved.append(out.index)
                doc = divergence_scenario(seed, out, pair)
                scenarios[f"{doc['name']}.yaml"] = doc
    pairs = [summaries[k] for k in sorted(summaries)]
    return CampaignResult(seed, sequences, profiles, irqchips, kvm, pairs, errors, scenarios)
