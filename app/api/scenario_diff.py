"""POST /v1/scenarios/diff: a scenario document run on the engine model and on this host's
real KVM side by side (app.kvm.scenario_diff), with its response models and example.

The document is checked as for /run (limits, then a full engine run: a malformed document is
422 at the element's path), then /dev/kvm (409 `unsupported` with the reason when unusable),
then one kvm-backend VM slot is reserved for the whole diff (IRQLAB_MAX_KVM_VMS, and the
largest variant's vCPU count against IRQLAB_MAX_KVM_VCPUS: 409 `limit-reached`).
The variants run one after the other in a worker thread, one KVM VM at a time.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from app.engine.scenario import variants
from app.kvm.scenario_diff import diff_scenario
from app.settings import Settings

from . import bounded as B
from . import kvm_ops, ops
from .problems import problem_response
from .registry import Registry
from .scenarios import RunLimits, check_job

# ---- response models


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Difference(_Model):
    path: str = Field(description="What differs: `result.vector` (the step's own answer), "
                                  "`pins.N.raw` / `pins.N.remote_irr`, `vcpus.N.irr|isr|tmr|"
                                  "ppr`, `counters.NAME`.")
    model: Any = Field(description="The engine's value.")
    kvm: Any = Field(description="The value the host kernel reported.")


class DiffStep(_Model):
    index: int
    op: str | None
    label: str | None = None
    ran: Literal["model+kvm", "ignored", "unsupported"] = Field(
        description="`model+kvm`: run on both and compared; `ignored`: an expect step; "
                    "`unsupported`: not run, the variant stops here.")
    note: str | None = None
    differences: list[Difference]


class Stopped(_Model):
    index: int
    op: str | None
    reason: str


class FirstDifference(_Model):
    index: int
    op: str | None
    paths: list[str]


class DiffVariant(_Model):
    name: str
    irqchip: str
    vcpus: int
    profile: str
    skipped: str | None = Field(description="Why the variant was not run (null: it ran).")
    stopped: Stopped | None = Field(description="The step the variant stopped at, and why.")
    notes: list[str]
    steps: list[DiffStep]
    differences: int
    first_difference: FirstDifference | None


class HostFacts(_Model):
    kernel_release: str = Field(description="os.uname().release")
    vendor_module: str | None = Field(description="kvm_intel, kvm_amd or kvm_pvm")
    engine_profile: str = Field(description="The document's vm.profile (default "
                                            "linux-latest); variants may override it.")


class ScenarioDiff(_Model):
    name: str | None
    host: HostFacts
    expect_steps: str
    differences: int = Field(description="Differences over every variant and step.")
    variants: list[DiffVariant]


EXAMPLE_REQUEST = {
    "name": "edge-ack",
    "vm": {"vcpus": 1, "irqchip": "kernel"},
    "steps": [
        {"op": "write_rte", "pin": 3, "entry": {"vector": "0x41", "dest": 0}},
        {"op": "line", "pin": 3, "action": "pulse"},
        {"op": "ack", "vcpu": 0},
    ],
}

_STEPS = [
    {"index": 0, "op": "write_rte", "ran": "model+kvm", "differences": []},
    {"index": 1, "op": "line", "ran": "model+kvm", "differences": []},
    {"index": 2, "op": "ack", "ran": "model+kvm", "differences": [
        {"path": "vcpus.0.isr", "model": [65], "kvm": []},
        {"path": "vcpus.0.ppr", "model": 64, "kvm": 0}]},
]
EXAMPLE_RESPONSE = {
    "name": "edge-ack",
    "host": {"kernel_release": "6.18.44-fc-v782", "vendor_module": "kvm_pvm",
             "engine_profile": "linux-latest"},
    "expect_steps": "expectation steps describe the model: ignored (not run on KVM, not "
                    "compared)",
    "differences": 2,
    "variants": [{
        "name": "default", "irqchip": "kernel", "vcpus": 1, "profile": "linux-latest",
        "skipped": None, "stopped": None, "notes": [], "steps": _STEPS, "differences": 2,
        "first_difference": {"index": 2, "op": "ack", "paths": ["vcpus.0.isr", "vcpus.0.ppr"]},
    }],
}

DESCRIPTION = (
    "Run a scenario document (JSON or YAML, as POST /v1/scenarios/run) on the engine model "
    "and on this host's real KVM (/dev/kvm, irqlab's own guest; KVM_CREATE_IRQCHIP, or for a "
    "split variant KVM_CAP_SPLIT_IRQCHIP with irqlab as the VMM running the same QEMU IOAPIC "
    "code as the model) side by side, and report per step the differences of what both can "
    "observe afterwards: per pin the RTE (raw, without Remote IRR) and Remote IRR "
    "(KVM_GET_IRQCHIP, or the VMM's), per vCPU the IRR/ISR/TMR vectors, PPR, TPR, x2APIC "
    "mode, APIC id, LDR and DFR (KVM_GET_LAPIC, KVM_GET_SREGS), `count` counters, and the "
    "step's own answer (the vector of ack/take, an MMIO read's value, what a settle took, the "
    "LAPIC registers a lapic step wrote as the guest reads them back). A variant with "
    "vm.x2apic runs an x2APIC guest (KVM_CAP_X2APIC_API with the variant's x2apic_format / "
    "broadcast_quirk_disabled). Supported steps: line (source 0), write_rte, patch_rte, mmio "
    "(1, 2, 4 or 8 bytes), msi, lapic (xAPIC page or x2APIC MSRs, as the guest's mode), ack, "
    "eoi, enter (a no-op on KVM), count, take, settle (handlers run on both sides), cli/sti "
    "(the per-vCPU interrupt flag that gates take and settle) and when. Expect steps "
    "describe the model and are ignored. Another "
    "op stops that variant (`stopped`, the step marked `unsupported`). Each variant builds "
    "one engine VM (the variant's config) and one KVM VM with the same irqchip and vCPU "
    "count, one at a time, holding one IRQLAB_MAX_KVM_VMS slot; its vCPUs count against "
    "IRQLAB_MAX_KVM_VCPUS (409 limit-reached). 409 `unsupported` with the reason where "
    "/dev/kvm is unusable; a malformed document is 422 at the element's path, as for /run. "
    "The result names the host kernel release, the KVM vendor module and the engine profile. "
    "Differences are results (200)."
)


# ---- running


def _max_kvm_vcpus(doc: Any) -> int:
    """Every variant (in-kernel or split) builds one KVM VM of its vCPU count."""
    counts = [int(cfg.get("vcpus", 1)) for _, cfg, _ in variants(doc)]
    return max(counts, default=1)


def _diff_and_render(doc: Any) -> Response:
    return ops.render(ScenarioDiff, kvm_ops.guarded(lambda: diff_scenario(doc)))


def check_kvm() -> None:
    """409 unsupported when /dev/kvm is unusable here (or the watchdog cannot work)."""
    kvm_ops.require_kvm("real KVM")


async def diff(request: Request, body: bytes, settings: Settings,
               registry: Registry) -> Response:
    """Parse, check and run the document on the model in a worker process under the run
    budget (a malformed or too expensive document: 422 before any KVM VM), then run it on
    real KVM in a thread (KVM VMs live in this process: the kvm slot and /dev/kvm fds)."""
    try:
        checked = await B.call(request, check_job, body, request.headers.get("content-type"),
                               False, RunLimits.of(settings), request.url.path)
    except B.ClientGone:
        return problem_response("bad-request", "the client disconnected",
                                instance=request.url.path)
    except B.ServerStopping:
        return problem_response("service-unavailable", "the server is stopping",
                                instance=request.url.path, headers={"Retry-After": "1"})
    if isinstance(checked, tuple):  # the problem the worker rendered
        status, media_type, content = checked
        return Response(content, status_code=status, media_type=media_type)
    doc = checked
    check_kvm()
    async with registry.kvm_slot(_max_kvm_vcpus(doc)):
        return await run_in_threadpool(_diff_and_render, doc)
