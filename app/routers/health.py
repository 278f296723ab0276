"""Liveness, readiness and the problem-type documentation."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path

from app import __version__
from app.api import models as M
from app.api.deps import RegistryDep
from app.api.problems import PROBLEM_TYPES, ProblemType, problem_responses
from app.engine import ENGINE_BUILD
from app.engine.errors import not_found

router = APIRouter()


@router.get(
    "/healthz", response_model=M.Health, tags=["health"], summary="Liveness",
    description="The process is up and serving HTTP. Mirrors no KVM/QEMU operation: it is "
                "the orchestrator's liveness probe.",
    responses={200: {"description": "Alive",
                     "content": {"application/json": {"example": {"status": "ok"}}}}},
)
async def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get(
    "/readyz", response_model=M.Ready, tags=["health"], summary="Readiness",
    description="The service accepts requests: the VM registry answers. Mirrors no "
                "KVM/QEMU operation (readiness probe); reports how many VMs exist and which "
                "build of the engine runs (compiled by mypyc, or pure Python and why) and "
                "irqlab's version.",
    responses={200: {"description": "Ready", "content": {"application/json": {
        "example": {"status": "ready", "vms": 1, "max_vms": 64,
                    "engine": "compiled (mypyc)", "version": "0.1.0"}}}}},
)
async def readyz(registry: RegistryDep) -> dict[str, Any]:
    return {"status": "ready", "vms": len(registry), "max_vms": registry.max_vms,
            "engine": ENGINE_BUILD, "version": __version__}


@router.get(
    "/problems/{slug}", response_model=ProblemType, tags=["meta"],
    summary="Describe a problem type",
    description="Documentation of a problem `type` URI used in RFC 9457 error bodies. Mirrors "
                "no KVM/QEMU operation; `invalid-operation` is where KVM's -EINVAL (and a "
                "guest's #GP) end up.",
    responses={200: {"description": "The problem type", "content": {"application/json": {
        "example": PROBLEM_TYPES["invalid-operation"].model_dump()}}},
        **problem_responses(404, 422)},
)
async def get_problem_type(slug: str = Path(examples=["invalid-operation"])) -> ProblemType:
    if slug not in PROBLEM_TYPES:
        raise not_found(f"no problem type {slug!r}", "slug")
    return PROBLEM_TYPES[slug]
