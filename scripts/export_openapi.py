#!/usr/bin/env python3
"""Write the OpenAPI document of app.main:app to openapi/openapi.json (deterministic: sorted
keys, 2-space indent, trailing newline). `--check` exits 1 when the committed file differs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "openapi" / "openapi.json"


def render() -> str:
    sys.path.insert(0, str(ROOT))
    from app.main import create_app
    from app.settings import Settings

    # Default settings, whatever the environment says: the document must not depend on it.
    spec = create_app(Settings.model_construct()).openapi()
    return json.dumps(spec, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from json_export import write_or_check

    return write_or_check(render, TARGET, "export_openapi.py", __doc__ or "", argv)


if __name__ == "__main__":
    raise SystemExit(main())
