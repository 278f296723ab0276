#!/usr/bin/env python3
"""Write README's picture docs/img/seed-race-timeline.svg: the timeline of the seed race
(library scenario seed-race-split) on linux-6.1, before fceb3a36c29a, where the EOI is lost
and Remote IRR never clears. Deterministic; `--check` exits 1 when the committed file
differs (a test runs it)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "img" / "seed-race-timeline.svg"
SCENARIO, VARIANT = "seed-race-split", "linux-6.1 (before fceb3a36c29a)"


def render() -> str:
    sys.path.insert(0, str(ROOT))
    from app import scenarios
    from app.engine.scenario import run_scenario
    from app.pictures import from_variant, timeline_svg

    doc = scenarios.get(SCENARIO)
    assert doc is not None
    result = run_scenario(doc, observe=True)
    (variant,) = [v for v in result["variants"] if v["name"] == VARIANT]
    return timeline_svg(from_variant(variant, SCENARIO, doc))


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from json_export import write_or_check

    return write_or_check(render, TARGET, "seed_race_timeline.py", __doc__ or "", argv)


if __name__ == "__main__":
    raise SystemExit(main())
