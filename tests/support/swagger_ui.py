"""Driving Swagger UI in Debian's chromium as a person does: expand, "Try it out", Execute."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, NoReturn

import pytest
from playwright.sync_api import Locator, Page, Route, expect

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
WAIT_MS = 15_000  # for an answer to show; a real one takes well under a second


def require_chromium() -> str:
    """Debian's chromium; missing, the test skips (fails under REQUIRE_SERVICES)."""
    if not CHROMIUM.exists():
        _unavailable("Debian's chromium is not installed (apt-get install chromium)")
    return str(CHROMIUM)


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("REQUIRE_SERVICES"):
        pytest.fail(f"{reason}, and REQUIRE_SERVICES says this run needs it")
    pytest.skip(reason)


def local_only(route: Route, server: str, outside: list[str]) -> None:
    """Let requests under ``server`` through; abort and note any other."""
    url = route.request.url
    if url.startswith(f"{server}/"):
        route.continue_()
    else:
        outside.append(url)
        route.abort()


def try_it_out(page: Page, method: str, path: str) -> Locator:
    """Expand the operation and press "Try it out", as a person does."""
    summary = page.locator(f'.opblock-summary-path[data-path="{path}"]')
    operation = page.locator(f".opblock-{method}").filter(has=summary)
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    return operation


def fill_body(operation: Locator, body: dict[str, Any]) -> Any:
    """Replace the example "Try it out" filled in with ``body``; the example."""
    editor = operation.locator("textarea.body-param__text")
    example = json.loads(editor.input_value())
    editor.fill(json.dumps(body, indent=2))
    return example


def execute(operation: Locator, status: str, shown: str) -> Locator:
    """Press Execute; the answer's row, once it shows ``status`` and the text ``shown``."""
    operation.get_by_role("button", name="Execute").click()
    answer = operation.locator(".live-responses-table tr.response")
    expect(answer.locator(".response-col_status")).to_have_text(status, timeout=WAIT_MS)
    expect(answer).to_contain_text(re.compile(re.escape(shown), re.IGNORECASE))
    return answer
