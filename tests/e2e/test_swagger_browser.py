"""Swagger UI in a real browser: add a batch, allocate a line, read the allocation back.

It drives Debian's chromium (``apt-get install chromium``) through Playwright,
against a real uvicorn on PostgreSQL. ``SWAGGER_SCREENSHOT=PATH``
also saves the final screen there: that is how the README's picture is made.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, NoReturn

import pytest
from playwright.sync_api import Locator, Page, Route, expect, sync_playwright

from tests.conftest import random_ref
from tests.databases import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PNG = b"\x89PNG\r\n\x1a\n"
WAIT_MS = 15_000  # for an answer to show; a real one takes well under a second


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("REQUIRE_SERVICES"):
        pytest.fail(f"{reason}, and REQUIRE_SERVICES says this run needs it")
    pytest.skip(reason)


@pytest.fixture
def chromium() -> str:
    if not CHROMIUM.exists():
        _unavailable("Debian's chromium is not installed (apt-get install chromium)")
    return str(CHROMIUM)


def test_a_person_allocates_and_reads_the_allocation_back_in_swagger_ui(
    chromium: str, uvicorn_url: str, tmp_path: Path
) -> None:
    server = uvicorn_url  # a real uvicorn, two workers, on PostgreSQL
    ref, sku, orderid = random_ref("batch"), random_ref("SMALL-TABLE"), random_ref("order")
    screenshot = tmp_path / "swagger-flow.png"

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            # The page may load nothing from outside: /docs must work offline.
            outside: list[str] = []
            page.route("**/*", lambda route: _local_only(route, server, outside))
            page.goto(f"{server}/docs")

            added = _try_it_out(page, "post", "/add_batch")
            example = _fill_body(added, {"ref": ref, "sku": sku, "qty": 20, "eta": None})
            assert example == {"ref": "batch-001", "sku": "SMALL-TABLE", "qty": 20}
            _execute(added, "201", f"location: /batches/{ref}")

            allocated = _try_it_out(page, "post", "/allocate")
            example = _fill_body(allocated, {"orderid": orderid, "sku": sku, "qty": 2})
            assert example == {"orderid": "order-001", "sku": "SMALL-TABLE", "qty": 2}
            _execute(allocated, "202", f"location: /allocations/{orderid}")

            read = _try_it_out(page, "get", "/allocations/{orderid}")
            parameter = read.get_by_placeholder("orderid", exact=True)
            assert parameter.input_value() == "order-001"
            parameter.fill(orderid)
            answer = _execute(read, "200", f'"batchref": "{ref}"')
            assert json.loads(answer.locator("pre.microlight").first.inner_text()) == [
                {"sku": sku, "batchref": ref}
            ]

            read.evaluate("operation => operation.scrollIntoView()")
            page.screenshot(path=screenshot)
        finally:
            browser.close()

    assert outside == [], "the page asked for files from outside the service"
    picture = screenshot.read_bytes()
    assert picture.startswith(PNG)
    assert len(picture) > 20_000, "the screenshot is too small to show the page"
    if target := os.environ.get("SWAGGER_SCREENSHOT"):
        (ROOT / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, ROOT / target)


def _local_only(route: Route, server: str, outside: list[str]) -> None:
    url = route.request.url
    if url.startswith(f"{server}/"):
        route.continue_()
    else:
        outside.append(url)
        route.abort()


def _try_it_out(page: Page, method: str, path: str) -> Locator:
    """Expand the operation and press "Try it out", as a person does."""
    summary = page.locator(f'.opblock-summary-path[data-path="{path}"]')
    operation = page.locator(f".opblock-{method}").filter(has=summary)
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    return operation


def _fill_body(operation: Locator, body: dict[str, Any]) -> Any:
    """Replace the example "Try it out" filled in with ``body``; the example."""
    editor = operation.locator("textarea.body-param__text")
    example = json.loads(editor.input_value())
    editor.fill(json.dumps(body, indent=2))
    return example


def _execute(operation: Locator, status: str, shown: str) -> Locator:
    """Press Execute; the answer's row, once it shows ``status`` and the text ``shown``."""
    operation.get_by_role("button", name="Execute").click()
    answer = operation.locator(".live-responses-table tr.response")
    expect(answer.locator(".response-col_status")).to_have_text(status, timeout=WAIT_MS)
    expect(answer).to_contain_text(re.compile(re.escape(shown), re.IGNORECASE))
    return answer
