"""Browser tests: Playwright for Python driving Debian's Chromium (`apt-get install chromium`,
listed in .ci/apt-packages.txt) against a real `irqlab serve` on 127.0.0.1. Playwright's own
browser downloads are never used (they cannot work on our machines): the browser is launched
from CHROMIUM (default /usr/bin/chromium). Tests skip, saying why, when Playwright or the
browser is missing.

Every page records the requests it makes; `assert_local` checks that none left the host.
Screenshots go to IRQLAB_SCREENSHOTS (README's images: IRQLAB_SCREENSHOTS=docs/img) or to
the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.uvicorn_server import irqlab_server

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None  # type: ignore[assignment]


# Module scope, not session: Playwright's sync API keeps an event loop running in this thread
# while it is open, and the anyio tests collected after tests/browser cannot start theirs.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        pytest.skip("Playwright for Python is not installed (pip install -e '.[test]')")
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with irqlab_server() as base:
        yield base


class RecordingPage:
    """A page and every URL it requested."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.requests: list[str] = []
        page.on("request", lambda r: self.requests.append(r.url))

    def assert_local(self) -> None:
        assert self.requests
        far = [u for u in self.requests
               if urlsplit(u).scheme not in ("data", "blob")
               and urlsplit(u).hostname != "127.0.0.1"]
        assert not far, f"requests that left the host: {far}"


@pytest.fixture
def page(browser: Browser) -> Iterator[RecordingPage]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        yield RecordingPage(context.new_page())
    finally:
        context.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    target = os.environ.get("IRQLAB_SCREENSHOTS")
    out = Path(target) if target else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    return out


def screenshot(page: Any, path: Path, **kw: Any) -> None:
    page.screenshot(path=str(path), **kw)
    assert path.stat().st_size > 5000
