"""Behaviour presets and flags."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path

from app.api import models as M
from app.api import ops
from app.api.problems import problem_responses
from app.engine.errors import not_found

router = APIRouter(prefix="/v1", tags=["profiles"], responses=problem_responses(422))

_PROFILES = ops.profiles()


@router.get(
    "/profiles", response_model=M.Profiles, summary="List presets and behaviour flags",
    description="Every preset (one per kernel release that changed IOAPIC/LAPIC EOI "
                "behaviour) with its resolved flags, and every flag with the KVM or QEMU "
                "commit that introduced it. A VM is a preset plus `overrides`.",
    responses={200: {"description": "Presets and flags", "content": {"application/json": {
        "example": {"default": _PROFILES["default"], "presets": _PROFILES["presets"][2:4],
                    "flags": _PROFILES["flags"][3:4]}}}}},
)
async def list_profiles() -> dict[str, Any]:
    return _PROFILES


@router.get(
    "/profiles/{name}", response_model=M.PresetDoc, summary="Get one preset",
    description="One preset's description and resolved behaviour flags (each flag names a "
                "KVM or QEMU commit; see GET /v1/profiles).",
    responses={200: {"description": "The preset", "content": {"application/json": {
        "example": _PROFILES["presets"][2]}}}, **problem_responses(404)},
)
async def get_profile(name: str = Path(examples=["linux-6.1"])) -> dict[str, Any]:
    for p in _PROFILES["presets"]:
        if p["name"] == name:
            return dict(p)
    raise not_found(f"no preset {name!r}", "name")
