"""A run's pictures written to files (`irqlab run --svg DIR --trace DIR --html FILE`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .html_report import render_html
from .perfetto import dumps
from .recording import from_variant
from .svg import render_svg
from .timeline import build
from .vcd_trace import write_vcd


def file_stem(text: str) -> str:
    """A file-name-safe form of a scenario or variant name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "run"


def write_run_pictures(result: dict[str, Any], doc: Any, *, svg_dir: str | None = None,
                       trace_dir: str | None = None, html: str | None = None) -> list[Path]:
    """Write one SVG per variant into svg_dir (<scenario>--<variant>.svg), the run's Perfetto
    trace and VCD into trace_dir (<scenario>.perfetto.json, <scenario>.vcd: a process / a
    scope per variant) and the HTML report to `html`. Returns the paths written."""
    name = str(result.get("name") or (doc.get("name") if isinstance(doc, dict) else None)
               or "scenario")
    stem = file_stem(name)
    variants = list(result.get("variants") or [])
    written: list[Path] = []
    timelines = [build(from_variant(v, name, doc)) for v in variants]
    if svg_dir is not None:
        out = Path(svg_dir)
        out.mkdir(parents=True, exist_ok=True)
        for v, tl in zip(variants, timelines, strict=True):
            path = out / f"{stem}--{file_stem(str(v.get('name')))}.svg"
            path.write_text(render_svg(tl), encoding="utf-8")
            written.append(path)
    if trace_dir is not None:
        out = Path(trace_dir)
        out.mkdir(parents=True, exist_ok=True)
        for path, text in ((out / f"{stem}.perfetto.json", dumps(timelines)),
                           (out / f"{stem}.vcd", write_vcd(timelines))):
            path.write_text(text, encoding="utf-8")
            written.append(path)
    if html is not None:
        path = Path(html)
        if path.parent != Path():
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_html(result, doc), encoding="utf-8")
        written.append(path)
    return written


def html_path_for(html: str, scenario: str, several: bool) -> str:
    """--html FILE names the report of one source; with several, each gets FILE with the
    scenario's name before the suffix (report.html -> report-seed-race-split.html)."""
    if not several:
        return html
    p = Path(html)
    return str(p.with_name(f"{p.stem}-{file_stem(scenario)}{p.suffix or '.html'}"))
