"""Glue between HTTP (and the CLI) and the scenario runner: reading documents (JSON or YAML),
the service limits, the profile/irqchip override of library runs, and running a document with
the engine's refusals of it turned into DocumentError (422 at the element's path).

A run builds its own VMs, so it holds no VM lock; it is CPU-bound, so the whole of it (parsing
the body, checking, running, rendering) is one job for a worker process (run_job, through
app/api/bounded.py) under the run budget, and the event loop only waits for its bytes.
"""

from __future__ import annotations

import copy
import json
import re
from collections import deque
from dataclasses import dataclass
from typing import Any

import pydantic_core
from fastapi import Response
from pydantic import ValidationError

from app import scenarios as library
from app.engine.errors import EngineError, not_found
from app.engine.ints import grammar_int
from app.engine.scenario import (
    DEFAULT_SETTLE_BUDGET,
    STEP_OPS,
    BudgetExceeded,
    RunBudget,
    run_scenario,
    variants,
)
from app.settings import Settings

from . import scenario_models as SM
from .problems import (
    PROBLEM_MEDIA_TYPE,
    DocumentError,
    UnsupportedMediaType,
    engine_problem,
    problem_response,
)
from .safe_load import DEFAULT_LIMITS, DocumentLimits, load_json, load_yaml

JSON_MEDIA_TYPES = ("application/json",)
YAML_MEDIA_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
ACCEPTED = "application/json, application/yaml or text/yaml"

# ---- reading documents


def parse_document(body: bytes, content_type: str | None,
                   limits: DocumentLimits = DEFAULT_LIMITS) -> Any:
    """The body as a document: YAML for application/yaml or text/yaml, JSON for
    application/json (or no Content-Type); anything else is 415. Bounded (safe_load.py)."""
    media = (content_type or "").split(";")[0].strip().lower() or "application/json"
    if media in YAML_MEDIA_TYPES:
        return load_yaml(body, limits)
    if media in JSON_MEDIA_TYPES or media.endswith("+json"):
        return load_json(body, limits)
    raise UnsupportedMediaType(media, ACCEPTED)


def parse_json(text: bytes | str, limits: DocumentLimits = DEFAULT_LIMITS) -> Any:
    return load_json(text, limits)


def parse_yaml(text: bytes | str, limits: DocumentLimits = DEFAULT_LIMITS) -> Any:
    """YAML with aliases, depth and size bounded, refusing what JSON cannot say (timestamps,
    binary, non-finite floats, keys that are not strings or integers), so a YAML document
    runs as its JSON twin."""
    return load_yaml(text, limits)


def document_limits(settings: Settings) -> DocumentLimits:
    return DocumentLimits(settings.max_document_nodes, settings.max_document_depth)


# ---- limits and overrides


def _over(what: str, value: int, field: str, setting: str, maximum: int) -> DocumentError:
    return DocumentError(f"{what} {value} is over the limit of {maximum} ({setting})", field,
                         error_type="limit_exceeded", limit=setting, maximum=maximum)


def check_limits(doc: Any, settings: RunLimits) -> Any:
    """Hold a document to IRQLAB_MAX_SCENARIO_STEPS (every step: top level, in handlers, in
    `when` blocks), IRQLAB_MAX_SETTLE_BUDGET, IRQLAB_MAX_VCPUS and
    IRQLAB_MAX_MATRIX_VARIANTS. Returns the document to run:
    when the engine's default settle budget is over the cap, settle steps without a budget
    get the cap. Shapes the engine would refuse are left for it to report."""
    if not isinstance(doc, dict):
        return doc
    total = 0
    budgets: list[tuple[str, Any]] = []
    queue: deque[tuple[str, Any]] = deque([("steps", doc.get("steps"))])
    handlers = doc.get("handlers")
    if isinstance(handlers, dict):
        queue.extend((f"handlers.{key}", steps) for key, steps in handlers.items())
    while queue:
        where, steps = queue.popleft()
        if not isinstance(steps, list):
            continue
        total += len(steps)
        for i, step in enumerate(steps):
            if not isinstance(step, dict):
                continue
            if step.get("op") == "settle" and "budget" in step:
                budgets.append((f"{where}[{i}].budget", step["budget"]))
            elif step.get("op") == "when":
                queue.append((f"{where}[{i}].steps", step.get("steps")))
    if total > settings.max_scenario_steps:
        raise DocumentError(
            f"the document has {total} steps (top level, handlers and when blocks); at most "
            f"{settings.max_scenario_steps} are allowed (IRQLAB_MAX_SCENARIO_STEPS)", "steps",
            error_type="limit_exceeded", limit="IRQLAB_MAX_SCENARIO_STEPS",
            maximum=settings.max_scenario_steps)
    cap = settings.max_settle_budget
    if "settle_budget" in doc:
        budgets.insert(0, ("settle_budget", doc["settle_budget"]))
    for field, value in budgets:
        n = grammar_int(value)
        if n is not None and n > cap:
            raise _over("settle budget", n, field, "IRQLAB_MAX_SETTLE_BUDGET", cap)
    vms = [("vm", doc.get("vm"))]
    matrix = doc.get("matrix")
    if isinstance(matrix, list) and len(matrix) > settings.max_matrix_variants:
        raise _over("a matrix of", len(matrix), "matrix", "IRQLAB_MAX_MATRIX_VARIANTS",
                    settings.max_matrix_variants)
    if isinstance(matrix, list):
        vms += [(f"matrix[{i}].vm", m.get("vm")) for i, m in enumerate(matrix)
                if isinstance(m, dict)]
    for where, vm in vms:
        if isinstance(vm, dict):
            n = vm.get("vcpus")  # the engine takes integers only
            if type(n) is int and n > settings.max_vcpus:
                raise _over("vcpus", n, f"{where}.vcpus", "IRQLAB_MAX_VCPUS",
                            settings.max_vcpus)
    if "settle_budget" not in doc and cap < DEFAULT_SETTLE_BUDGET:
        doc = {**doc, "settle_budget": cap}
    return doc


