"""Explorations over HTTP: start a search (202 + Location), poll it, follow its progress as
Server-Sent Events, cancel it; list the built-in library. The search runs in a worker process
(app/explore/jobs.py); these handlers only validate, start and read."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import explorations as library
from app.api import types as T
from app.api.deps import SettingsDep
from app.api.job_routes import JobPath, job_of, manager_of, sse_response
from app.api.problems import DocumentError, LimitError, problem_responses
from app.engine import flags as F
from app.engine.errors import EngineError
from app.explore.document import parse
from app.explore.irq_model import IrqModel
from app.explore.jobs import explore_worker
from app.settings import Settings
from app.work.jobs import Job, JobManager, JobsFull

router = APIRouter(prefix="/v1/explorations", tags=["explorations"],
                   responses=problem_responses(422))


def _request_schema(schema: dict[str, Any]) -> None:
    schema["oneOf"] = [{"required": ["document"]}, {"required": ["name"]}]
    schema["properties"]["document"] = {
        "anyOf": [{"$ref": "#/components/schemas/ExplorationDocument"}, {"type": "null"}],
        "description": schema["properties"]["document"].get("description", "")}


class ExplorationRequest(BaseModel):
    """What to explore: a document or a library name, under which profiles, with what budget."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_request_schema)

    document: dict[str, Any] | None = Field(
        None, description="An exploration document (openapi/exploration.schema.json); the "
                          "explorer checks it, a bad element is 422 at `document.<path>`.")
    name: str | None = Field(None, description="A library exploration (GET …/library).")
    profiles: list[T.ProfileName] | Literal["all"] | None = Field(
        None, description="Behaviour presets, or all (default: the document's profile).")
    max_states: StrictInt | None = Field(
        None, ge=1, description="Distinct states per profile before the verdict is bounded "
                                "(default and most IRQLAB_MAX_EXPLORATION_STATES).")
    max_seconds: float | None = Field(
        None, gt=0, description="Seconds per profile before the verdict is bounded (default "
                                "and most IRQLAB_MAX_EXPLORATION_SECONDS).")

    @model_validator(mode="after")
    def _one_source(self) -> ExplorationRequest:
        if (self.document is None) == (self.name is None):
            raise ValueError("give exactly one of document and name")
        return self


