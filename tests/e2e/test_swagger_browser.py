"""Swagger UI in a real browser: add a batch, allocate a line, read the allocation back.

It drives Debian's chromium (``apt-get install chromium``) through Playwright,
against a real uvicorn on PostgreSQL. ``SWAGGER_SCREENSHOT=PATH``
also saves the final screen there: that is how the README's picture is made.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from tests.support.databases import ROOT
from tests.support.refs import random_ref
from tests.support.swagger_ui import (
    CHROMIUM_ARGS,
    execute,
    fill_body,
    local_only,
    require_chromium,
    try_it_out,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def chromium() -> str:
    return require_chromium()


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
            page.route("**/*", lambda route: local_only(route, server, outside))
            page.goto(f"{server}/docs")

            added = try_it_out(page, "post", "/add_batch")
            example = fill_body(added, {"ref": ref, "sku": sku, "qty": 20, "eta": None})
            assert example == {"ref": "batch-001", "sku": "SMALL-TABLE", "qty": 20}
            execute(added, "201", f"location: /batches/{ref}")

            allocated = try_it_out(page, "post", "/allocate")
            example = fill_body(allocated, {"orderid": orderid, "sku": sku, "qty": 2})
            assert example == {"orderid": "order-001", "sku": "SMALL-TABLE", "qty": 2}
            execute(allocated, "202", f"location: /allocations/{orderid}")

            read = try_it_out(page, "get", "/allocations/{orderid}")
            parameter = read.get_by_placeholder("orderid", exact=True)
            assert parameter.input_value() == "order-001"
            parameter.fill(orderid)
            answer = execute(read, "200", f'"batchref": "{ref}"')
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
