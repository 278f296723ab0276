"""Replace the race census in README.md (between its markers) with the current one:
`irqlab explore --library --profile all --markdown`."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- census:begin -->", "<!-- census:end -->"


def render() -> str:
    sys.path.insert(0, str(ROOT))
    from app import cli

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        cli.main(["explore", "--library", "--profile", "all", "--markdown"])
    return buf.getvalue()


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    readme.write_text(text[:start] + "\n" + render() + text[end:], encoding="utf-8")


if __name__ == "__main__":
    main()