class JobView(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    exploration: str
    profiles: list[str]
    status: Literal["running", "done", "failed", "cancelled"]
    progress: dict[str, Any] = Field(description="The latest progress: profile, states, "
                                                 "frontier, max_depth, states_per_s, seconds.")
    results: list[dict[str, Any]] = Field(
        description="One per finished profile: verdict, property, stats, counterexample "
                    "(as `irqlab explore --json`).")
    error: str | None
    seconds: float


class LibraryEntry(BaseModel):
    name: str
    description: str
    commits: list[str]
    expect: dict[str, str]


_MOVES = (" The explorer interleaves the actors' steps with the hardware's own moves: each "
          "vCPU's KVM_RUN (vcpu_enter_guest consuming KVM_REQ_SCAN_IOAPIC, an EOI exit that "
          "reaches QEMU as KVM_EXIT_IOAPIC_EOI), each acknowledgement (kvm_cpu_get_interrupt) "
          "and each handler step.")
_JOB_EXAMPLE: dict[str, Any] = {
    "id": "3f0c2a9d1b7e4c55", "exploration": "seed-race-split",
    "profiles": ["linux-6.1", "linux-6.2"], "status": "done",
    "progress": {"profile": "linux-6.2", "states": 50, "transitions": 71, "max_depth": 17,
                 "frontier": 0, "seconds": 0.01, "states_per_s": 5000},
    "results": [{"exploration": "seed-race-split", "profile": "linux-6.1",
                 "verdict": "violation", "property": "eoi-not-forwarded",
                 "stats": {"states": 25, "transitions": 32, "max_depth": 8},
                 "counterexample": {"length": 7, "steps": [
                     {"index": 0, "actor": "device", "action": "device: line pin=5 level=1"}],
                     "scenario": {"name": "seed-race-split-counterexample", "steps": []}}},
                {"exploration": "seed-race-split", "profile": "linux-6.2",
                 "verdict": "verified", "property": None,
                 "stats": {"states": 50, "transitions": 71, "max_depth": 17},
                 "counterexample": None}],
    "error": None, "seconds": 1.2,
}
_JOB_RESPONSE = {"content": {"application/json": {"example": _JOB_EXAMPLE}}}
_REQUEST_EXAMPLES = {
    "library": {"summary": "A library exploration under two presets",
                "value": {"name": "seed-race-split", "profiles": ["linux-6.1", "linux-6.2"]}},
    "document": {"summary": "A document of your own", "value": {
        "document": {
            "name": "mine", "vm": {"vcpus": 2, "irqchip": "split"},
            "setup": [{"op": "write_rte", "vcpu": 0, "pin": 5,
                       "entry": {"vector": 64, "trigger": "level", "dest": 0}},
                      {"op": "enter", "vcpu": 0}, {"op": "enter", "vcpu": 1}],
            "handlers": {"64": [{"op": "line", "pin": 5, "level": 0},
                                {"op": "patch_rte", "pin": 5, "fields": {"dest": 1}},
                                {"op": "eoi"}]},
            "actors": {"device": {"steps": [{"op": "line", "pin": 5, "level": 1}]}},
            "properties": ["remote-irr-stuck"]},
        "profiles": "all", "max_states": 100000}},
}


def _manager(request: Request, settings: Settings) -> JobManager:
    return manager_of(request, "explorations",
                      lambda: JobManager("explore", settings.max_explorations))


def _job(request: Request, settings: Settings, job_id: str) -> Job:
    return job_of(_manager(request, settings), job_id, "exploration")


@router.get("/library", response_model=list[LibraryEntry],
            summary="The built-in explorations",
            description="The explorations shipped with irqlab (app/explorations): KVM/QEMU "
                        "races written as programs, each with the verdicts it should reach "
                        "per behaviour preset (`expect`).",
            responses={200: {"content": {"application/json": {"example": [{
                "name": "seed-race-split", "description": "The seed race as a program.",
                "commits": ["fceb3a36c29a"],
                "expect": {"linux-6.1": "violation", "linux-6.2": "verified"}}]}}}})
async def list_library() -> list[dict[str, Any]]:
    out = []
    for n in library.names():
        doc = library.get(n) or {}
        out.append({"name": n, "description": doc.get("description", ""),
                    "commits": doc.get("commits", []), "expect": doc.get("expect", {})})
    return out


async def _library_method_not_allowed() -> None:
    raise StarletteHTTPException(405)


# /library is a literal path beside /{job_id}: without this guard DELETE /library would reach
# cancel() and fail its job-id check (422); the spec says only GET is served there (405).
router.add_api_route("/library", _library_method_not_allowed, include_in_schema=False,
                     methods=["DELETE", "POST", "PUT", "PATCH"])
router.routes[-1].refuses_methods = True  # type: ignore[attr-defined]


def _check(doc: dict[str, Any], profiles: list[str]) -> str:
    """Parse the document and build its model under each profile (runs its setup): every
    document error is found here, before a worker is started. Returns the name."""
    exp = parse(doc)
    for p in profiles:
        IrqModel(exp, p)
    return exp.name


@router.post("", status_code=202, response_model=JobView,
             summary="Start exploring every interleaving",
             responses={**problem_responses(409, 422),
                        202: {"description": "Started; Location names the job.",
                              "headers": {"Location": {"schema": {"type": "string"}}},
                              **_JOB_RESPONSE}},
             openapi_extra={"requestBody": {"content": {"application/json": {
                 "examples": _REQUEST_EXAMPLES}}}},
             description="Start an exploration job in a worker process and answer at once: "
                         "breadth-first search of every interleaving, per profile verified, "
                         "violation (with the shortest counterexample as a replayable "
                         "scenario) or bounded." + _MOVES + " Poll GET /v1/explorations/{id} "
                         "or follow GET …/events (Server-Sent Events). At most "
                         "IRQLAB_MAX_EXPLORATIONS jobs run at once (409); budgets above "
                         "IRQLAB_MAX_EXPLORATION_STATES / _SECONDS are 422.")
async def start(body: ExplorationRequest, request: Request, response: Response,
                settings: SettingsDep) -> dict[str, Any]:
    raw = await request.json()
    if body.name is not None:
        doc = library.get(body.name)
        if doc is None:
            raise DocumentError(f"no exploration named {body.name!r} in the library "
                                f"({', '.join(library.names())})", "name",
                                error_type="exploration_invalid")
    else:
        doc = raw["document"]
    max_states = body.max_states or settings.max_exploration_states
    if max_states > settings.max_exploration_states:
        raise DocumentError(f"max_states {max_states} is over the limit of "
                            f"{settings.max_exploration_states} (IRQLAB_MAX_EXPLORATION_STATES)",
                            "max_states", error_type="limit_exceeded",
                            limit="IRQLAB_MAX_EXPLORATION_STATES",
                            maximum=settings.max_exploration_states)
    max_seconds = body.max_seconds or settings.max_exploration_seconds
    if max_seconds > settings.max_exploration_seconds:
        raise DocumentError(f"max_seconds {max_seconds} is over the limit of "
                            f"{settings.max_exploration_seconds} "
                            "(IRQLAB_MAX_EXPLORATION_SECONDS)", "max_seconds",
                            error_type="limit_exceeded", limit="IRQLAB_MAX_EXPLORATION_SECONDS",
                            maximum=int(settings.max_exploration_seconds))
    if body.profiles == "all":
        profiles = list(F.PRESETS)
    elif body.profiles:
        profiles = list(dict.fromkeys(body.profiles))
    else:
        profiles = [(doc.get("vm") or {}).get("profile", "linux-latest")]
    try:
        name = await run_in_threadpool(_check, doc, profiles)
    except EngineError as exc:
        prefix = "document." if body.name is None and exc.field else ""
        raise DocumentError(exc.detail, f"{prefix}{exc.field}" if exc.field else "document",
                            error_type="exploration_invalid") from None
    manager = _manager(request, settings)
    args = (doc, profiles, max_states, max_seconds, settings.max_exploration_memory_mb,
            settings.exploration_ray, settings.exploration_ray_workers)
    try:
        job = await run_in_threadpool(manager.start, explore_worker, args,
                                      {"exploration": name, "profiles": profiles},
                                      max_seconds * len(profiles))
    except JobsFull:
        raise LimitError(f"{manager.max_jobs} exploration jobs are already running",
                         None, "IRQLAB_MAX_EXPLORATIONS", manager.max_jobs) from None
    response.headers["Location"] = f"/v1/explorations/{job.id}"
    return job.view()


@router.get("/{job_id}", response_model=JobView, summary="A job's status, progress and results",
            responses={**problem_responses(404), 200: _JOB_RESPONSE},
            description="Status (running, done, failed, cancelled), the latest progress and "
                        "one result per finished profile, each with its counterexample: the "
                        "order of KVM_RUN entries, acknowledgements and handler steps that "
                        "breaks the property.")
async def get_job(job_id: JobPath, request: Request, settings: SettingsDep) -> dict[str, Any]:
    return _job(request, settings, job_id).view()


@router.delete("/{job_id}", response_model=JobView, summary="Cancel a job",
               responses={**problem_responses(404), 200: _JOB_RESPONSE},
               description="Stops the worker process (no KVM state is involved: the search "
                           "runs on the model); the job stays listed as cancelled with the "
                           "profiles it finished.")
async def cancel(job_id: JobPath, request: Request, settings: SettingsDep) -> dict[str, Any]:
    manager = _manager(request, settings)
    job = _job(request, settings, job_id)
    await run_in_threadpool(manager.cancel, job)
    return job.view()


@router.get("/{job_id}/events", summary="Follow a job as Server-Sent Events",
            responses={**problem_responses(404),
                       200: {"description": "`progress` events (states, frontier, depth, "
                                            "rate), a `result` event per finished profile and "
                                            "a last `end` event with the job's status.",
                             "content": {"text/event-stream": {"example": (
                                 'event: progress\ndata: {"profile":"linux-6.1",'
                                 '"states":25}\n\nevent: end\ndata: {"status":"done",'
                                 '"error":null}\n\n')}}}},
            description="Server-Sent Events while the search explores KVM's and QEMU's "
                        "interleavings: a `progress` event when the job changes, `result` "
                        "per finished profile, `end` last.")
async def events(job_id: JobPath, request: Request, settings: SettingsDep) -> StreamingResponse:
    return sse_response(_job(request, settings, job_id), request)
