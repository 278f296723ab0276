"""Where a campaign's chunks run: in this process, in local worker processes, or on Ray
(app.campaign.on_ray, imported only when asked for). Every backend runs the same
`runner.run_chunk` on the same chunks and folds the outcomes with `runner.aggregate`, so the
result does not depend on the backend (a test checks it)."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from .runner import CampaignResult, SequenceOutcome, aggregate, run_chunk

Progress = Callable[[int, int], None]  # (sequences done, sequences in all)
Seen = Callable[[list[SequenceOutcome]], None]  # a finished chunk's outcomes, as they come


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    """What to run: `sequences` seeded sequences (indices 0..sequences-1 of `seed`) on the
    model under every preset of `profiles`, in every irqchip mode of `irqchips`; with `kvm`,
    also against real KVM (this host's, or each Ray node's that has one)."""

    seed: int
    sequences: int
    profiles: tuple[str, ...]
    irqchips: tuple[str, ...] = ("kernel", "split")
    kvm: bool = False
    batch: int = 200  # sequences per chunk (per Ray task / worker job)
    save: int = 3  # diverging sequences saved as scenarios, per pair and mode
    extra: dict[str, Any] = field(default_factory=dict)

    def chunks(self) -> list[list[int]]:
        return [list(range(i, min(i + self.batch, self.sequences)))
                for i in range(0, self.sequences, self.batch)]


def local_kvm() -> dict[str, Any] | None:
    """This host's kernel side (preset, vendor, release) when /dev/kvm is usable, else None."""
    from app.kvm.detect import kvm_available, vendor_module
    from app.kvm.differential import host_profile

    ok, _reason = kvm_available()
    if not ok:
        return None
    return {"node": os.uname().nodename, "side": "kvm", "profile": host_profile(),
            "vendor": vendor_module(), "release": os.uname().release}


def run_local(spec: CampaignSpec, workers: int = 1, progress: Progress | None = None,
              seen: Seen | None = None) -> CampaignResult:
    """Run in this process (workers=1) or in `workers` local processes; `seen` gets each
    chunk's outcomes before `progress` counts them."""
    kvm = local_kvm() if spec.kvm else None
    if spec.kvm and kvm is None:
        raise RuntimeError("--kvm: this host has no usable /dev/kvm")
    kvm_profile = kvm["profile"] if kvm else None
    args = (list(spec.profiles), list(spec.irqchips), kvm_profile)
    outcomes: list[SequenceOutcome] = []
    done = 0
    if workers <= 1:
        for chunk in spec.chunks():
            got = run_chunk(spec.seed, chunk, *args)
            outcomes += got
            if seen:
                seen(got)
            done += len(chunk)
            if progress:
                progress(done, spec.sequences)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(run_chunk, spec.seed, chunk, *args): len(chunk)
                       for chunk in spec.chunks()}
            for fut in as_completed(futures):
                got = fut.result()
                outcomes += got
                if seen:
                    seen(got)
                done += futures[fut]
                if progress:
                    progress(done, spec.sequences)
    return aggregate(spec.seed, spec.sequences, list(spec.profiles), list(spec.irqchips),
                     outcomes, kvm=None if kvm is None else {"nodes": [kvm]}, save=spec.save)
