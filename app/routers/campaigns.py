"""Differential campaigns over HTTP: start one (202 + Location), poll it, follow its progress as
Server-Sent Events, cancel it. The campaign runs in a worker process (app/campaign/job.py
under app/work/jobs.py, as exploration jobs do); these handlers only validate, start and read.
Like exploration jobs, campaign jobs are service-wide (not per tenant)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    WithJsonSchema,
)

from app.api import types as T
from app.api.deps import SettingsDep
from app.api.job_routes import JobPath, job_of, manager_of, sse_response
from app.api.problems import DocumentError, LimitError, problem_responses
from app.campaign.cli import DEFAULT_PROFILES as CLI_DEFAULT_PROFILES
from app.campaign.driver import CampaignSpec
from app.campaign.job import campaign_worker
from app.engine import flags as F
from app.engine.errors import EngineError, ErrorKind
from app.settings import Settings
from app.work.jobs import Job, JobManager, JobsFull

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"],
                   responses=problem_responses(422))
DEFAULT_PROFILES = CLI_DEFAULT_PROFILES.split(",")  # as `irqlab campaign`
Irqchip = Literal["kernel", "split"]
IRQCHIPS: tuple[Irqchip, ...] = ("kernel", "split")


def _all_presets(value: Any) -> Any:
    return list(F.PRESETS) if value == "all" else value


# "all" is expanded before the list is checked, so a bad preset is reported at profiles[i]
# (a union would put its member's name into the error's path).
Profiles = Annotated[list[T.ProfileName], BeforeValidator(_all_presets), WithJsonSchema({
    "anyOf": [{"type": "array", "items": {"type": "string", "enum": list(F.PRESETS)}},
              {"type": "string", "const": "all"}]})]


class CampaignRequest(BaseModel):
    """The parameters of `irqlab campaign`, by the same names."""

    model_config = ConfigDict(extra="forbid")

    sequences: StrictInt = Field(
        ge=1, description="How many sequences (indices 0..sequences-1 of `seed`; at most "
                          "IRQLAB_MAX_CAMPAIGN_SEQUENCES).")
    seed: T.UInt = Field(1, description="Campaign seed: sequence i of seed s is the same "
                                        "everywhere.")
    profiles: Profiles = Field(
        default_factory=lambda: list(DEFAULT_PROFILES),
        description="Behaviour presets compared pairwise (at least two, unless `kvm`), or "
                    "all.")
    irqchips: list[Irqchip] = Field(
        default_factory=lambda: list(IRQCHIPS), min_length=1, max_length=2,
        description="Irqchip modes: each sequence runs in each.")
    kvm: StrictBool = Field(
        False, description="Also run every sequence on this host's /dev/kvm (each node's, "
                           "with IRQLAB_CAMPAIGN_RAY) against the preset of its own kernel.")
    batch: StrictInt = Field(200, ge=1, le=100_000,
                             description="Sequences per chunk (a progress step; a Ray task).")
    save: StrictInt = Field(3, ge=0, le=100,
                            description="Diverging sequences kept as scenario documents, per "
                                        "pair and irqchip mode.")
    max_seconds: float | None = Field(
        None, gt=0, description="Time budget (default and most IRQLAB_MAX_CAMPAIGN_SECONDS); "
                                "a campaign past it fails.")


class FirstDivergence(BaseModel):
    step: int = Field(description="Index of the step where the two sides first disagree.")
    kind: str = Field(description="That step's kind (line, rte, msi, ack, eoi, tpr, ioeoi).")
    fields: list[str] = Field(description="The observables that differ there.")


class PairRow(BaseModel):
    irqchip: str
    pair: str = Field(description="`A|B`: two presets, or a preset and a kernel (`kvm`).")
    compared: int
    diverged: int
    first_index: int | None = Field(description="The lowest sequence index that diverged.")
    first: FirstDivergence | None
    by_step_kind: dict[str, int]
    by_field: dict[str, int]
    saved: list[int] = Field(description="Sequence indices saved as scenario documents.")


class CampaignResult(BaseModel):
    """What `irqlab campaign --json` prints, plus the scenario documents it writes with
    --out."""

    seed: int
    sequences: int
    profiles: list[str]
    irqchips: list[str]
    kvm: dict[str, Any] | None = Field(description="The kernel sides (node, release, preset) "
                                                   "with `kvm`, else null.")
    pairs: list[PairRow] = Field(description="The census: one row per pair and irqchip mode.")
    errors: list[dict[str, Any]] = Field(description="Sequences whose kernel side failed.")
    scenarios: list[str] = Field(description="File names of the saved divergences.")
    seconds: float
    documents: dict[str, dict[str, Any]] = Field(
        description="Each saved divergence as a scenario document (by file name) that replays "
                    "the sequence up to the diverging step: POST it to /v1/scenarios/run.")


class CampaignView(BaseModel):
    id: str
    sequences: int
    seed: int
    profiles: list[str]
    irqchips: list[str]
    kvm: bool
    status: Literal["running", "done", "failed", "cancelled"]
    progress: dict[str, Any] = Field(description="The latest progress: sequences (done), "
                                                 "total, divergences (so far), seconds, "
                                                 "sequences_per_s.")
    result: CampaignResult | None = Field(description="When done.")
    error: str | None
    seconds: float


_DOCUMENT = {
    "name": "campaign-1-2-kernel-linux-4.14-vs-linux-6.1",
    "description": "Campaign seed 1, sequence 2 (kernel): linux-4.14 and linux-6.1 first "
                   "disagree at step 11 (line) on status.",
    "vm": {"vcpus": 1, "irqchip": "kernel"},
    "steps": [{"op": "write_rte", "vcpu": 0, "pin": 18, "entry": "0x80e0",
               "order": "low-first"},
              {"op": "line", "pin": 18, "level": 1}, {"op": "expect", "label": "divergence"}],
    "matrix": [{"name": p, "vm": {"profile": p}, "expect": {"divergence": {
        "remote_irr": [18], "vcpus": {"0": {"irr": [224], "isr": [], "tmr": [224],
                                            "ppr": 0}}}}} for p in ("linux-4.14", "linux-6.1")],
}
_JOB_EXAMPLE: dict[str, Any] = {
    "id": "5b1e0c7a9d2f4e31", "sequences": 300, "seed": 1,
    "profiles": ["linux-4.14", "linux-6.1"], "irqchips": ["kernel"], "kvm": False,
    "status": "done",
    "progress": {"sequences": 300, "total": 300, "divergences": 50, "seconds": 0.9,
                 "sequences_per_s": 333},
    "result": {
        "seed": 1, "sequences": 300, "profiles": ["linux-4.14", "linux-6.1"],
        "irqchips": ["kernel"], "kvm": None,
        "pairs": [{"irqchip": "kernel", "pair": "linux-4.14|linux-6.1", "compared": 300,
                   "diverged": 50, "first_index": 2,
                   "first": {"step": 11, "kind": "line", "fields": ["status"]},
                   "by_step_kind": {"line": 50}, "by_field": {"status": 50},
                   "saved": [2]}],
        "errors": [], "scenarios": ["campaign-1-2-kernel-linux-4.14-vs-linux-6.1.yaml"],
        "seconds": 0.9,
        "documents": {"campaign-1-2-kernel-linux-4.14-vs-linux-6.1.yaml": _DOCUMENT}},
    "error": None, "seconds": 1.4,
}
_JOB_RESPONSE = {"content": {"application/json": {"example": _JOB_EXAMPLE}}}
_REQUEST_EXAMPLES = {
    "census": {"summary": "What 4.15's Remote IRR fixes changed (in-kernel irqchip)",
               "value": {"sequences": 300, "seed": 1, "profiles": ["linux-4.14", "linux-6.1"],
                         "irqchips": ["kernel"], "save": 1}},
    "kvm": {"summary": "The model against this host's KVM",
            "value": {"sequences": 200, "profiles": ["kvm-pvm"], "irqchips": ["kernel"],
                      "kvm": True}},
}


def _manager(request: Request, settings: Settings) -> JobManager:
    return manager_of(request, "campaigns",
                      lambda: JobManager("campaign", settings.max_campaigns))


def _job(request: Request, settings: Settings, job_id: str) -> Job:
    return job_of(_manager(request, settings), job_id, "campaign")


def _view(job: Job) -> dict[str, Any]:
    view = job.view()
    results = view.pop("results")
    return {**view, "result": results[0] if results else None}


def _limit(field: str, value: float, maximum: float, limit: str) -> DocumentError:
    shown = int(maximum) if float(maximum).is_integer() else maximum
    return DocumentError(f"{field} {value} is over the limit of {shown} ({limit})", field,
                         error_type="limit_exceeded", limit=limit, maximum=shown)


def _no_kvm_here() -> str | None:
    """Why this host cannot run the kernel side, or None when it can."""
    from app.kvm.detect import kvm_available

    ok, reason = kvm_available()
    return None if ok else reason


@router.post("", status_code=202, response_model=CampaignView,
             summary="Start a differential campaign",
             responses={**problem_responses(409, 422),
                        202: {"description": "Started; Location names the job.",
                              "headers": {"Location": {"schema": {"type": "string"}}},
                              **_JOB_RESPONSE}},
             openapi_extra={"requestBody": {"content": {"application/json": {
                 "examples": _REQUEST_EXAMPLES}}}},
             description="`irqlab campaign` as a job in a worker process; answers at once. "
                         "Runs `sequences` seeded random operation sequences (line changes, "
                         "RTE writes, MSIs, interrupt windows (kvm_cpu_get_interrupt), EOIs, "
                         "IOAPIC EOI-register and TPR writes) on the model under every preset "
                         "and irqchip mode, and reports per pair of presets how many diverge "
                         "and the first that does: a census of what each KVM/QEMU change did. "
                         "With `kvm`, also on this host's /dev/kvm against its own preset (one "
                         "VM at a time in the worker process; 409 without a usable /dev/kvm). "
                         "Poll GET /v1/campaigns/{id} or follow GET …/events. At most "
                         "IRQLAB_MAX_CAMPAIGNS jobs run at once (409); `sequences` above "
                         "IRQLAB_MAX_CAMPAIGN_SEQUENCES or `max_seconds` above "
                         "IRQLAB_MAX_CAMPAIGN_SECONDS is 422.")
async def start_campaign(body: CampaignRequest, request: Request, response: Response,
                         settings: SettingsDep) -> dict[str, Any]:
    if body.sequences > settings.max_campaign_sequences:
        raise _limit("sequences", body.sequences, settings.max_campaign_sequences,
                     "IRQLAB_MAX_CAMPAIGN_SEQUENCES")
    max_seconds = body.max_seconds or settings.max_campaign_seconds
    if max_seconds > settings.max_campaign_seconds:
        raise _limit("max_seconds", max_seconds, settings.max_campaign_seconds,
                     "IRQLAB_MAX_CAMPAIGN_SECONDS")
    profiles = body.profiles
    if len(set(profiles)) != len(profiles):
        raise DocumentError("a preset is named twice", "profiles",
                            error_type="campaign_invalid")
    if len(set(body.irqchips)) != len(body.irqchips):
        raise DocumentError("an irqchip mode is named twice", "irqchips",
                            error_type="campaign_invalid")
    if len(profiles) < 2 and not body.kvm:
        raise DocumentError("name at least two presets (or set kvm)", "profiles",
                            error_type="campaign_invalid")
    if body.kvm:
        if settings.max_kvm_vms == 0:
            raise LimitError("the kvm backend is turned off (IRQLAB_MAX_KVM_VMS=0)", "kvm",
                             "IRQLAB_MAX_KVM_VMS", 0)
        if settings.campaign_ray is None:
            why = await run_in_threadpool(_no_kvm_here)
            if why is not None:
                raise EngineError(ErrorKind.UNSUPPORTED, f"kvm: this host has no usable "
                                                         f"/dev/kvm ({why})", "kvm")
    spec = CampaignSpec(body.seed, body.sequences, tuple(profiles), tuple(body.irqchips),
                        body.kvm, body.batch, body.save)
    info = {"sequences": body.sequences, "seed": body.seed, "profiles": profiles,
            "irqchips": body.irqchips, "kvm": body.kvm}
    manager = _manager(request, settings)
    try:
        job = await run_in_threadpool(
            manager.start, campaign_worker, (spec, max_seconds, settings.campaign_ray), info,
            max_seconds, {"sequences": 0, "total": body.sequences, "divergences": 0})
    except JobsFull:
        raise LimitError(f"{manager.max_jobs} campaign jobs are already running", None,
                         "IRQLAB_MAX_CAMPAIGNS", manager.max_jobs) from None
    response.headers["Location"] = f"/v1/campaigns/{job.id}"
    return _view(job)


@router.get("/{job_id}", response_model=CampaignView,
            summary="A campaign's status, progress and census",
            responses={**problem_responses(404), 200: _JOB_RESPONSE},
            description="Status (running, done, failed, cancelled), progress (sequences done "
                        "of total, divergences so far) and, when done, the census: per pair "
                        "of presets (or preset and the host's KVM) and irqchip mode, how many "
                        "sequences diverged, the first that did and at which step, and each "
                        "saved divergence as a scenario document that replays it.")
async def get_campaign(job_id: JobPath, request: Request,
                       settings: SettingsDep) -> dict[str, Any]:
    return _view(_job(request, settings, job_id))


@router.delete("/{job_id}", response_model=CampaignView, summary="Cancel a campaign",
               responses={**problem_responses(404), 200: _JOB_RESPONSE},
               description="Kills the worker process (with `kvm`, the kernel frees the VM it "
                           "had open on /dev/kvm with the process); the job stays listed as "
                           "cancelled, without a result.")
async def cancel_campaign(job_id: JobPath, request: Request,
                          settings: SettingsDep) -> dict[str, Any]:
    manager = _manager(request, settings)
    job = _job(request, settings, job_id)
    await run_in_threadpool(manager.cancel, job)
    return _view(job)


@router.get("/{job_id}/events", summary="Follow a campaign as Server-Sent Events",
            responses={**problem_responses(404),
                       200: {"description": "`progress` events (sequences done, total, "
                                            "divergences so far), one `result` event (the "
                                            "census) and a last `end` event with the status.",
                             "content": {"text/event-stream": {"example": (
                                 'event: progress\ndata: {"sequences":200,"total":300,'
                                 '"divergences":31}\n\nevent: end\ndata: {"status":"done",'
                                 '"error":null}\n\n')}}}},
            description="Server-Sent Events while the sequences run on the model's presets "
                        "(and KVM): a `progress` event when the job changes, `result` once "
                        "it is done, `end` last.")
async def campaign_events(job_id: JobPath, request: Request,
                          settings: SettingsDep) -> StreamingResponse:
    return sse_response(_job(request, settings, job_id), request)
