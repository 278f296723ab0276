"""/docs and /redoc in a real browser: they render, list the operations, "Try it out" on
create_vm returns 201, and no request leaves the host."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .conftest import RecordingPage, screenshot


def test_swagger_ui_lists_operations_and_tries_create_vm(
        server: str, page: RecordingPage, shots: Path) -> None:
    p = page.page
    p.goto(f"{server}/docs")
    p.wait_for_selector(".opblock", timeout=20_000)
    spec = json.loads(p.evaluate("fetch('/openapi.json').then(r => r.text())"))
    ids = {op["operationId"] for ops in spec["paths"].values() for op in ops.values()}
    shown = set(p.locator(".opblock-summary-operation-id").all_inner_texts())
    assert ids <= shown, ids - shown
    assert p.get_by_text("Walkthrough: the seed race").is_visible()

    create = p.locator("#operations-vms-create_vm")
    create.locator(".opblock-summary").click()
    create.get_by_role("button", name="Try it out").click()
    create.get_by_role("button", name="Execute").click()
    status = create.locator(".live-responses-table tr.response .response-col_status").first
    status.wait_for(timeout=10_000)
    assert status.inner_text().strip() == "201"
    assert re.search(r'"id":\s*"race"', create.locator(".live-responses-table").inner_text())
    screenshot(p, shots / "docs-try-it-out.png")
    p.evaluate("window.scrollTo(0, 0)")
    screenshot(p, shots / "docs.png")
    page.assert_local()


def test_redoc_renders(server: str, page: RecordingPage, shots: Path) -> None:
    p = page.page
    p.goto(f"{server}/redoc")
    p.get_by_text("Walkthrough: the seed race").first.wait_for(timeout=20_000)
    spec = json.loads(p.evaluate("fetch('/openapi.json').then(r => r.text())"))
    ids = {op["operationId"] for ops in spec["paths"].values() for op in ops.values()}
    create = p.locator("[data-section-id='operation/create_vm']")
    create.wait_for(timeout=10_000)
    assert "Create a VM" in create.inner_text()
    shown = p.eval_on_selector_all("[data-section-id^='operation/']",
                                   "els => els.map(e => e.dataset.sectionId)")
    assert {f"operation/{i}" for i in ids} <= set(shown)
    screenshot(p, shots / "redoc.png")
    page.assert_local()
