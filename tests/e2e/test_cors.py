"""CORS as a browser meets it: a page of another origin writes, then follows the Location.

Debian's chromium (Playwright) opens pages served from two origins of the
test's own; a real uvicorn runs with ``CORS_ALLOW_ORIGINS`` naming one of them
and an ``API_TOKEN`` set. The named origin's script adds a batch, allocates a
line, reads the answer's ``Location`` and follows it; the other's cannot write.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright
from starlette.middleware.cors import CORSMiddleware

from app.config import Settings
from app.entrypoints.http import problems
from app.main import create_app
from tests.support.apps import serving
from tests.support.databases import ROOT, alembic_upgrade
from tests.support.processes import ALLOCATION, service_env
from tests.support.refs import random_ref
from tests.support.servers import free_port, static_site, wait_until_serving
from tests.support.swagger_ui import CHROMIUM_ARGS, require_chromium

pytestmark = pytest.mark.slow

TOKEN = "cors-test-token-0123456789"

# What a shop's page does with the service: write with its token, then follow Location.
PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>A shop</title></head><body>
<script>
async function allocate(api, token, batch, line) {
  const headers = {"Content-Type": "application/json", "Authorization": `Bearer ${token}`};
  try {
    const post = (path, body) =>
      fetch(`${api}${path}`, {method: "POST", headers, body: JSON.stringify(body)});
    const added = await post("/batches", batch);
    const accepted = await post("/allocate", line);
    const location = accepted.headers.get("Location");
    const order = await fetch(new URL(location, api));
    return {added: added.status, accepted: accepted.status, location, order: await order.json()};
  } catch (e) {
    return {error: String(e)};
  }
}
</script>
</body></html>
"""


@dataclass
class Sites:
    api: str
    allowed: str  # an origin CORS_ALLOW_ORIGINS names
    other: str  # one it does not


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[Sites]:
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "shop.html").write_text(PAGE)
    database = f"sqlite+aiosqlite:///{tmp_path / 'allocation.db'}"
    alembic_upgrade(database)
    with ExitStack() as stack:
        allowed = stack.enter_context(static_site(pages))
        other = stack.enter_context(static_site(pages))
        env = service_env(database, api_token=TOKEN, cors_allow_origins=allowed)
        port = free_port()
        server = subprocess.Popen(
            [ALLOCATION, "serve", "--port", str(port)],
            cwd=ROOT,
            env={**env, "LOG_LEVEL": "WARNING"},
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_serving(url, server, time.monotonic() + 30)
            yield Sites(url, allowed, other)
        finally:
            server.terminate()
            server.wait(timeout=15)


def allocate_from(chromium: str, origin: str, api: str, ids: dict[str, str]) -> dict[str, Any]:
    """What the shop's page at ``origin`` gets from ``allocate()``, in a real browser."""
    batch = {"ref": ids["ref"], "sku": ids["sku"], "qty": 10}
    line = {"orderid": ids["orderid"], "sku": ids["sku"], "qty": 2}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{origin}/shop.html")
            result: dict[str, Any] = page.evaluate(
                "([api, token, batch, line]) => allocate(api, token, batch, line)",
                [api, TOKEN, batch, line],
            )
        finally:
            browser.close()
    return result


def test_a_page_of_an_allowed_origin_allocates_and_follows_the_location(sites: Sites) -> None:
    chromium = require_chromium()
    ids = {"ref": random_ref("batch"), "sku": random_ref("sku"), "orderid": random_ref("order")}

    result = allocate_from(chromium, sites.allowed, sites.api, ids)

    # The preflights needed no token; the script read Location, and it answered.
    assert result == {
        "added": 201,
        "accepted": 202,
        "location": f"/orders/{ids['orderid']}",
        "order": {
            "orderid": ids["orderid"],
            "lines": [{"sku": ids["sku"], "state": "allocated", "batchref": ids["ref"]}],
        },
    }


def test_a_page_of_another_origin_cannot_write(sites: Sites) -> None:
    chromium = require_chromium()
    ids = {"ref": random_ref("batch"), "sku": random_ref("sku"), "orderid": random_ref("order")}

    result = allocate_from(chromium, sites.other, sites.api, ids)

    assert result == {"error": "TypeError: Failed to fetch"}
    # The browser sent no write: its preflight was refused.
    assert httpx.get(f"{sites.api}/batches/{ids['ref']}").status_code == 404


def preflight(api: str, origin: str, method: str = "POST") -> httpx.Response:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization,content-type,idempotency-key",
    }
    return httpx.options(f"{api}/allocate", headers=headers)


def test_a_preflight_from_an_allowed_origin_is_answered_without_a_token(sites: Sites) -> None:
    r = preflight(sites.api, sites.allowed)

    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == sites.allowed
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key"} <= allowed
    assert "PATCH" in r.headers["access-control-allow-methods"]


@pytest.mark.parametrize(
    ("allowed", "method", "refused"),
    [(False, "POST", "origin"), (True, "DELETE", "method")],
    ids=["another-origin", "a-method-not-taken"],
)
def test_a_refused_preflight_is_starlettes_own_400_with_no_cors_header(
    sites: Sites, allowed: bool, method: str, refused: str
) -> None:
    r = preflight(sites.api, sites.allowed if allowed else sites.other, method)

    assert (r.status_code, r.text) == (400, f"Disallowed CORS {refused}")


def test_answers_to_an_allowed_origin_expose_location_and_to_others_nothing(
    sites: Sites,
) -> None:
    allowed = httpx.get(f"{sites.api}/health", headers={"Origin": sites.allowed})
    other = httpx.get(f"{sites.api}/health", headers={"Origin": sites.other})

    assert allowed.headers["access-control-allow-origin"] == sites.allowed
    exposed = {h.strip() for h in allowed.headers["access-control-expose-headers"].split(",")}
    assert {"Location", "Link", "Retry-After", "X-Consistency-Token"} <= exposed
    assert "access-control-allow-origin" not in other.headers


async def test_without_origins_set_there_is_no_cors_at_all(sqlite_url: str) -> None:
    app = create_app(Settings(database_url=sqlite_url))
    # Not installed: reads pay nothing for it.
    installed: list[object] = [m.cls for m in app.user_middleware]
    assert CORSMiddleware not in installed
    async with serving(app) as client:
        asked = await client.options(
            "/allocate",
            headers={"Origin": "http://127.0.0.1:1", "Access-Control-Request-Method": "POST"},
        )
        read = await client.get("/health", headers={"Origin": "http://127.0.0.1:1"})

    assert asked.status_code == 405
    assert asked.json()["type"] == problems.METHOD_NOT_ALLOWED.uri
    assert not [name for name in read.headers if name.startswith("access-control-")]


@pytest.mark.parametrize(
    "value", ["*", "https://shop.example.com/", "shop.example.com", "https://a.com/path"]
)
def test_a_value_that_is_not_a_list_of_origins_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="must be origins"):
        Settings(cors_allow_origins=value)


def test_origins_are_read_from_a_comma_separated_list() -> None:
    settings = Settings(cors_allow_origins=" https://a.example.com , http://localhost:3000,")
    assert settings.cors_origins == ["https://a.example.com", "http://localhost:3000"]