def override_vm(doc: dict[str, Any], profile: str | None = None,
                irqchip: str | None = None) -> dict[str, Any]:
    """The document with vm.profile / vm.irqchip replaced in every variant (the document's vm
    and each matrix entry's vm); variant names and expectations are kept."""
    changes = {k: v for k, v in (("profile", profile), ("irqchip", irqchip)) if v is not None}
    if not changes:
        return doc
    doc = copy.deepcopy(doc)
    base = doc.get("vm")
    doc["vm"] = {**(base if isinstance(base, dict) else {}), **changes}
    for variant in doc.get("matrix") or ():
        if isinstance(variant, dict) and isinstance(variant.get("vm"), dict):
            variant["vm"].update(changes)
    return doc


# ---- running


def execute(doc: Any, budget: RunBudget | None = None, observe: bool = False) -> dict[str, Any]:
    """run_scenario(doc), with every way the engine refuses the document as DocumentError:
    its EngineError (the path it names), or, where a malformed element makes it fail in
    another way, the path the document models find. `observe`: per-step last_seq and state
    (run_variant)."""
    found = locate(doc)  # the document models first: strict types and ranges everywhere
    if found is not None:
        raise DocumentError(found[1], found[0])
    try:
        return run_scenario(doc, observe, budget)
    except BudgetExceeded as exc:
        setting = _BUDGET_SETTINGS[exc.resource]
        raise DocumentError(
            f"the run needs more than {exc.maximum} {exc.resource} ({setting}; it stopped at "
            f"{exc.where})", exc.where, error_type="limit_exceeded", limit=setting,
            maximum=exc.maximum) from None
    except DocumentError:
        raise
    except EngineError as exc:
        raise DocumentError(exc.detail, exc.field or "body") from exc
    except RecursionError:
        raise DocumentError("the document is nested too deeply", "body") from None
    except (TypeError, AttributeError, KeyError, ValueError, IndexError) as exc:
        found = locate(doc)
        if found is None:
            raise  # a well-formed document: an irqlab bug (500)
        raise DocumentError(found[1], found[0]) from exc


_BUDGET_SETTINGS = {"steps": "IRQLAB_MAX_RUN_STEPS", "events": "IRQLAB_MAX_RUN_EVENTS"}
_INSTANCE = re.compile(r" or instance of \w+")
_PLAIN_TYPES = {"int", "str", "bool", "list", "dict", "none", "float"}
_MODEL_NAMES = {name for name, obj in vars(SM).items() if isinstance(obj, type)}


def locate(doc: Any) -> tuple[str, str] | None:
    """(path, message) of the most specific element the document models refuse, or None."""
    try:
        SM.ScenarioDocument.model_validate(doc)
    except ValidationError as exc:
        best: tuple[str, str] | None = None
        depth = -1
        for err in exc.errors():
            parts: list[Any] = []
            for item in err["loc"]:
                if isinstance(item, str) and (
                        item == "[key]" or "[" in item or "(" in item or item in _MODEL_NAMES
                        or item.startswith("constrained-") or item in _PLAIN_TYPES
                        or (item in STEP_OPS and parts and isinstance(parts[-1], int))):
                    continue  # union members and discriminator tags, not document keys
                parts.append(item)
            if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                parts.append("op")
            ctx = err.get("ctx")
            if isinstance(ctx, dict) and isinstance(ctx.get("field"), str):
                parts.append(ctx["field"])
            if len(parts) > depth:
                depth = len(parts)
                best = (_path(parts), _INSTANCE.sub("", str(err["msg"])))
        return best
    return None


