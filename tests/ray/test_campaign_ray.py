"""Campaigns on a local Ray cluster: the same result as in process, real KVM on the nodes that
have it, and a worker killed mid-run changes nothing (Ray re-runs its pure task)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Any

import pytest

from app.campaign.driver import CampaignSpec, run_local
from app.kvm.detect import kvm_available

KVM_OK, KVM_REASON = kvm_available()


def test_ray_matches_in_process(ray_cluster: Any) -> None:
    from app.campaign.on_ray import run_on_ray

    spec = CampaignSpec(seed=9, sequences=120, profiles=("linux-4.14", "linux-6.2", "kvm-pvm"),
                        batch=16)
    seen: list[tuple[int, int]] = []
    on_ray = run_on_ray(spec, lambda d, t: seen.append((d, t)))
    assert on_ray.as_dict() == run_local(spec).as_dict()
    assert on_ray.scenarios == run_local(spec).scenarios
    assert seen[-1] == (120, 120) and [d for d, _ in seen] == sorted(d for d, _ in seen)


@pytest.mark.skipif(not KVM_OK, reason=f"real KVM unavailable: {KVM_REASON}")
def test_ray_kvm_nodes(ray_cluster: Any) -> None:
    from app.campaign.on_ray import kvm_nodes, run_on_ray

    nodes = kvm_nodes()
    assert len(nodes) == 1 and nodes[0]["side"] == f"kvm@{os.uname().nodename}"
    spec = CampaignSpec(seed=4, sequences=40, profiles=("linux-latest",), kvm=True, batch=10,
                        irqchips=("kernel",))
    result = run_on_ray(spec)
    pair = f"{nodes[0]['profile']}|{nodes[0]['side']}"
    summary = next(s for s in result.pairs if s.pair == pair)
    assert summary.compared == 40 and summary.diverged == 0 and not result.errors


def _chunk_workers() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "ray::_run_chunk"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_killed_worker_is_recovered(ray_cluster: Any) -> None:
    """SIGKILL one worker while it runs a chunk: Ray re-runs the task; the result equals the
    in-process one (never a wrong or partial census)."""
    from app.campaign.on_ray import run_on_ray

    spec = CampaignSpec(seed=21, sequences=600, profiles=("linux-4.14", "linux-latest"),
                        batch=40)
    box: dict[str, Any] = {}
    t = threading.Thread(target=lambda: box.setdefault("r", run_on_ray(spec)))
    t.start()
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and t.is_alive() and time.monotonic() < deadline:
        pids = _chunk_workers()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.01)
    t.join(180)
    assert killed is not None, "no chunk worker was seen running"
    assert box["r"].as_dict() == run_local(spec).as_dict()
