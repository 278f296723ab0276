"""Service settings, read from IRQLAB_* environment variables (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

KVM_MAX_VCPUS = 4096


class Settings(BaseSettings):
    """Every field is read from the environment variable IRQLAB_<NAME> (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="IRQLAB_", extra="ignore", frozen=True)

    host: str = Field(default="127.0.0.1", description="Bind address of `irqlab serve`.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port of `irqlab serve`.")
    max_vms: int = Field(default=64, ge=1, description="Most VMs that may exist at once.")
    max_vcpus: int = Field(
        default=KVM_MAX_VCPUS, ge=1, le=KVM_MAX_VCPUS,
        description="Most vCPUs one VM may have (KVM_MAX_VCPUS is 4096).",
    )
    max_kvm_vms: int = Field(
        default=4, ge=0,
        description="Most VMs with `backend: kvm` (real /dev/kvm VMs) that may exist at once; "
                    "more: 409 limit-reached. 0 disables the kvm backend.",
    )
    max_kvm_vcpus: int = Field(
        default=8, ge=1, le=64,
        description="Most vCPUs one kvm-backend VM may have (at most 64); more: 409.",
    )
    max_body_bytes: int = Field(
        default=1 << 20, ge=1, description="Largest request body accepted; larger ones get 413."
    )
    max_events_page: int = Field(
        default=1000, ge=1,
        description="Most events returned by one call (events pages, op responses).",
    )
    max_scenario_steps: int = Field(
        default=10_000, ge=1,
        description="Most steps one scenario document may have (top level, in handlers and "
                    "in `when` blocks); more: 422 naming the field and the limit.",
    )
    max_settle_budget: int = Field(
        default=100_000, ge=1,
        description="Largest settle budget a scenario document may ask for (`settle_budget`, "
                    "a settle step's `budget`); more: 422. Settle steps without one use at "
                    "most this.",
    )
    max_events_per_vm: int = Field(
        default=200_000, ge=2,
        description="Most events a VM's log keeps; past it the oldest half is dropped (seqs "
                    "keep counting, GET …/events starts at the oldest kept).",
    )
    validate_responses: bool = Field(
        default=False,
        description="Also validate every response against its documented model and check "
                    "it renders identically (the test-suite sets this; costs ~20 us/request).",
    )
    upstream_cache: str = Field(
        default="~/.cache/irqlab/upstream",
        description="Cache directory of `irqlab upstream` (package lists, kernel boot kits, "
                    "the root filesystem image, run results).",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        default="info", description="Log level of the service and of uvicorn."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
