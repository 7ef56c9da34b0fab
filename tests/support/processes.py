"""Real processes for end-to-end tests: uvicorn, ``allocation worker`` and the CLI.

Every process writes its output to a log file of its own, which a failing
assertion quotes (``Processes.report()``). Every process started through a
``Processes`` group is stopped when the group's ``async with`` block ends,
whatever happened inside it. Nothing here sleeps to wait for a state: it polls
with a deadline (``eventually``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from sqlalchemy import make_url

from app.config import Settings
from tests.support.polling import eventually
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
# The ``allocation`` console script installed next to this interpreter.
ALLOCATION = str(Path(sys.executable).with_name("allocation"))

# Every setting of app.config.Settings: a test process gets only what the test says.
_SETTINGS = {name.upper() for name in Settings.model_fields}
LOG_TAIL = 6000  # characters of each log quoted in a failure message


def service_env(
    database_url: str, redis_url: str | None = None, **settings: str | float | bool
) -> dict[str, str]:
    """The environment of a service process: these settings and no others.

    ``settings`` are Settings fields by name, e.g. ``relay_interval=0.2``.
    """
    env = {k: v for k, v in os.environ.items() if k.upper() not in _SETTINGS}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url or "",
        SMTP_HOST="",
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    for name, value in settings.items():
        env[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def dead_redis_url() -> str:
    """A Redis URL where nothing listens: every publish to it fails at once."""
    return f"redis://127.0.0.1:{free_port()}/0"


class Service:
    """One subprocess, with stdout and stderr appended to ``log``."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.log = log
        self._process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self._process is not None, f"{self.name} was never started"
        return self._process

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"---- {self.name}: start #{self.starts}: {self.argv}\n".encode())
            out.flush()
            self._process = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def send(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    async def wait(self, within: float) -> int:
        """The exit code; TimeoutError if the process is still running after ``within`` s."""
        try:
            return await asyncio.to_thread(self.process.wait, within)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.name} still running after {within}s") from None

    async def kill(self) -> int:
        """SIGKILL: the process dies at once, in the middle of whatever it does."""
        self.process.kill()
        return await self.wait(10)

    async def terminate(self, within: float = 15) -> int:
        """SIGTERM, and the exit code; TimeoutError if it does not stop in time."""
        self.send(signal.SIGTERM)
        return await self.wait(within)

    async def stop(self) -> None:
        """Stop it, however: gently if it listens, by force if not. For cleanups."""
        if self._process is None or self._process.poll() is not None:
            return
        with contextlib.suppress(TimeoutError):
            await self.terminate(within=10)
            return
        await self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def report(self) -> str:
        state = "running" if self.running else f"exit code {self._returncode()}"
        out = self.output()
        tail = out if len(out) <= LOG_TAIL else "[...]\n" + out[-LOG_TAIL:]
        return f"==== {self.name} ({state}), {self.log}:\n{tail}"

    def _returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode


class Api(Service):
    """``uvicorn app.main:app`` on one port, one process."""

    def __init__(self, name: str, env: Mapping[str, str], log: Path, port: int) -> None:
        argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"]
        super().__init__(name, [*argv, "--port", str(port)], env, log)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    async def serving(self, within: float = 30) -> None:
        """Wait until it answers HTTP (it fails at once if the process exits)."""
        async with httpx.AsyncClient(timeout=2) as client:

            async def answers() -> bool:
                assert self.running, f"{self.name} exited\n{self.report()}"
                try:
                    r = await client.get(f"{self.url}/openapi.json")
                except httpx.TransportError:
                    return False
                return r.status_code == 200

            await eventually(answers, within, lambda: f"{self.name} not serving\n{self.report()}")

    async def start_serving(self, within: float = 30) -> None:
        self.start()
        await self.serving(within)

    async def shut_down(self, within: float = 15) -> None:
        """SIGTERM, and check that the lifespan ended (relay stopped, pools closed).

        uvicorn re-raises the signal once it has shut down, so the exit status
        is "killed by SIGTERM" even when all went well.
        """
        code = await self.terminate(within)
        assert code in (0, -signal.SIGTERM), f"{self.name}: exit code {code}\n{self.report()}"
        assert "Application shutdown complete" in self.output(), self.report()


class Worker(Service):
    """``allocation worker``: the Redis consumer and a relay."""

    LISTENING = "listening on change_batch_quantity"
    READING = "reading the stream change_batch_quantity"

    def __init__(self, name: str, env: Mapping[str, str], log: Path) -> None:
        super().__init__(name, [ALLOCATION, "worker"], env, log)

    async def listening(self, within: float = 30) -> None:
        """Wait until its consumer has subscribed (it logs so)."""

        def subscribed() -> bool:
            assert self.running, f"{self.name} exited\n{self.report()}"
            return self.output().count(self.LISTENING) >= self.starts

        await eventually(subscribed, within, lambda: f"{self.name} not listening\n{self.report()}")

    async def start_listening(self, within: float = 30) -> None:
        self.start()
        await self.listening(within)

    async def reading(self, within: float = 30) -> None:
        """Wait until its stream consumer reads the stream, in its group (it logs so)."""

        def in_group() -> bool:
            assert self.running, f"{self.name} exited\n{self.report()}"
            return self.output().count(self.READING) >= self.starts

        await eventually(in_group, within, lambda: f"{self.name} not reading\n{self.report()}")

    async def start_reading(self, within: float = 30) -> None:
        self.start()
        await self.reading(within)


