"""nats-server processes of the tests' own: one node, or a cluster of three, with JetStream.

Each node listens on 127.0.0.1 on free ports (never the machine's 4222),
keeps its JetStream store in a directory of the test's, and is stopped, or
killed, and its directory removed on leaving. A missing ``nats-server``
skips the test, or fails it under REQUIRE_SERVICES, as for Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from tests.support.polling import eventually
from tests.support.servers import free_port, require_program, stopped


async def _quiet(error: Exception) -> None:
    """A failed try at connecting: the caller's deadline speaks for it."""


class NatsNode:
    """One nats-server with JetStream; in a cluster when given its routes."""

    def __init__(
        self,
        binary: str,
        directory: Path,
        name: str,
        cluster_port: int | None = None,
        routes: Sequence[int] = (),
    ) -> None:
        self.binary = binary
        self.name = name
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.store = directory / name
        self.log = directory / f"{name}.log"
        self._cluster_port = cluster_port
        self._routes = list(routes)
        self._process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def _argv(self) -> list[str]:
        argv = [
            self.binary,
            "--addr",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--jetstream",
            "--store_dir",
            str(self.store),
            "--server_name",
            self.name,
            "--log",
            str(self.log),
        ]
        if self._cluster_port is not None:
            routes = ",".join(f"nats://127.0.0.1:{p}" for p in self._routes)
            argv += [
                "--cluster_name",
                "test",
                "--cluster",
                f"nats://127.0.0.1:{self._cluster_port}",
                "--routes",
                routes,
            ]
        return argv

    async def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self._process = await asyncio.create_subprocess_exec(
            *self._argv(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

    async def kill(self) -> None:
        """SIGKILL: the node dies at once, in the middle of whatever it does."""
        process = self._process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()

    async def stop(self) -> None:
        process, self._process = self._process, None
        await stopped(process)

    def server_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Nats:
    """A node, or a cluster of them: their URLs, and JetStream as a test looks at it."""

    def __init__(self, nodes: list[NatsNode]) -> None:
        self.nodes = nodes

    @property
    def url(self) -> str:
        """NATS_URL for them all."""
        return ",".join(node.url for node in self.nodes)

    async def ready(self, within: float = 30.0) -> None:
        """Until JetStream answers on every node (a cluster: once it has a leader)."""
        for node in self.nodes:

            async def answers(node: NatsNode = node) -> bool:
                assert node.running, f"{node.name} exited\n{node.server_log()[-3000:]}"
                try:
                    client = await nats.connect(
                        node.url, connect_timeout=1, allow_reconnect=False, error_cb=_quiet
                    )
                except Exception:
                    return False
                try:
                    await client.jetstream(timeout=1).account_info()
                except Exception:
                    return False
                finally:
                    await client.close()
                return True

            await eventually(answers, within, f"JetStream on {node.name}", interval=0.1)

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[Client]:
        client = await nats.connect(
            [node.url for node in self.nodes],
            connect_timeout=2,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            error_cb=_quiet,
        )
        try:
            yield client
        finally:
            await client.close()

    async def messages(self, subject: str) -> list[dict[str, Any]]:
        """Every message the stream holding ``subject`` keeps, oldest first, as JSON."""
        async with self.client() as client:
            js = client.jetstream(timeout=10)
            try:
                stream = await js.find_stream_name_by_subject(subject)
            except NotFoundError:
                return []  # nothing published yet
            found: list[dict[str, Any]] = []
            seq = 1
            while True:
                try:
                    message = await js.get_msg(stream, seq, subject=subject, next=True)
                except NotFoundError:
                    return found
                assert message.seq is not None
                seq = message.seq + 1
                found.append(json.loads(message.data or b"null"))

    def report(self) -> str:
        return "\n".join(f"==== {n.name}:\n{n.server_log()[-3000:]}" for n in self.nodes)


@contextlib.asynccontextmanager
async def running_nats(nodes: int = 1) -> AsyncIterator[Nats]:
    """``nodes`` nats-servers with JetStream (3: a cluster), ready; gone on leaving."""
    binary = require_program("nats-server", "nats-server")
    directory = Path(tempfile.mkdtemp(prefix="nats-"))
    cluster_ports = [free_port() for _ in range(nodes)] if nodes > 1 else []
    members = [
        NatsNode(
            binary,
            directory,
            f"n{i + 1}",
            cluster_ports[i] if cluster_ports else None,
            [p for j, p in enumerate(cluster_ports) if j != i],
        )
        for i in range(nodes)
    ]
    running = Nats(members)
    try:
        await asyncio.gather(*(node.start() for node in members))
        await running.ready()
        yield running
    finally:
        await asyncio.gather(*(node.stop() for node in members))
        shutil.rmtree(directory, ignore_errors=True)
