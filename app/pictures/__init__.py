"""Pictures of an event log: an SVG timeline, Chrome/Perfetto trace-event JSON, VCD, and an
HTML report of a scenario run. No web imports: the API, the CLI and the explorer call these."""

from __future__ import annotations

from .recording import Recording, from_events, from_variant, from_vm
from .svg import render_svg
from .timeline import Timeline, build


def timeline_svg(rec: Recording) -> str:
    return render_svg(build(rec))


__all__ = ["Recording", "Timeline", "build", "from_events", "from_variant", "from_vm",
           "render_svg", "timeline_svg"]
