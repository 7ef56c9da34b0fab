"""Swagger UI and ReDoc in a real browser, as a newcomer meets them.

In Swagger UI: add a batch, allocate a line, read the order back; on the way,
what the page shows a reader (each id's rule in words, no optional parameter
filled in, an example for each answer, the first operation on the first
screen). The pages are fastapi-offline's, as they come. It drives
Debian's chromium (``apt-get install chromium``) through Playwright, against a
real uvicorn on PostgreSQL. ``SWAGGER_SCREENSHOT=PATH`` also saves the final
screen there: that is how the README's picture is made.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, sync_playwright

from app import wire as fields
from app.entrypoints.http import problems
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
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
FIRST_SCREEN = 600  # px of a 1000 px high window: the first operation shows in full above


def assert_rules_in_words(operation: Locator) -> None:
    """Every schema of the operation opened in full: each id's rule in words."""
    for schema in operation.get_by_text("Schema", exact=True).all():
        schema.click()
    expand = operation.get_by_role("button", name="Expand all")
    for _ in range(100):  # each opens a schema whole, and its own buttons turn "Collapse all"
        if not expand.count():
            break
        expand.first.click()
    assert not expand.count()
    assert fields.ID_RULES.split(":")[0] in operation.inner_text()  # "Printable"


def shown_example(operation: Locator, status: str) -> Any:
    """The example answer the operation shows for ``status``, before it is tried."""
    row = operation.locator(f'tr.response[data-code="{status}"]')
    return json.loads(row.locator(".example pre, pre.example").first.inner_text())


@pytest.fixture
def chromium() -> str:
    return require_chromium()


def test_a_person_allocates_and_reads_the_order_back_in_swagger_ui(
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
            # The service in a few lines, and the operations right below: on the first screen.
            first = page.locator(".opblock").first.bounding_box()
            assert first is not None
            assert first["y"] + first["height"] < FIRST_SCREEN, first

            added = try_it_out(page, "post", "/add_batch")
            example = fill_body(added, {"ref": ref, "sku": sku, "qty": 20, "eta": None})
            assert example == {"ref": "batch-001", "sku": "SMALL-TABLE", "qty": 20, "eta": None}
            execute(added, "201", f"location: /batches/{ref}")

            allocated = try_it_out(page, "post", "/allocate")
            example = fill_body(allocated, {"orderid": orderid, "sku": sku, "qty": 2})
            assert example == {"orderid": "order-001", "sku": "SMALL-TABLE", "qty": 2}
            # The answer the page shows before it is tried: the real one, not "string".
            assert shown_example(allocated, "202") == {"orderid": "order-001"}
            execute(allocated, "202", f"location: /orders/{orderid}")

            # The Location: the order, and what became of its line.
            read = try_it_out(page, "get", "/orders/{orderid}")
            parameter = read.get_by_placeholder("orderid", exact=True)
            assert parameter.input_value() == "order-001"
            # An optional parameter is left empty, and so is left out of the request.
            assert read.get_by_placeholder("after", exact=True).input_value() == ""
            assert shown_example(read, "200")["lines"][0]["state"] == "allocated"
            parameter.fill(orderid)
            answer = execute(read, "200", f'"batchref": "{ref}"')
            assert "after" not in read.locator(".request-url").inner_text()
            assert json.loads(answer.locator("pre.microlight").first.inner_text()) == {
                "orderid": orderid,
                "lines": [{"sku": sku, "state": "allocated", "batchref": ref}],
            }

            # The picture: the operation, from its title down to the order it answered.
            page.set_viewport_size({"width": 1280, "height": 1350})
            read.evaluate("operation => operation.scrollIntoView()")
            page.screenshot(path=screenshot)

            # Every schema of the two operations opened in full: the rules in words.
            assert_rules_in_words(allocated)
            assert_rules_in_words(read)
        finally:
            browser.close()

    assert outside == [], "the page asked for files from outside the service"
    picture = screenshot.read_bytes()
    assert picture.startswith(PNG)
    assert len(picture) > 20_000, "the screenshot is too small to show the page"
    if target := os.environ.get("SWAGGER_SCREENSHOT"):
        (ROOT / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, ROOT / target)


def test_redoc_shows_the_rules_in_words_the_answers_and_every_errors_type(
    chromium: str, uvicorn_url: str
) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            outside: list[str] = []
            page.route("**/*", lambda route: local_only(route, uvicorn_url, outside))
            page.goto(f"{uvicorn_url}/redoc")
            page.get_by_role("heading", name="Read an order: each line allocated").wait_for()
            text = page.locator("body").inner_text()
        finally:
            browser.close()

    # But for its footer's logo, which ReDoc asks its CDN for and hides when it cannot load.
    assert set(outside) <= {REDOC_LOGO}, "ReDoc asked for files from outside the service"
    assert fields.ID_RULES.split(":")[0] in text
    # Every success's example, not a body of "string"s; and the errors section, every type.
    assert '"batchref": "batch-001"' in text
    assert '"ref": "string"' not in text
    for kind in problems.TYPES.values():
        assert kind.uri.removeprefix(problems.TYPE_PREFIX) in text
