"""Scenarios: run a document, and the built-in library."""

from __future__ import annotations

import copy
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response

from app.api import bounded as B
from app.api import examples as X
from app.api import metrics, ops
from app.api import pictures as PIC
from app.api import scenario_diff as D
from app.api import scenario_models as SM
from app.api import scenarios as S
from app.api import types as T
from app.api.deps import RegistryDep, SettingsDep
from app.api.problems import DocumentError, engine_problem, problem_responses

router = APIRouter(prefix="/v1/scenarios", tags=["scenarios"],
                   responses=problem_responses(422))

_DOC = {"$ref": "#/components/schemas/ScenarioDocument"}
_LIST = S.listing()


def _problem(summary: str, exc: DocumentError) -> dict[str, Any]:
    body = engine_problem(exc, "/v1/scenarios/run").body
    return {"summary": summary, "value": json.loads(bytes(body))}


def _document_problems() -> dict[int | str, dict[str, Any]]:
    """The 413/415/422/503 entries, with scenario examples for 422."""
    out = problem_responses(413, 415, 422, 503)
    out[422] = copy.deepcopy(out[422])
    out[422]["description"] = "A malformed document, or one over a service limit"
    out[422]["content"]["application/problem+json"]["examples"] = {
        "bad-element": _problem("A step names pin 99", DocumentError(
            "must be in 0..23", "steps[3].pin")),
        "bad-op": _problem("An unknown op", DocumentError(
            "op must be one of line, irq, msi, ...", "steps[0].op")),
        "limit": _problem("Over IRQLAB_MAX_SETTLE_BUDGET", DocumentError(
            "settle budget 500000 is over the limit of 100000 (IRQLAB_MAX_SETTLE_BUDGET)",
            "steps[7].budget", error_type="limit_exceeded", limit="IRQLAB_MAX_SETTLE_BUDGET",
            maximum=100_000)),
        "yaml": _problem("A YAML syntax error", DocumentError(
            "YAML syntax error at line 3, column 9: expected ',' or ']', but got '}'", "body",
            error_type="yaml_invalid", line=3, column=9)),
    }
    return out


def _result_response(key: str, description: str,
                     pictures: bool = False) -> dict[int | str, dict[str, Any]]:
    content: dict[str, Any] = {"application/json": {"example": X.RESPONSES[key]}}
    if pictures:  # ?format=svg|html|perfetto|vcd
        content.update(PIC.picture_content("svg", "html", "vcd"))
        # format=perfetto is JSON too: the result or a Chrome trace-event document.
        content["application/json"]["schema"] = {"anyOf": [
            {"$ref": "#/components/schemas/ScenarioResult"},
            PIC.picture_content("perfetto")["application/json"]["schema"]]}
    return {200: {"description": description, "content": content}}


_VMS = (
    " For each variant of the document's matrix (one, `default`, without a matrix) a fresh "
    "VM is built as POST /v1/vms would (KVM_CREATE_VM, KVM_CREATE_IRQCHIP or "
    "KVM_CAP_SPLIT_IRQCHIP with QEMU's IOAPIC, KVM_CREATE_VCPU) and the steps run against it; "
    "no VM under /v1/vms is used or locked."
)
_RUN_DESC = _VMS + (
    " The result has, per variant, every step's result, "
    "each expect step's checks (path, expected, actual), the invariant findings, the whole "
    "event log and the final state. Expectation failures, findings and operations the "
    "modelled kernel refuses (-EINVAL, #GP: `ok: false` on that step) are results: HTTP 200 "
    "with `passed: false`. A malformed document is 422 whose `field` is the path of the bad "
    "element (`steps[3].pin`). More than IRQLAB_MAX_SCENARIO_STEPS steps (top level, "
    "handlers, when blocks), a settle budget over IRQLAB_MAX_SETTLE_BUDGET or more vCPUs "
    "than IRQLAB_MAX_VCPUS is 422 naming the field, with `limit` and `max`. Deterministic: "
    "the same document always gives the same result. `format` (or an Accept header naming "
    "text/html, image/svg+xml or text/x-vcd) answers with a picture of the run instead: the "
    "timelines as SVG, an HTML report, a Perfetto trace or a VCD; a variant that logged more "
    "than IRQLAB_MAX_PICTURE_EVENTS events is 422 (field `format`)."
)


