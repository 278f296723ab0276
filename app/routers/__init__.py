"""HTTP routers: thin wrappers that validate, lock the VM, call the engine."""

from . import (
    campaigns,
    explorations,
    health,
    ioapic,
    pictures,
    profiles,
    reports,
    routing,
    scenarios,
    vcpus,
    vms,
)

ALL = [health.router, vms.router, profiles.router, ioapic.router, ioapic.line_router,
       routing.router,
       vcpus.router, reports.router, reports.bitmaps_router, pictures.router,
       scenarios.router, explorations.router, campaigns.router]
