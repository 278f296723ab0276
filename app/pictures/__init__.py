"""Pictures of an event log: an SVG timeline, Chrome/Perfetto trace-event JSON, VCD, and an
HTML report of a scenario run. No web imports: the API, the CLI and the explorer call these."""

from __future__ import annotations

from .html_report import render_html
from .perfetto import dumps as perfetto_json
from .perfetto import trace_events
from .recording import Recording, from_events, from_variant, from_vm, from_vm_steps
from .svg import render_svg, render_svgs
from .timeline import Timeline, build
from .vcd_trace import write_vcd


def timeline_svg(rec: Recording) -> str:
    return render_svg(build(rec))


def timelines_svg(recs: list[Recording]) -> str:
    """One recording's timeline, or several stacked."""
    if len(recs) == 1:
        return timeline_svg(recs[0])
    return render_svgs([build(r) for r in recs])


def perfetto(recs: list[Recording]) -> str:
    return perfetto_json([build(r) for r in recs])


def vcd(recs: list[Recording]) -> str:
    return write_vcd([build(r) for r in recs])


__all__ = ["Recording", "Timeline", "build", "from_events", "from_variant", "from_vm",
           "from_vm_steps", "perfetto", "perfetto_json", "render_html", "render_svg",
           "render_svgs", "timeline_svg", "timelines_svg", "trace_events", "vcd", "write_vcd"]
