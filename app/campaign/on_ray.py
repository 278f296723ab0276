"""Campaigns on a Ray cluster (the optional `ray` extra; nothing else in irqlab imports this).

Chunks of sequences become Ray tasks (a chunk is `spec.batch` sequences, hundreds of
milliseconds of work, so Ray's per-task cost of ~1 ms is noise); at most `2 x cluster CPUs`
tasks are in flight at once and `ray.wait` collects them as they finish (back-pressure: the
driver never holds more than that many pending results). Tasks are pure functions of their
arguments, so a task whose worker dies is simply re-run by Ray (`max_retries`), and the result
is the same as in process.

Real-KVM sequences run on every alive node that has a usable /dev/kvm, each node against the
preset of its own kernel (a probe task pinned to each node asks it), its side named
`kvm@<hostname>`.
"""

from __future__ import annotations

import os
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from app.ray_cluster import connect

from .driver import CampaignSpec, Progress, Seen
from .runner import KVM_SIDE, CampaignResult, SequenceOutcome, aggregate, run_chunk

TASK_RETRIES = 3
__all__ = ["connect", "kvm_nodes", "run_on_ray"]
# Ray's API is only partly annotated; calls into it go through this untyped alias.
_ray: Any = ray


def _run_chunk(seed: int, indices: list[int], profiles: list[str], irqchips: list[str],
               kvm_profile: str | None, kvm_side: str) -> list[SequenceOutcome]:
    return run_chunk(seed, indices, profiles, irqchips, kvm_profile, kvm_side)


# Ray's decorators applied as calls through the untyped alias: mypy --strict holds whether or
# not the extra is installed.
_chunk = _ray.remote(max_retries=TASK_RETRIES)(_run_chunk)


def _probe_node() -> dict[str, Any]:
    from app.campaign.driver import local_kvm

    found = local_kvm()
    return {"node": os.uname().nodename, "kvm": found}


_probe = _ray.remote(num_cpus=0.1)(_probe_node)


def kvm_nodes() -> list[dict[str, Any]]:
    """Every alive node's kernel side, for the nodes with a usable /dev/kvm."""
    out = []
    for node in _ray.nodes():
        if not node.get("Alive"):
            continue
        strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        answer = _ray.get(_probe.options(scheduling_strategy=strategy).remote())
        if answer["kvm"] is not None:
            side = dict(answer["kvm"], node_id=node["NodeID"],
                        side=f"{KVM_SIDE}@{answer['node']}")
            out.append(side)
    return sorted(out, key=lambda s: str(s["side"]))


def run_on_ray(spec: CampaignSpec, progress: Progress | None = None,
               seen: Seen | None = None) -> CampaignResult:
    cpus = max(1, int(_ray.cluster_resources().get("CPU", 1)))
    in_flight_max = 2 * cpus
    chunks = spec.chunks()
    jobs: list[tuple[list[int], dict[str, Any], tuple[Any, ...]]] = [
        (c, {}, (list(spec.profiles), list(spec.irqchips), None, KVM_SIDE)) for c in chunks]
    nodes = kvm_nodes() if spec.kvm else []
    if spec.kvm and not nodes:
        raise RuntimeError("--kvm: no node of the Ray cluster has a usable /dev/kvm")
    for node in nodes:
        strategy = NodeAffinitySchedulingStrategy(node_id=node["node_id"], soft=False)
        # The model side of these is the node's own preset; the preset-vs-preset comparisons
        # are already in the model-only jobs above.
        jobs += [(c, {"scheduling_strategy": strategy},
                  ([node["profile"]], list(spec.irqchips), node["profile"], node["side"]))
                 for c in chunks]
    total = spec.sequences * (1 + len(nodes))
    outcomes: list[SequenceOutcome] = []
    pending: dict[Any, int] = {}
    done = 0
    queue = list(jobs)
    while queue or pending:
        while queue and len(pending) < in_flight_max:
            indices, options, rest = queue.pop(0)
            ref = _chunk.options(**options).remote(spec.seed, indices, *rest)
            pending[ref] = len(indices)
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            got = _ray.get(ref)
            outcomes += got
            if seen:
                seen(got)
            done += pending.pop(ref)
        if progress:
            progress(done, total)
    merged = _merge(outcomes)
    kvm = {"nodes": [{k: v for k, v in n.items() if k != "node_id"} for n in nodes]} \
        if spec.kvm else None
    return aggregate(spec.seed, spec.sequences, list(spec.profiles), list(spec.irqchips),
                     merged, kvm=kvm, save=spec.save)


def _merge(outcomes: list[SequenceOutcome]) -> list[SequenceOutcome]:
    """One outcome per (sequence, irqchip): the kernel nodes' pairs join the model's."""
    by_key: dict[tuple[int, str], SequenceOutcome] = {}
    for o in outcomes:
        have = by_key.get((o.index, o.irqchip))
        if have is None:
            by_key[(o.index, o.irqchip)] = o
            continue
        have.pairs.update(o.pairs)
        have.at.update(o.at)
        have.error = have.error or o.error
    return [by_key[k] for k in sorted(by_key)]