def _path(parts: list[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else ("." if out else "") + str(p)
    return out or "body"


@dataclass(frozen=True, slots=True)
class RunLimits:
    """What a run needs from the settings, small and picklable for a worker process."""

    document: DocumentLimits
    max_scenario_steps: int
    max_settle_budget: int
    max_vcpus: int
    max_matrix_variants: int
    max_run_steps: int
    max_run_events: int
    max_response_bytes: int
    max_picture_events: int
    validate: bool = False

    @classmethod
    def of(cls, settings: Settings) -> RunLimits:
        return cls(document_limits(settings), settings.max_scenario_steps,
                   settings.max_settle_budget, settings.max_vcpus,
                   settings.max_matrix_variants, settings.max_run_steps,
                   settings.max_run_events, settings.max_response_bytes,
                   settings.max_picture_events, settings.validate_responses)


Rendered = tuple[int, str, bytes] | tuple[int, str, bytes, dict[str, str]]
"""A response made in a worker process: status, media type, body (and headers)."""


def run_job(source: Any, content_type: str | None, parsed: bool, limits: RunLimits,
            instance: str, fmt: str = "json", variant: str | None = None,
            observe: bool = False) -> Rendered:
    """Parse (unless `parsed`), check, run and render a document under `limits`; every
    refusal is rendered as its problem. A `fmt` other than json answers with a picture of the
    run (app.api.pictures), `variant` picks variants. Runs in a worker process
    (app/work/pool.py)."""
    try:
        doc = source if parsed else parse_document(source, content_type, limits.document)
        doc = check_limits(doc, limits)
        result = execute(doc, RunBudget(limits.max_run_steps, limits.max_run_events),
                         observe=observe or fmt != "json")
        if fmt != "json":
            from .pictures import render_picture

            return render_picture(result, doc, fmt, variant, limits.max_picture_events)
        if variant is not None:
            from .pictures import pick_variants

            result = {**result, "variants": pick_variants(result, variant)}
        if limits.validate:
            SM.ScenarioResult.model_validate(result)  # the documented shape (drift: a bug)
        body = pydantic_core.to_json(result)
        if len(body) > limits.max_response_bytes:
            raise DocumentError(
                f"the result is {len(body)} bytes, over the limit of "
                f"{limits.max_response_bytes} (IRQLAB_MAX_RESPONSE_BYTES)", "body",
                error_type="limit_exceeded", limit="IRQLAB_MAX_RESPONSE_BYTES",
                maximum=limits.max_response_bytes)
        return 200, "application/json", body
    except EngineError as exc:
        return _rendered(engine_problem(exc, instance))
    except UnsupportedMediaType as exc:
        return _rendered(problem_response("unsupported-media-type", exc.detail,
                                          instance=instance))


def check_job(source: Any, content_type: str | None, parsed: bool, limits: RunLimits,
              instance: str) -> Rendered | Any:
    """Parse and check a document and run it on the model under `limits` (POST
    /v1/scenarios/diff's first half): the document, or the problem rendered."""
    try:
        doc = source if parsed else parse_document(source, content_type, limits.document)
        doc = check_limits(doc, limits)
        execute(doc, RunBudget(limits.max_run_steps, limits.max_run_events))
        return doc
    except EngineError as exc:
        return _rendered(engine_problem(exc, instance))
    except UnsupportedMediaType as exc:
        return _rendered(problem_response("unsupported-media-type", exc.detail,
                                          instance=instance))


def _rendered(response: Response) -> Rendered:
    return response.status_code, PROBLEM_MEDIA_TYPE, bytes(response.body)


# ---- the library


def info(name: str, doc: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "description": str(doc.get("description") or "").strip(),
            "commits": list(doc.get("commits") or []),
            "variants": [v[0] for v in variants(doc)]}


def listing() -> dict[str, Any]:
    out = []
    for name in library.names():
        doc = library.get(name)
        assert doc is not None
        out.append(info(name, doc))
    return {"scenarios": out}


def document(name: str) -> dict[str, Any]:
    doc = library.get(name)
    if doc is None:
        raise not_found(f"no scenario {name!r} in the library (GET /v1/scenarios)", "name")
    jsonable: dict[str, Any] = json.loads(json.dumps(doc))  # YAML's integer keys -> strings
    return jsonable
