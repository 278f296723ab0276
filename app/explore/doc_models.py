"""Pydantic models of the exploration document (app/explore/document.py): the source of its
published JSON Schema (openapi/exploration.schema.json, scripts/export_exploration_schema.py)
and of the HTTP request body. As with scenarios, the explorer itself reads the raw document
and reports engine-style paths (`actors.device.steps[1].pin`); tests validate every library
exploration against these models so that the schema and the language cannot drift apart.
Program and handler steps reuse the scenario step models."""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StrictBool, StrictInt
from pydantic.json_schema import models_json_schema

from app.api import scenario_models as SM
from app.api import types as T

from .document import BUILTIN_PROPERTIES, MAX_ACTORS, MAX_PROGRAM_STEPS

_absent = SM._absent
DocModel = SM.DocModel


class ProgramEoi(SM._OnVcpu):
    """The vCPU writes its LAPIC EOI register (an EOI exit it causes is taken when the
    explorer lets the vCPU enter)."""

    op: Literal["eoi"]


ProgramStep = Annotated[
    SM.StepLine | SM.StepIrq | SM.StepMsi | SM.StepRoutes | SM.StepIrqfd | SM.StepCount
    | SM.StepWriteRte | SM.StepPatchRte | SM.StepMmio | SM.StepLapic | ProgramEoi | SM.StepExit
    | SM.StepSti | SM.StepCli,
    Field(discriminator="op"),
]


class Actor(DocModel):
    """A concurrent program: its steps run in order, each atomic, interleaved with every
    other actor's and with the hardware's moves in every possible way."""

    vcpu: SM.VcpuIdx = _absent(
        "The vCPU this program is the main flow of: its steps run as that vCPU's guest code "
        "(not while a handler runs on it, nor while it has requests pending). Omitted: a "
        "device or the VMM (line, irq, msi, routes, irqfd, count only).")
    steps: list[ProgramStep] = Field(max_length=MAX_PROGRAM_STEPS)


# ---------------------------------------------------------------- predicates

class _Is(DocModel):
    is_: Any = Field(alias="is")


class _IsBool(DocModel):
    is_: StrictBool = Field(alias="is")


class RemoteIrrIs(DocModel):
    pin: SM.Pin
    is_: StrictBool = Field(alias="is")


class PredRemoteIrr(DocModel):
    """Remote IRR of a pin is (not) set."""

    remote_irr: RemoteIrrIs


class PinIsInt(DocModel):
    is_: SM.Vector = Field(alias="is")


class PredPin(DocModel):
    """One field of a pin: line (0/1), masked, remote_irr, irr (IOAPIC IRR), vector, dest,
    trigger (level/edge)."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 2, "maxProperties": 2})

    pin: SM.Pin
    line: PinIsInt = _absent()
    masked: _IsBool = _absent()
    remote_irr: _IsBool = _absent()
    irr: _IsBool = _absent()
    vector: PinIsInt = _absent()
    dest: PinIsInt = _absent()
    trigger: dict[Literal["is"], Literal["level", "edge"]] = _absent()


class BitmapTest(DocModel):
    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    contains: SM.Vector = _absent()
    empty: StrictBool = _absent()
    equals: list[SM.Vector] = _absent()


class Compare(DocModel):
    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    is_: Annotated[StrictInt, Field(ge=0)] = _absent(alias="is")
    at_least: Annotated[StrictInt, Field(ge=0)] = _absent()
    at_most: Annotated[StrictInt, Field(ge=0)] = _absent()


class RequestTest(DocModel):
    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    contains: Literal["IOAPIC_EOI_EXIT", "SCAN_IOAPIC", "LOAD_EOI_EXITMAP", "EVENT"] = _absent()
    empty: StrictBool = _absent()


class PredVcpu(DocModel):
    """One field of a vCPU: a bitmap (contains/empty/equals), tpr or ppr (is/at_least/
    at_most), in_guest, if (interrupt flag) or in_handler ({is: bool}), pending_requests
    (contains/empty)."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 2, "maxProperties": 2})

    vcpu: SM.VcpuIdx
    irr: BitmapTest = _absent()
    isr: BitmapTest = _absent()
    tmr: BitmapTest = _absent()
    pir: BitmapTest = _absent()
    handled_vectors: BitmapTest = _absent()
    eoi_exit_bitmap: BitmapTest = _absent()
    tpr: Compare = _absent()
    ppr: Compare = _absent()
    in_guest: _IsBool = _absent()
    if_: _IsBool = _absent(alias="if")
    in_handler: _IsBool = _absent()
    pending_requests: RequestTest = _absent()