class Processes:
    """The processes of one test; ``async with`` stops them all on the way out."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.services: list[Service] = []

    async def __aenter__(self) -> Processes:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.gather(*(s.stop() for s in self.services))

    def api(self, env: Mapping[str, str], name: str = "api", port: int | None = None) -> Api:
        api = Api(name, env, self._log(name), port or free_port())
        self.services.append(api)
        return api

    def worker(self, env: Mapping[str, str], name: str = "worker") -> Worker:
        worker = Worker(name, env, self._log(name))
        self.services.append(worker)
        return worker

    async def start_api_and_worker(self, env: Mapping[str, str]) -> tuple[Api, Worker]:
        """An API and a worker on ``env``, started together; back once both are at work."""
        api, worker = self.api(env), self.worker(env)
        api.start()
        worker.start()
        await api.serving()
        await worker.listening()
        return api, worker

    def report(self) -> str:
        """Every process's state and the tail of its log, for a failure message."""
        return "\n".join(s.report() for s in self.services)

    def _log(self, name: str) -> Path:
        return self.log_dir / f"{name}-{len(self.services)}.log"


async def run_cli(
    env: Mapping[str, str], *args: str, within: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``allocation ARGS`` to the end, without a terminal; output captured."""
    return await asyncio.to_thread(
        subprocess.run,
        [ALLOCATION, *args],
        cwd=ROOT,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=within,
        check=False,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


# -- databases ---------------------------------------------------------------


async def snapshot(http: httpx.AsyncClient, paths: list[str]) -> dict[str, tuple[int, Any]]:
    """Each path's status and JSON body, read eight at a time."""
    limit = asyncio.Semaphore(8)

    async def read(path: str) -> tuple[int, Any]:
        async with limit:
            r = await http.get(path)
        return r.status_code, r.json()

    answers = await asyncio.gather(*(read(path) for path in paths))
    return dict(zip(paths, answers, strict=True))


async def allocations_of(
    http: httpx.AsyncClient, orderids: list[str]
) -> dict[str, tuple[int, Any]]:
    """Each order's ``GET /allocations/{orderid}`` answer: status and body."""
    answers = await snapshot(http, [f"/allocations/{orderid}" for orderid in orderids])
    return dict(zip(orderids, answers.values(), strict=True))


# -- Redis -------------------------------------------------------------------


class Subscriber:
    """Collects the JSON messages of one Redis channel, from subscription on.

    The machine's Redis is shared: callers filter on their own ids.
    """

    def __init__(self, redis_url: str, channel: str) -> None:
        self.channel = channel
        self.messages: list[dict[str, Any]] = []
        self._arrivals: dict[int, float] = {}  # id(message) -> time.monotonic() on arrival
        self._client = Redis.from_url(redis_url, decode_responses=True)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Subscriber:
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            # Wait for the confirmation: from here on, nothing published is missed.
            deadline = time.monotonic() + 10
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "subscribe":
                    break
                assert time.monotonic() < deadline, f"no confirmation of SUBSCRIBE {self.channel}"
        except BaseException:
            await self._client.aclose()
            raise
        self._task = asyncio.create_task(self._collect(pubsub), name=f"subscriber {self.channel}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        await self._client.aclose()

    async def _collect(self, pubsub: PubSub) -> None:
        async with pubsub:  # closed on the way out
            while not self._stop.is_set():
                message = await pubsub.get_message(timeout=0.2)
                if message is None or message["type"] != "message":
                    continue
                try:
                    data = json.loads(message["data"])
                except ValueError:
                    continue
                if isinstance(data, dict):
                    self.messages.append(data)
                    self._arrivals[id(data)] = time.monotonic()

    def arrival(self, message: dict[str, Any]) -> float:
        """When ``message`` (one of ``messages``) arrived, in ``time.monotonic()`` seconds."""
        return self._arrivals[id(message)]

    def where(self, **fields: Any) -> list[dict[str, Any]]:
        return [m for m in self.messages if all(m.get(k) == v for k, v in fields.items())]

    def about(self, skus: set[str]) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("sku") in skus]

    async def caught_up(self, publisher: Redis, within: float = 10) -> None:
        """Wait until everything published before now has reached this subscriber.

        Redis delivers a channel's messages in the order it received them, so
        once a marker published now arrives, every earlier message has. The
        marker looks like any line_allocated message, of a sku nobody uses.
        """
        marker = uuid.uuid4().hex
        payload = {"orderid": marker, "sku": f"marker-{marker}", "qty": 0}
        payload |= {"batchref": marker, "event_id": marker}
        assert self._task is not None, "subscriber not entered"
        assert not self._task.done(), "subscriber not running"
        await publisher.publish(self.channel, json.dumps(payload))
        await eventually(
            lambda: any(m.get("event_id") == marker for m in self.messages),
            within,
            f"own marker on {self.channel} never arrived",
        )


class SlowProxy:
    """A TCP proxy to Redis that holds each request ``delay`` seconds: a slow broker.

    Answers come back at once; only what clients send is held up.
    """

    def __init__(self, redis_url: str, delay: float) -> None:
        target = make_url(redis_url)
        self._target = (target.host or "127.0.0.1", target.port or 6379)
        self._database = target.database or "0"
        self.delay = delay
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{self._database}"

    async def __aenter__(self) -> SlowProxy:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await self._server.wait_closed()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        for pump in (
            self._pump(reader, up_writer, self.delay),
            self._pump(up_reader, writer, 0.0),
        ):
            task = asyncio.create_task(pump)
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
    ) -> None:
        try:
            while data := await reader.read(65536):
                if delay:
                    await asyncio.sleep(delay)  # the simulated latency
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
