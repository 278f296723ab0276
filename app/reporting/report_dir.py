"""The --report DIR artifact: every result as JSON, and an index a CI job (or a person) starts
from.

    DIR/index.json                      what ran, per run: document, cell, passed, files
    DIR/NNN-DOC[--CELL]/result.json     the full result (POST /v1/scenarios/run's body)
    DIR/NNN-DOC[--CELL]/variants/MM-VARIANT.json   one variant of it
    DIR/NNN-DOC[--CELL]/error.txt       instead, when the document could not be run

NNN numbers the runs in command-line order (document, then cell), so names never collide.
    DIR/NNN-DOC[--CELL]/report.html     the HTML report of the run (app.pictures)
    DIR/NNN-DOC[--CELL]/variants/MM-VARIANT.svg    that variant's timeline

The pictures are drawn from the result's event logs (with step bands where the run was
observed, which `run`/`suite` do when --report is given) and the document's steps.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.reporting.records import RunRecord

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def slug(text: str, limit: int = 60) -> str:
    """A file-name-safe form of a scenario, variant or profile name."""
    s = _UNSAFE.sub("-", text).strip("-.")
    return s[:limit].rstrip("-.") or "unnamed"


def _dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_report(directory: str | Path, records: Sequence[RunRecord],
                 meta: dict[str, Any] | None = None) -> Path:
    """Write the report directory (created if missing; files of an earlier report with the same
    names are replaced) and return the index's path."""
    from app import __version__

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    from app.pictures import build, from_variant, render_html, render_svg

    runs = []
    for i, rec in enumerate(records, 1):
        cell = "--".join(slug(v) for v in rec.cell.values())
        base = f"{i:03d}-{slug(rec.document)}" + (f"--{cell}" if cell else "")
        folder = root / base
        (folder / "variants").mkdir(parents=True, exist_ok=True)
        entry: dict[str, Any] = {"document": rec.document, "source": rec.label,
                                 "cell": rec.cell, "passed": rec.passed,
                                 "seconds": round(rec.seconds, 3)}
        if rec.result is None:
            (folder / "error.txt").write_text(f"{rec.error}\n", encoding="utf-8")
            entry.update(error=rec.error, files={"error": f"{base}/error.txt"})
            runs.append(entry)
            continue
        _dump(folder / "result.json", rec.result)
        files: dict[str, Any] = {"result": f"{base}/result.json"}
        (folder / "report.html").write_text(render_html(rec.result, rec.doc), encoding="utf-8")
        files["html"] = f"{base}/report.html"
        variants = []
        for j, v in enumerate(rec.result.get("variants") or [], 1):
            name = f"{j:02d}-{slug(str(v.get('name')))}"
            _dump(folder / "variants" / f"{name}.json", v)
            vfiles = {"json": f"{base}/variants/{name}.json"}
            svg = render_svg(build(from_variant(v, rec.document, rec.doc)))
            (folder / "variants" / f"{name}.svg").write_text(svg, encoding="utf-8")
            vfiles["svg"] = f"{base}/variants/{name}.svg"
            vm = v.get("vm") if isinstance(v.get("vm"), dict) else {}
            variants.append({"name": v.get("name"), "passed": bool(v.get("passed")),
                             "profile": (vm or {}).get("profile"),
                             "irqchip": (vm or {}).get("irqchip"),
                             "findings": sorted({str(f.get("kind"))
                                                 for f in v.get("findings") or ()}),
                             "files": vfiles})
        entry.update(files=files, variants=variants)
        runs.append(entry)
    index = {
        "irqlab": __version__,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **(meta or {}),
        "passed": all(r.passed for r in records),
        "runs": len(records),
        "failed": sum(1 for r in records if r.error is None and not r.passed),
        "errors": sum(1 for r in records if r.error is not None),
        "results": runs,
    }
    _dump(root / "index.json", index)
    return root / "index.json"
