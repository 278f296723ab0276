"""FastAPI dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

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
