"""FastAPI dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from app.settings import Settings

from .registry import Registry


# async: FastAPI runs a plain-def dependency in the threadpool, a hop per request.
async def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


RegistryDep = Annotated[Registry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
VmPath = Annotated[str, Path(description="The VM's id.", examples=["race"])]
VcpuPath = Annotated[int, Path(description="vCPU index (0-based); 404 when the VM has no "
                                           "such vCPU.", examples=[0])]
PinPath = Annotated[int, Path(ge=0, le=23, description="IOAPIC input pin, 0..23.",
                              examples=[5])]


# ---- path parameters a hot route parses itself ----
#
# FastAPI validates typed path parameters through its dependency solver, which measured about
# as much as the whole engine operation on the line route. Such a route takes only the Request
# and calls these; validation (lax, as FastAPI's) and error shapes (`loc: ["path", name]`,
# RequestValidationError -> the one problem+json handler) are FastAPI's, and
# `manual_path_openapi` declares the parameters in the OpenAPI document exactly as FastAPI
# would have.

# The same annotated types FastAPI validates elsewhere, so constraints, descriptions and
# examples have one definition.
_PATH_TYPES: dict[str, Any] = {"vm": VmPath, "pin": PinPath}
_PIN_ADAPTER: TypeAdapter[int] = TypeAdapter(PinPath)


def manual_path_openapi(*names: str) -> dict[str, Any]:
    """`openapi_extra` parameters for a route that reads `names` with the functions below,
    as FastAPI would declare them (its schema title is the parameter's name)."""
    params = []
    for n in names:
        schema = {**TypeAdapter(_PATH_TYPES[n]).json_schema(), "title": n.title()}
        params.append({"description": schema["description"], "in": "path", "name": n,
                       "required": True, "schema": schema})
    return {"parameters": params}


def path_vm(request: Request) -> str:
    vm: str = request.path_params["vm"]
    return vm


def path_pin(request: Request) -> int:
    try:
        return _PIN_ADAPTER.validate_python(request.path_params["pin"])
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("path", "pin", *e["loc"])} for e in exc.errors()]) from None
