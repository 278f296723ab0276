"""Replace the library table in README.md (between its markers) with the current results."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from library_table import main as table  # type: ignore[import-not-found]

BEGIN, END = "<!-- library-table:begin -->", "<!-- library-table:end -->"


def main() -> None:
    readme = Path(__file__).resolve().parent.parent / "README.md"
    text = readme.read_text(encoding="utf-8")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        table()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    readme.write_text(text[:start] + "\n" + buf.getvalue() + text[end:], encoding="utf-8")


if __name__ == "__main__":
    main()
