"""What the service withstands, tried as an attacker would: against the Dockerfile's CMD.

Each test starts the API exactly as the image does (its CMD, on loopback and a
free port), with the 1,024 open files a container commonly gets, and does
what a hostile or careless client does: idle and dripping connections, huge
headers, forged Host and log lines, bodies before credentials.
"""

from __future__ import annotations

import asyncio
import re
import resource
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.entrypoints.http import problems
from tests.support.databases import alembic_upgrade
from tests.support.polling import eventually
from tests.support.processes import Api, Processes, message_of, run_cli, service_env
from tests.support.refs import random_ref
from tests.support.servers import RedisServer

pytestmark = pytest.mark.slow

OPEN_FILES = 1024
HEADER_TIMEOUT = 10.0  # the default, as deployed
TOKEN = "w" * 32


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'allocation.db'}"
    alembic_upgrade(url)
    return url


@pytest.fixture
async def image(database: str, tmp_path: Path) -> AsyncIterator[Api]:
    """The image's CMD, production settings and a token, at 1,024 open files."""
    env = service_env(database, environment="production", api_token=TOKEN, log_format="json")
    async with Processes(tmp_path) as processes:
        api = processes.image(env, open_files=OPEN_FILES)
        await api.start_serving()
        yield api


@pytest.fixture(autouse=True)
def room_for_many_sockets() -> None:
    """This test process opens more sockets than the server may: raise its own limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8 * OPEN_FILES
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"this process may open only {hard} files")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def health_answers_every_time(url: str, times: int = 10, within: float = 2.0) -> None:
    async with httpx.AsyncClient(timeout=within) as http:
        for _ in range(times):
            started = time.monotonic()
            r = await http.get(f"{url}/health")
            assert r.status_code == 200
            assert time.monotonic() - started <= within


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr, unused-ignore]


def served_by(api: Api) -> int:
    """The pid that serves (the image runs one process: prlimit execs the command)."""
    return api.process.pid


async def test_more_idle_connections_than_descriptors_cannot_stop_it(image: Api) -> None:
    idle = []
    try:
        for _ in range(OPEN_FILES + 76):
            idle.append(await asyncio.open_connection("127.0.0.1", image.port))

        await health_answers_every_time(image.url)
    finally:
        for _, writer in idle:
            writer.close()
    assert "the most this process takes: closing the longest idle" in image.output()


async def test_clients_dripping_headers_cannot_stop_it_and_are_cut_off(image: Api) -> None:
    async def drip() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", image.port)
        started = time.monotonic()
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        try:
            while time.monotonic() - started < 60:
                writer.write(b"X-Slow: one line every two seconds\r\n")
                await writer.drain()
                try:
                    if await asyncio.wait_for(reader.read(1), 2.0) == b"":
                        break  # closed by the server
                except TimeoutError:
                    continue
        except OSError:
            pass
        finally:
            writer.close()
        return time.monotonic() - started

    drippers = [asyncio.create_task(drip()) for _ in range(200)]
    await asyncio.sleep(1)  # all of them at it
    await health_answers_every_time(image.url)
    lasted = await asyncio.gather(*drippers)

    assert max(lasted) <= HEADER_TIMEOUT + 4, sorted(lasted)[-5:]


async def test_a_connection_that_sends_nothing_is_closed_within_30_s(image: Api) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", image.port)
    started = time.monotonic()

    assert await asyncio.wait_for(reader.read(1), 30) == b""

    assert time.monotonic() - started <= 30
    writer.close()


def answer_to_one_write(port: int, head_bytes: int) -> bytes:
    """What the server answers to a request whose head of about ``head_bytes`` is sent at once."""
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    padding = head_bytes - len(head) - len(b"X-Big: \r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + b"X-Big: " + b"a" * padding + b"\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("head_bytes", [40_000, 100_000])
async def test_a_head_past_the_limit_sent_in_one_write_is_refused(
    image: Api, head_bytes: int
) -> None:
    answer = await asyncio.to_thread(answer_to_one_write, image.port, head_bytes)
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert problems.HEADERS_TOO_LARGE.uri.encode() in body

    under_the_limit = await asyncio.to_thread(answer_to_one_write, image.port, 30_000)
    assert under_the_limit.startswith(b"HTTP/1.1 200 "), under_the_limit[:200]


async def test_headers_past_the_limit_are_refused_before_they_are_buffered(image: Api) -> None:
    two_mb = "a" * (2 * 1024 * 1024)
    async with httpx.AsyncClient(timeout=10) as http:
        try:
            r = await http.get(f"{image.url}/health", headers={"X-Big": two_mb})
        except (httpx.RemoteProtocolError, httpx.WriteError, httpx.ReadError):
            pass  # closed on it: refused too
        else:
            assert r.status_code == 431, r.text
            # The problem the app would write, though the app never saw the request.
            assert r.headers["content-type"] == problems.MEDIA_TYPE
            assert r.json()["type"] == problems.HEADERS_TOO_LARGE.uri

    before = rss_mb(served_by(image))

    def send_100_mb() -> None:
        with socket.create_connection(("127.0.0.1", image.port)) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
            chunk = b"a" * 65536
            try:
                for _ in range(100 * 16):
                    s.sendall(chunk)
            except OSError:
                return  # the server closed the connection

    sender = asyncio.create_task(asyncio.to_thread(send_100_mb))
    await health_answers_every_time(image.url, times=5)
    await sender

    assert rss_mb(served_by(image)) - before < 20


async def test_no_redirect_or_header_names_a_host_the_client_chose(image: Api) -> None:
    async with httpx.AsyncClient(base_url=image.url, timeout=10) as http:
        r = await http.get("/products/x/?after=0/1", headers={"Host": "evil.example.com"})
        assert r.status_code == 307
        assert r.headers["location"] == "/products/x?after=0/1"
        every = " ".join(f"{k}: {v}" for k, v in r.headers.items())
        assert "evil" not in every


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"this is not JSON", "application/json"),
        (b"{" * 70_000, "application/json"),  # over MAX_BODY_BYTES too
        (b"orderid=o1&sku=s&qty=1", "application/x-www-form-urlencoded"),
    ],
)
async def test_a_write_without_the_token_is_a_401_whatever_its_body(
    image: Api, body: bytes, content_type: str
) -> None:
    async with httpx.AsyncClient(base_url=image.url, timeout=10) as http:
        r = await http.post("/allocate", content=body, headers={"Content-Type": content_type})
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == 'Bearer realm="allocation"'
        assert r.json()["type"] == problems.TOKEN_MISSING.uri
        wrong = {"Content-Type": content_type, "Authorization": "Bearer not-the-token"}
        r = await http.post("/allocate", content=body, headers=wrong)
        assert r.status_code == 401, r.text
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
        assert r.json()["type"] == problems.TOKEN_INVALID.uri


async def test_json_nested_too_deep_is_the_422_of_any_invalid_json(image: Api) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=image.url, timeout=10) as http:
        deep = await http.post("/allocate", content=b"[" * 1000 + b"]" * 1000, headers=auth)
        broken = await http.post("/allocate", content=b'{"orderid": ', headers=auth)

    assert (deep.status_code, broken.status_code) == (422, 422)
    assert deep.json()["message"].startswith("The request body is not valid JSON")
    assert deep.json()["type"] == broken.json()["type"] == problems.INVALID_JSON.uri
    assert broken.json()["message"].startswith("The request body is not valid JSON")


async def test_metrics_can_be_closed_with_a_token(database: str, tmp_path: Path) -> None:
    scraper = "m" * 32
    env = service_env(database, metrics_token=scraper)
    async with Processes(tmp_path) as processes:
        api = processes.image(env)
        await api.start_serving()
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
            refused = await http.get("/metrics")
            wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
            scraped = await http.get("/metrics", headers={"Authorization": f"Bearer {scraper}"})

    assert (refused.status_code, wrong.status_code) == (401, 401)
    assert refused.json()["type"] == problems.TOKEN_MISSING.uri
    assert wrong.json()["type"] == problems.TOKEN_INVALID.uri
    assert scraped.status_code == 200
    assert "http_requests_total" in scraped.text


async def test_a_request_cannot_forge_a_line_of_the_text_log(database: str, tmp_path: Path) -> None:
    forged = "2026-12-01 10:00:00,000 CRITICAL app.main [-] the database was dropped"
    env = service_env(database, log_format="text")
    async with Processes(tmp_path) as processes:
        api = processes.image(env)
        await api.start_serving()
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
            await http.get("/batches/x%0a" + forged.replace(" ", "%20"))
        await api.shut_down()

    lines = api.output().splitlines()
    assert not [line for line in lines if line.startswith(forged[:24])], api.report()
    assert any("\\n2026-12-01" in line for line in lines), api.report()


async def test_production_without_a_token_refuses_to_start_unless_told(
    database: str, tmp_path: Path
) -> None:
    env = service_env(database, environment="production")
    async with Processes(tmp_path) as processes:
        refused = processes.image(env, name="refused")
        refused.start()
        assert await refused.wait(within=30) != 0
        lines = refused.output().strip().splitlines()[1:]  # after the runner's banner
        assert len(lines) == 1, refused.report()
        assert message_of(lines[0]).startswith("cannot start: API_TOKEN is not set")
        assert "ALLOW_ANONYMOUS_WRITES" in lines[0]

        # The worker and the operator's tools need no token.
        outbox = await run_cli(env, "outbox")
        assert outbox.returncode == 0, outbox.stderr

        told = processes.image({**env, "ALLOW_ANONYMOUS_WRITES": "true"}, name="told")
        await told.start_serving()
        batch = {"ref": random_ref("batch"), "sku": random_ref("sku"), "qty": 1, "eta": None}
        async with httpx.AsyncClient(base_url=told.url, timeout=10) as http:
            assert (await http.post("/batches", json=batch)).status_code == 201
        assert "API_TOKEN is not set: anyone who can reach the API can write" in told.output()


async def test_a_redis_outage_is_two_log_lines_and_the_api_stays_ready(
    database: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = service_env(database, redis_server.url, relay_interval=0.2, log_format="json")
    async with Processes(tmp_path) as processes:
        api, worker = await processes.start_api_and_worker(env)
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
            sku = random_ref("sku")
            batch = {"ref": random_ref("batch"), "sku": sku, "qty": 1000, "eta": None}
            assert (await http.post("/batches", json=batch)).status_code == 201
            await redis_server.stop()
            started = time.monotonic()
            orders = []
            while time.monotonic() - started < 7:  # writes go on for the whole outage
                orders.append(random_ref("order"))
                line = {"orderid": orders[-1], "sku": sku, "qty": 1}
                assert (await http.post("/allocate", json=line)).status_code == 202
                ready = await http.get("/ready")
                assert ready.status_code == 200, ready.text
                assert ready.json()["checks"]["redis"] == "degraded: events wait in the outbox"
                await asyncio.sleep(0.2)  # pacing the writer, not waiting for a state
            scrape = (await http.get("/metrics")).text
            assert 'allocation_dependency_up{dependency="redis"} 0.0' in scrape
            await redis_server.start()

            def told_it_is_back() -> bool:
                return all("redis available again after" in s.output() for s in (api, worker))

            await eventually(told_it_is_back, 30, processes.report)
            assert (await http.get("/ready")).json()["checks"]["redis"] == "ok"

    for process in (api, worker):
        log = process.output()
        assert log.count("redis unavailable (") == 1, process.report()
        assert log.count("redis available again after") == 1, process.report()
        assert "Traceback" not in log, process.report()
        assert '"exc_info"' not in log, process.report()
    assert len(orders) > 10