@router.post(
    "/run", response_model=SM.ScenarioResult, summary="Run a scenario document",
    description="Run a scenario document (JSON, or YAML with Content-Type application/yaml "
                "or text/yaml; its JSON Schema is openapi/scenario.schema.json)." + _RUN_DESC,
    responses={**_result_response("scenario_run", "The result (also when expectations "
                                                  "fail), or its picture (`format`)",
                                  pictures=True),
               **_document_problems()},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": _DOC, "examples": X.SCENARIO_REQUESTS},
        "application/yaml": {"schema": _DOC, "example": X.SCENARIO_YAML},
        "text/yaml": {"schema": _DOC, "example": X.SCENARIO_YAML},
    }}},
)
async def run_document(request: Request, settings: SettingsDep,
                       fmt: PIC.FormatQuery = None, variant: PIC.VariantQuery = None,
                       observe: PIC.ObserveQuery = False) -> Response:
    fmt_ = PIC.negotiate(fmt, request.headers.get("accept"))
    with metrics.of(request).running("scenario-run"):
        return await B.respond(request, S.run_job, await request.body(),
                               request.headers.get("content-type"), False,
                               S.RunLimits.of(settings), request.url.path, fmt_, variant,
                               observe)


@router.post(
    "/diff", response_model=D.ScenarioDiff, summary="Diff a scenario: engine model vs real KVM",
    description=D.DESCRIPTION,
    responses={200: {"description": "The differences per variant and step (also when there "
                                    "are some)",
                     "content": {"application/json": {"example": D.EXAMPLE_RESPONSE}}},
               **_document_problems(), **problem_responses(400, 409)},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": _DOC, "examples": {"edge-ack": {
            "summary": "Edge pin 3, vector 0x41: program, pulse, ack",
            "value": D.EXAMPLE_REQUEST}}},
        "application/yaml": {"schema": _DOC, "example": X.SCENARIO_YAML},
        "text/yaml": {"schema": _DOC, "example": X.SCENARIO_YAML},
    }}},
)
async def diff_document(request: Request, settings: SettingsDep,
                        registry: RegistryDep) -> Response:
    with metrics.of(request).running("scenario-diff"):
        return await D.diff(request, await request.body(), settings, registry)


@router.get(
    "", response_model=SM.ScenarioList, summary="List the built-in scenarios",
    description="The built-in library (app/scenarios/*.yaml): regression scenarios for KVM "
                "and QEMU commits, each with its description, the commits it is about and "
                "its variants' names (typically a profile before a fix and one with it, or "
                "both irqchip modes). Example cut to two scenarios.",
    responses=_result_response("scenario_list", "The library"),
)
async def list_scenarios() -> Response:
    return ops.render(SM.ScenarioList, _LIST)


@router.get(
    "/{name}", summary="Get a built-in scenario",
    description="A library scenario's document, as JSON (integer keys of the YAML, e.g. "
                "handler vectors, become strings); POST it to /v1/scenarios/run, changed or "
                "not. Its steps drive the KVM/QEMU IOAPIC and LAPIC model.",
    responses={200: {"description": "The document", "content": {"application/json": {
        "schema": _DOC, "example": X.RESPONSES["scenario_document"]}}},
        **problem_responses(404)},
)
async def get_scenario(name: Annotated[str, Path(examples=["seed-race-split"])]) -> Response:
    return ops.render(None, S.document(name))


