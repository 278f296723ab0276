"""Service settings, read from IRQLAB_* environment variables (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
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
    max_picture_events: int = Field(
        default=5000, ge=1,
        description="Most events one timeline SVG, trace or report draws (GET …/timeline.svg "
                    "and …/trace `limit`; a scenario run asked for a picture); more: 422.",
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
    max_document_nodes: int = Field(
        default=200_000, ge=1,
        description="Most values (objects, lists, scalars) a scenario document may hold, "
                    "counted with every YAML alias expanded; more: 422. Checked while "
                    "parsing, before anything walks the document.",
    )
    max_document_depth: int = Field(
        default=64, ge=2, le=500,
        description="Deepest nesting of a scenario document (JSON or YAML); deeper: 422.",
    )
    max_matrix_variants: int = Field(
        default=16, ge=1,
        description="Most variants a scenario document's `matrix` may have; more: 422.",
    )
    max_run_steps: int = Field(
        default=200_000, ge=1,
        description="Most steps one scenario run (all variants) may take: every step run, "
                    "in handlers and when blocks too, and every round of a settle; more: "
                    "422 naming the step where it stopped.",
    )
    max_run_events: int = Field(
        default=200_000, ge=1,
        description="Most events one scenario run (all variants) may log; more: 422.",
    )
    max_response_bytes: int = Field(
        default=16 << 20, ge=1024,
        description="Largest scenario result (JSON bytes); larger: 422.",
    )
    workers: int = Field(
        default=2, ge=1, le=64,
        description="Worker processes for expensive requests (scenario runs, diffs' model "
                    "half, big documents); more such requests wait for a free one.",
    )
    max_run_cpu_seconds: float = Field(
        default=10.0, gt=0,
        description="CPU seconds one expensive request may use in its worker; more: 422.",
    )
    max_run_seconds: float = Field(
        default=30.0, gt=0,
        description="Wall-clock seconds one expensive request may take in its worker (the "
                    "worker is then killed and replaced); more: 422.",
    )
    max_run_memory_mb: int = Field(
        default=1024, ge=0,
        description="Address space of each worker process, in MiB (RLIMIT_AS; 0: "
                    "unlimited); a request that needs more: 422.",
    )
    max_events_per_vm: int = Field(
        default=200_000, ge=2,
        description="Most events a VM's log keeps; past it the oldest half is dropped (seqs "
                    "keep counting, GET …/events starts at the oldest kept).",
    )
    max_explorations: int = Field(
        default=2, ge=1,
        description="Most exploration jobs (POST /v1/explorations) running at once, each in "
                    "its own worker process; more: 409 limit-reached.",
    )
    max_exploration_states: int = Field(
        default=1_000_000, ge=1,
        description="Largest state budget an exploration job may ask for (`max_states`, also "
                    "the default); more: 422.",
    )
    max_exploration_seconds: float = Field(
        default=300.0, gt=0,
        description="Largest time budget per profile an exploration job may ask for "
                    "(`max_seconds`, also the default); more: 422.",
    )
    max_exploration_memory_mb: int = Field(
        default=2048, ge=0,
        description="Address-space limit of each exploration worker process in MiB (0: none); "
                    "a search that needs more fails with a message.",
    )
    exploration_ray: str | None = Field(
        default=None,
        description="Run exploration jobs on this Ray cluster ('auto', 'local' or an address; "
                    "needs the 'ray' extra) as a distributed BFS over "
                    "IRQLAB_EXPLORATION_RAY_WORKERS partition actors; unset: in the worker "
                    "process (the memory limit then does not apply: the cluster's own does).",
    )
    exploration_ray_workers: int = Field(
        default=2, ge=1, le=1024,
        description="Partition actors per exploration job on Ray (IRQLAB_EXPLORATION_RAY).",
    )
    max_campaigns: int = Field(
        default=2, ge=1,
        description="Most campaign jobs (POST /v1/campaigns) running at once, each in its own "
                    "worker process; more: 409 limit-reached.",
    )
    max_campaign_sequences: int = Field(
        default=100_000, ge=1,
        description="Most sequences one campaign job may ask for (`sequences`); more: 422.",
    )
    max_campaign_seconds: float = Field(
        default=600.0, gt=0,
        description="Largest time budget a campaign job may ask for (`max_seconds`, also the "
                    "default); more: 422. A job past its budget fails with a message.",
    )
    campaign_ray: str | None = Field(
        default=None,
        description="Run campaign jobs on this Ray cluster ('auto', 'local' or an address; "
                    "needs the 'ray' extra), `kvm` then on every node with /dev/kvm; unset: "
                    "in the job's worker process.",
    )
    ui_vcpus: int = Field(
        default=16, ge=1, le=KVM_MAX_VCPUS,
        description="Most vCPUs per VM the live dashboard (/ui) shows (the first ones).",
    )
    ui_events: int = Field(
        default=200, ge=1, le=10_000,
        description="Events in the live dashboard's timeline (the last ones).",
    )
    ui_interval_ms: int = Field(
        default=50, ge=0, le=10_000,
        description="Least time between two live dashboard updates of one browser: changes "
                    "in between are sent together.",
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
    shutdown_timeout: int = Field(
        default=10, ge=0,
        description="On SIGTERM/SIGINT: seconds requests in flight get to finish before the "
                    "server closes their connections (uvicorn's graceful shutdown).",
    )
    # ---- durable state (app/api/durable.py)
    state_dir: Path | None = Field(
        default=None,
        description="Directory where VMs are kept durable (a snapshot and a journal of "
                    "operations per VM) and restored from at start-up; unset: VMs live in "
                    "memory only.",
    )
    state_fsync: Literal["always", "interval", "never"] = Field(
        default="always",
        description="When journal writes are fsynced: `always` before each response, "
                    "`interval` every IRQLAB_STATE_FSYNC_INTERVAL_MS, `never` only at "
                    "snapshots and shutdown (all three survive a killed process).",
    )
    state_fsync_interval_ms: int = Field(
        default=100, ge=1, description="fsync period of IRQLAB_STATE_FSYNC=interval.")
    state_snapshot_every: int = Field(
        default=1000, ge=1,
        description="Journal records after which a VM's snapshot is rewritten and its journal "
                    "emptied (bounds replay at start-up).",
    )
    # ---- tenants and access (app/api/tenants.py, app/api/access.py)
    tokens: Path | None = Field(
        default=None,
        description="File of bearer tokens (`sha256-hex tenant` per line, see `irqlab token "
                    "add`); set: every /v1 request needs `Authorization: Bearer <token>` "
                    "and sees only its tenant's VMs. Unset: no authentication.",
    )
    tenant_max_vms: int | None = Field(
        default=None, ge=1,
        description="Most VMs one tenant may have at once (unset: only IRQLAB_MAX_VMS).",
    )
    cors_origins: str = Field(
        default="",
        description="Comma-separated origins allowed to call the API from a browser (CORS); "
                    "empty: none, and requests carrying another site's Origin are refused.",
    )
    allowed_hosts: str = Field(
        default="",
        description="Comma-separated Host header values accepted (e.g. `127.0.0.1:8000,"
                    "localhost:8000`; `*.example.org` allowed); empty: any.",
    )
    kvm_idle_seconds: float = Field(
        default=900.0, ge=0,
        description="A kvm-backend VM no request used for this long is deleted (its fds "
                    "closed, its slot freed); 0 never.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