class PredCounter(Compare):
    """A counter (count steps) compared with a number."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 2, "maxProperties": 2})

    counter: str


class PredActor(DocModel):
    """An actor's program has (not) run to its end."""

    actor: str
    done: StrictBool


class PredAll(DocModel):
    all: list[Predicate] = Field(min_length=1)


class PredAny(DocModel):
    any: list[Predicate] = Field(min_length=1)


class PredNot(DocModel):
    not_: Predicate = Field(alias="not")


Predicate = (PredAll | PredAny | PredNot | PredRemoteIrr | PredPin | PredVcpu | PredCounter
             | PredActor)
for _m in (PredAll, PredAny, PredNot):
    _m.model_rebuild()


class AlwaysProperty(DocModel):
    """Must hold in every reachable state."""

    name: str = _absent("Shown in verdicts (default always-INDEX).")
    always: Predicate


class FinallyProperty(DocModel):
    """Must hold in every terminal state (nothing left to do: quiescence)."""

    name: str = _absent("Shown in verdicts (default finally-INDEX).")
    finally_: Predicate = Field(alias="finally")


BuiltinProperty = Literal["remote-irr-stuck", "eoi-not-forwarded", "eoi-will-be-lost",
                          "handled-vector-stale", "interrupt-lost", "delivered-twice"]


class ExplorationDocument(DocModel):
    """An irqlab exploration: a VM, its deterministic setup, the guest's handlers, concurrent
    actors and the properties every interleaving must keep (app/explore)."""

    model_config = ConfigDict(title="irqlab exploration document", populate_by_name=True)

    name: str = _absent("The exploration's name (library names are [a-z0-9-]+).")
    description: str | None = None
    commits: list[str] | None = _absent("KVM/QEMU commits it is about.")
    notes: str | None = _absent("Free text.")
    vm: SM.ScenarioVm | None = None
    setup: list[SM.Step] | None = _absent(
        "Scenario steps run once, in order, before the search (enter, take, settle allowed).")
    handlers: dict[SM.VectorKey, list[ProgramStep]] | None = _absent(
        "Vector -> what the vCPU that takes it runs, one atomic step at a time (a vector "
        "without a handler: [eoi]).")
    actors: dict[str, Actor] = Field(min_length=1, max_length=MAX_ACTORS)
    properties: list[BuiltinProperty | AlwaysProperty | FinallyProperty] = Field(
        min_length=1, description="Built-in: " + "; ".join(
            f"{k} ({w}): {d}" for k, (w, d) in BUILTIN_PROPERTIES.items()))
    expect: dict[T.ProfileName, Literal["violation", "verified"]] | None = _absent(
        "What each profile's search should conclude (the library's claims; census).")
    symmetry: list[Annotated[StrictInt, Field(ge=0)]] | None = Field(
        None, min_length=2, description="vCPUs the program treats alike: the search explores "
        "one state per permutation class of what they hold. No actor may be bound to them, no "
        "property name them, no RTE or MSI route target one of them by physical APIC ID or "
        "use lowest-priority delivery (checked); xAPIC mode only.")


def document_json_schema() -> dict[str, Any]:
    """The JSON Schema of an exploration document (openapi/exploration.schema.json)."""
    schema = ExplorationDocument.model_json_schema(mode="validation", by_alias=True)
    SM._tidy(schema)
    return {"$schema": SM.SCHEMA_DIALECT, **schema}


def openapi_components() -> dict[str, dict[str, Any]]:
    """The document's schemas for OpenAPI components/schemas, ExplorationDocument among them
    (the scenario step models they share render identically)."""
    _, top = models_json_schema([(ExplorationDocument, "validation")], by_alias=True,
                                ref_template="#/components/schemas/{model}")
    defs: dict[str, dict[str, Any]] = copy.deepcopy(top.get("$defs", {}))
    SM._tidy(defs)
    return defs
