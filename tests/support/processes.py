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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import make_url

from app.config import Settings
from tests.support.deploy import image_command_here
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
    """``allocation serve``, the production command, on one port, one process.

    ``argv``, when given, is the command to run instead (its port ``port``).
    """

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        log: Path,
        port: int,
        argv: list[str] | None = None,
    ) -> None:
        argv = argv or [ALLOCATION, "serve", "--host", "127.0.0.1", "--port", str(port)]
        super().__init__(name, argv, env, log)
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

    LISTENING = "listening on "  # change_batch_quantity, after CHANNEL_PREFIX
    READING = "reading the stream "

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

    def image(self, env: Mapping[str, str], open_files: int = 1024, name: str = "image") -> Api:
        """The API as the Dockerfile's CMD runs it, with a container's open-file limit."""
        port = free_port()
        command = image_command_here(port)
        command[0] = str(Path(sys.executable).with_name(command[0]))
        limit = ["prlimit", f"--nofile={open_files}:{open_files}", "--"]
        api = Api(name, env, self._log(name), port, [*limit, *command])
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


async def assert_no_drift(env: Mapping[str, str]) -> None:
    """``allocation reconcile`` on the database of ``env``: no drift between the write
    model, its ledger and the read models."""
    result = await run_cli(env, "reconcile")
    assert result.returncode == 0, describe(result)
    assert result.stdout.startswith("no drift: "), describe(result)


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


def json_lines(output: str) -> list[dict[str, Any]]:
    """The log's JSON records (the process runner's own banner lines are not JSON)."""
    records = []
    for line in output.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def message_of(line: str) -> str:
    """What a log line says: its ``message`` when it is a JSON record, else the line."""
    if line.startswith("{"):
        return str(json.loads(line)["message"])
    return line


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
