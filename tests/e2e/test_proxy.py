"""Behind nginx, under a path prefix: the book's flow, Location headers and /docs.

A real nginx (Debian's package) runs on loopback with the location block
from deploy/nginx-location.conf, in front of the production command, as
docs/operations.md says: `allocation serve` with ROOT_PATH and FORWARDED_ALLOW_IPS.
Swagger UI is then used through it in Debian's chromium.
"""

import asyncio
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Response, sync_playwright

from tests.support.databases import ROOT
from tests.support.processes import Api, Processes, Service, json_lines, service_env
from tests.support.refs import random_ref
from tests.support.servers import free_port, require_program
from tests.support.swagger_ui import (
    CHROMIUM_ARGS,
    execute,
    fill_body,
    local_only,
    require_chromium,
    try_it_out,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PREFIX = "/allocation"

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream allocation_api {{ server 127.0.0.1:{api_port}; keepalive 4; }}
    server {{
        listen 127.0.0.1:{port};
        include {snippet};
    }}
}}
"""


@pytest.fixture(scope="module")
def nginx() -> str:
    return require_program("nginx", package="nginx", also=("/usr/sbin/nginx",))


@pytest.fixture(scope="module")
def chromium() -> str:
    return require_chromium()


@pytest.fixture
async def behind_nginx(
    nginx: str, private_database: str, tmp_path: Path
) -> AsyncIterator[tuple[str, Api]]:
    """(the proxy's URL with the prefix, the API behind it, on PostgreSQL)."""
    async with Processes(tmp_path) as processes:
        api = processes.api(service_env(private_database, root_path=PREFIX))
        await api.start_serving()

        port = free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                tmp=tmp_path,
                api_port=api.port,
                port=port,
                snippet=ROOT / "deploy" / "nginx-location.conf",
            )
        )
        check = await asyncio.to_thread(
            subprocess.run, [nginx, "-t", "-c", str(conf)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stderr
        proxy = Service("nginx", [nginx, "-c", str(conf)], {}, tmp_path / "nginx.log")
        processes.services.append(proxy)
        proxy.start()
        url = f"http://127.0.0.1:{port}{PREFIX}"
        async with httpx.AsyncClient() as client:
            for _ in range(100):
                try:
                    if (await client.get(f"{url}/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            else:
                pytest.fail(f"nginx never proxied /health\n{proxy.report()}\n{api.report()}")
        yield url, api


async def test_the_books_flow_through_the_proxy(behind_nginx: tuple[str, Api]) -> None:
    url, _ = behind_nginx
    ref, sku, orderid = random_ref("batch"), random_ref("sku"), random_ref("order")
    async with httpx.AsyncClient(base_url=url) as client:
        r = await client.post(
            f"{url}/add_batch", json={"ref": ref, "sku": sku, "qty": 10, "eta": None}
        )
        assert r.status_code == 201, r.text
        assert r.headers["location"] == f"{PREFIX}/batches/{ref}"

        r = await client.post(f"{url}/allocate", json={"orderid": orderid, "sku": sku, "qty": 3})
        assert r.status_code == 202, r.text
        location = r.headers["location"]
        assert location == f"{PREFIX}/orders/{orderid}"

        # The Location works as given, against the proxy's origin.
        origin = url.removesuffix(PREFIX)
        r = await client.get(origin + location)
        assert r.status_code == 200, r.text
        assert r.json()["lines"] == [{"sku": sku, "state": "allocated", "batchref": ref}]
        r = await client.get(f"{url}/allocations/{orderid}")
        assert r.json() == [{"sku": sku, "batchref": ref}]


async def test_docs_and_openapi_under_the_prefix(behind_nginx: tuple[str, Api]) -> None:
    url, _ = behind_nginx
    async with httpx.AsyncClient() as client:
        home = await client.get(f"{url}/")
        docs = await client.get(f"{url}/docs")
        spec = await client.get(f"{url}/openapi.json")

    # The front page leads to the docs under the prefix, by a path the proxy serves.
    assert (home.status_code, home.headers["location"]) == (307, f"{PREFIX}/docs")
    assert docs.status_code == 200
    assert f"'{PREFIX}/openapi.json'" in docs.text or f'"{PREFIX}/openapi.json"' in docs.text
    assert spec.status_code == 200
    # Swagger UI's "Try it out" sends requests to the server listed here.
    assert spec.json()["servers"] == [{"url": PREFIX}]


async def test_swagger_uis_own_files_load_through_the_proxy(behind_nginx: tuple[str, Api]) -> None:
    url, _ = behind_nginx
    origin = url.removesuffix(PREFIX)
    async with httpx.AsyncClient() as client:
        page = (await client.get(f"{url}/docs")).text
        files = re.findall(r'(?:href|src)="(/[^"]+)"', page)
        answers = {path: (await client.get(origin + path)).status_code for path in files}

    scripts = [path for path in files if path.endswith(".js")]
    assert scripts, page
    assert all(path.startswith(f"{PREFIX}/") for path in files), files
    assert answers == dict.fromkeys(files, 200)


async def test_a_person_adds_a_batch_in_swagger_ui_through_the_proxy(
    behind_nginx: tuple[str, Api], chromium: str
) -> None:
    url, _ = behind_nginx
    ref, sku = random_ref("batch"), random_ref("sku")

    await asyncio.to_thread(_add_a_batch_in_swagger_ui, chromium, url, ref, sku)

    # Executed for real: the batch is there, read back past the browser.
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{url}/batches/{ref}")
    assert r.status_code == 200, r.text
    assert r.json()["sku"] == sku


def _add_a_batch_in_swagger_ui(chromium: str, url: str, ref: str, sku: str) -> None:
    """Open /docs through the proxy, "Try it out" on POST /add_batch, Execute."""
    outside: list[str] = []
    failed: list[str] = []

    def note_failure(response: Response) -> None:
        if response.status >= 400:
            failed.append(f"{response.status} {response.url}")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.route("**/*", lambda route: local_only(route, url, outside))
            page.on("response", note_failure)
            page.goto(f"{url}/docs")  # returns once the page's files have loaded
            assert failed == [], "Swagger UI's own files did not load"

            added = try_it_out(page, "post", "/add_batch")
            fill_body(added, {"ref": ref, "sku": sku, "qty": 20, "eta": None})
            execute(added, "201", f"location: {PREFIX}/batches/{ref}")
        finally:
            browser.close()

    assert outside == [], "the page asked for files from outside the proxy"
    assert failed == []


async def test_the_callers_address_and_request_id_reach_the_log(
    behind_nginx: tuple[str, Api],
) -> None:
    url, api = behind_nginx
    async with httpx.AsyncClient() as client:
        r = await client.get(
            f"{url}/batches/none-such",
            headers={"X-Forwarded-For": "203.0.113.9", "X-Request-ID": "via-proxy-1"},
        )

    assert r.status_code == 404
    assert r.headers["x-request-id"] == "via-proxy-1"
    await api.shut_down()
    lines = [rec for rec in json_lines(api.output()) if rec["request_id"] == "via-proxy-1"]
    # The path as the caller asked for it: the proxy passes it on whole.
    assert [(rec["path"], rec["route"], rec["client"]) for rec in lines] == [
        (f"{PREFIX}/batches/none-such", "/batches/{ref}", "203.0.113.9")
    ]