@router.post(
    "/{name}/run", response_model=SM.ScenarioResult, summary="Run a built-in scenario",
    description="Run a library scenario, as POST /v1/scenarios/run runs its document. "
                "`profile` and `irqchip`, when given, override the document's vm for every "
                "variant: each variant's vm.profile / vm.irqchip is replaced (names and "
                "expectations are kept), e.g. `profile=linux-6.1` runs every variant on a "
                "kernel before fceb3a36c29a, so a variant named after a fixed kernel fails "
                "its expectations: still 200, `passed: false`. A combination the document "
                "cannot run (e.g. irqchip=kernel with QEMU's IOAPIC version 0x20) is 422."
                + _VMS,
    responses={**_result_response("scenario_library_run", "The result (example: "
                                  "seed-race-split with profile=linux-6.1, cut to one "
                                  "variant), or its picture (`format`)", pictures=True),
               **problem_responses(404, 422, 503)},
)
async def run_library_scenario(
    request: Request,
    name: Annotated[str, Path(examples=["seed-race-split"])],
    settings: SettingsDep,
    profile: Annotated[T.ProfileName | None, Query(
        description="Replace every variant's vm.profile (GET /v1/profiles).",
        examples=["linux-6.1"])] = None,
    irqchip: Annotated[Literal["kernel", "split"] | None, Query(
        description="Replace every variant's vm.irqchip.")] = None,
    fmt: PIC.FormatQuery = None,
    variant: PIC.VariantQuery = None,
    observe: PIC.ObserveQuery = False,
) -> Response:
    doc = S.override_vm(S.document(name), profile, irqchip)
    fmt_ = PIC.negotiate(fmt, request.headers.get("accept"))
    with metrics.of(request).running("scenario-run"):
        return await _run_library(request, settings, doc, fmt_, variant, observe)


async def _run_library(request: Request, settings: SettingsDep, doc: dict[str, Any], fmt: str,
                       variant: str | None, observe: bool = False) -> Response:
    """A library document (already parsed) run in the bounded pool, answered in `fmt`."""
    return await B.respond(request, S.run_job, doc, None, True, S.RunLimits.of(settings),
                           request.url.path, fmt, variant, observe)


_GET_PICTURE = (
    " A library scenario is deterministic, so this GET runs it and draws the same picture "
    "every time: a URL to link to or put in an `<img>` (POST …/run with `format` does the "
    "same for any document). `profile` / `irqchip` override every variant's vm as in POST "
    "…/{name}/run; `variant` (a name or an index from 0) picks one. The run builds its own "
    "VMs (KVM_CREATE_VM + irqchip + vCPUs per variant) in a worker thread."
)
_Profile = Annotated[T.ProfileName | None, Query(
    description="Replace every variant's vm.profile (GET /v1/profiles).",
    examples=["linux-6.1"])]
_Irqchip = Annotated[Literal["kernel", "split"] | None, Query(
    description="Replace every variant's vm.irqchip.")]


@router.get(
    "/{name}/timeline.svg", summary="A built-in scenario's timeline (SVG)",
    description="The timelines of a library scenario's variants, stacked (or one, with "
                "`variant`): lanes for the device, the IOAPIC, the VMM/KVM and each vCPU, "
                "cause arrows, Remote IRR / IRR / ISR / request spans and the findings."
                + _GET_PICTURE,
    response_class=Response,
    responses={200: {"description": "The SVG", "content": PIC.picture_content("svg")},
               **problem_responses(404, 422, 503)},
)
async def scenario_timeline(request: Request,
                            name: Annotated[str, Path(examples=["seed-race-split"])],
                            settings: SettingsDep, profile: _Profile = None,
                            irqchip: _Irqchip = None,
                            variant: PIC.VariantQuery = None) -> Response:
    doc = S.override_vm(S.document(name), profile, irqchip)
    return await _run_library(request, settings, doc, "svg", variant)


@router.get(
    "/{name}/report.html", summary="A built-in scenario's HTML report",
    description="The self-contained HTML report of a library scenario's run: per variant the "
                "steps, expect checks, findings and timeline; neighbouring variants side by "
                "side with the first divergence of Remote IRR or handled vectors (KVM's EOI "
                "exit bitmap) highlighted." + _GET_PICTURE,
    response_class=Response,
    responses={200: {"description": "The report", "content": PIC.picture_content("html")},
               **problem_responses(404, 422, 503)},
)
async def scenario_report(request: Request,
                          name: Annotated[str, Path(examples=["seed-race-split"])],
                          settings: SettingsDep, profile: _Profile = None,
                          irqchip: _Irqchip = None,
                          variant: PIC.VariantQuery = None) -> Response:
    doc = S.override_vm(S.document(name), profile, irqchip)
    return await _run_library(request, settings, doc, "html", variant)
