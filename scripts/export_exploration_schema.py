#!/usr/bin/env python3
"""Write the JSON Schema of an exploration document (app/explore/doc_models.py) to
openapi/exploration.schema.json (deterministic: sorted keys, 2-space indent, trailing
newline). `--check` exits 1 when the committed file differs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "openapi" / "exploration.schema.json"


def render() -> str:
    sys.path.insert(0, str(ROOT))
    from app.explore.doc_models import document_json_schema

    return json.dumps(document_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from json_export import write_or_check

    return write_or_check(render, TARGET, "export_exploration_schema.py", __doc__ or "", argv)


if __name__ == "__main__":
    raise SystemExit(main())
