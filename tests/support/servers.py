"""Servers of the tests' own: free ports, a redis-server, a PostgreSQL cluster, an SMTP sink,
a web site.

A PostgreSQL server of a test's own, to stop and start: an outage on demand.
The machine's shared server must never be stopped, so outage tests make a
throwaway cluster with the installed server binaries (initdb, pg_ctl,
postgres) in a temporary directory, listening on 127.0.0.1 on a free port,
with fsync off. ``stop()`` is a fast shutdown: the server ends every session
and closes, so clients see their connections drop and new ones refused, as
in a real outage. initdb refuses to run as root, so as root the binaries run
as the ``postgres`` OS user.

Services named by the environment (TEST_DATABASE_URL, TEST_REDIS_URL) or
programs that are missing make a test skip, unless REQUIRE_SERVICES is set,
when they make it fail: CI sets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.support.polling import eventually

REDIS_SERVER = "/usr/bin/redis-server"


# Services and programs the tests need.


def required(variable: str) -> str:
    """The value of environment variable ``variable``; unset, the test skips or fails."""
    value = os.environ.get(variable)
    if value:
        return value
    unavailable(f"{variable} is not set")


def unavailable(reason: str) -> NoReturn:
    """Skip the test for ``reason``; with REQUIRE_SERVICES set (as in CI) fail it."""
    if os.environ.get("REQUIRE_SERVICES"):
        pytest.fail(f"{reason}, and REQUIRE_SERVICES says this run needs it")
    pytest.skip(reason)


def require_program(name: str, package: str, also: tuple[str, ...] = ()) -> str:
    """The path of program ``name``, installed from Debian's ``package``.

    Missing, the test skips, saying how to install it; with REQUIRE_SERVICES
    set (as in CI) it fails instead.
    """
    found = shutil.which(name) or next((p for p in also if os.access(p, os.X_OK)), None)
    if found:
        return found
    unavailable(f"{name} is not installed (apt-get install {package})")


# Ports and HTTP servers.


async def stopped(process: asyncio.subprocess.Process | None, within: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``within`` seconds: a server of a test's own, gone."""
    if process is None or process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), within)
    except TimeoutError:
        process.kill()
        await process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until_serving(url: str, process: subprocess.Popen[Any], deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/openapi.json", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not start serving")


# A web site of a test's own: pages of another origin than the service's.


@contextlib.contextmanager
def static_site(directory: Path) -> Iterator[str]:
    """``directory`` served over HTTP on loopback, on a port of its own: the site's origin."""
    handler = functools.partial(_QuietFiles, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="static site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per request on stderr would bury the test's own report


# PostgreSQL: a cluster of a test's own.

BINARIES = ("initdb", "pg_ctl", "postgres", "pg_basebackup")
OS_USER = "postgres"  # who runs the server when the tests run as root


def find_bindir() -> Path | None:
    """Where the server binaries are: ``pg_config --bindir``, else Debian's newest."""
    candidates: list[Path] = []
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout
        candidates.append(Path(out.strip()))
    debian = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted((Path(d) for d in debian), key=_version, reverse=True)
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in BINARIES):
            return bindir
    return None


def _version(bindir: Path) -> tuple[int, ...]:
    name = bindir.parent.name
    return tuple(int(part) for part in name.split(".") if part.isdigit())


class PostgresCluster:
    """One cluster in a temporary directory; ``destroy()`` stops it and removes it all."""

    def __init__(self, bindir: Path, port: int) -> None:
        self.bindir = bindir
        self.port = port
        self.url = f"postgresql+asyncpg://{OS_USER}@127.0.0.1:{self.port}/postgres"
        self._as_user = _run_as()
        self.directory = Path(tempfile.mkdtemp(prefix="pg-cluster-"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self.frozen = False
        if self._as_user:
            account = pwd.getpwnam(OS_USER)
            os.chown(self.directory, account.pw_uid, account.pw_gid)

    def init(self, replication: bool = False) -> None:
        """initdb, configured to listen on 127.0.0.1:port, its socket inside the directory.

        With ``replication``, streaming replicas may be made of it (``replica``).
        """
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            OS_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.directory}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "100",
        }
        if replication:
            settings.update(wal_level="replica", max_wal_senders="4")
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host replication {OS_USER} 127.0.0.1/32 trust\n")
        self._configure(settings)

    def replica(self, port: int, apply_delay: str = "0") -> PostgresCluster:
        """A streaming replica of this running cluster (``pg_basebackup -R``), not started.

        ``apply_delay`` (``recovery_min_apply_delay``, e.g. ``"400ms"``) makes it
        apply each commit that long after the primary made it: a lagging replica.
        """
        replica = PostgresCluster(self.bindir, port)
        replica._run(
            "pg_basebackup",
            "-D",
            str(replica.data),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            OS_USER,
            "-R",
            "--no-sync",
        )
        replica._configure(
            {
                "port": str(port),
                "unix_socket_directories": f"'{replica.directory}'",
                "recovery_min_apply_delay": f"'{apply_delay}'",
                "hot_standby_feedback": "on",
            }
        )
        return replica

    def _configure(self, settings: dict[str, str]) -> None:
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30")

    def stop(self) -> None:
        """Fast shutdown: every session is ended, every new connection refused."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "30")

    def freeze(self) -> None:
        """SIGSTOP the server and its sessions: a database that hangs instead of refusing.

        Connections still open at the TCP level (the kernel accepts them) and
        then nothing answers: only timeouts end the wait.
        """
        for pid in self._pids():
            os.kill(pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        for pid in self._pids():
            os.kill(pid, signal.SIGCONT)
        self.frozen = False

    def _pids(self) -> list[int]:
        """The postmaster and every process it started (Linux: read from /proc)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                # "pid (comm) state ppid ...": comm may hold spaces, so split after ")"
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == postmaster:
                    children.append(int(entry.name))
        return [postmaster, *children]

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        try:
            if self.frozen:
                self.thaw()
            if self.running:
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def server_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _run(self, binary: str, *args: str) -> None:
        argv = [str(self.bindir / binary), *args]
        if self._as_user:
            argv = ["runuser", "-u", OS_USER, "--", *argv]
        result = subprocess.run(
            argv,
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{binary} {' '.join(args)}: exit code {result.returncode}\n"
                f"{result.stdout}{result.stderr}\n{self.server_log()[-3000:]}"
            )


def _run_as() -> bool:
    """Whether to run the binaries as OS_USER: only root needs to, and only root can."""
    return os.geteuid() == 0


@contextlib.contextmanager
def running_cluster(bindir: Path, port: int) -> Iterator[PostgresCluster]:
    """A cluster on ``port``, initialised and started; stopped and removed on leaving."""
    cluster = PostgresCluster(bindir, port)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


# Redis.


class RedisServer:
    """A redis-server process of the test's own, to stop and start again on one port."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._log = directory / f"redis-{port}.log"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        assert self._process is None, "already running"
        self._process = await asyncio.create_subprocess_exec(
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(self._log),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await eventually(self._answers, 10.0, f"redis-server on port {self.port}")

    async def stop(self) -> None:
        process, self._process = self._process, None
        await stopped(process)

    async def _answers(self) -> bool:
        if self._process is not None and self._process.returncode is not None:
            raise RuntimeError(f"redis-server exited with {self._process.returncode}")
        client = Redis.from_url(
            self.url, socket_connect_timeout=1, socket_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        try:
            return bool(await client.ping())
        except (RedisConnectionError, RedisTimeoutError, OSError):
            return False
        finally:
            await client.aclose()


# SMTP.


@dataclass(frozen=True)
class ReceivedMail:
    sender: str
    recipients: list[str]
    message: EmailMessage


class SmtpSink:
    """A real SMTP server (aiosmtpd, in a thread) that keeps every mail it accepts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.mails: list[ReceivedMail] = []
        self._controller: Controller | None = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = message_from_bytes(content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        sender = envelope.mail_from or ""
        self.mails.append(ReceivedMail(sender, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"

    async def start(self) -> None:
        assert self._controller is None, "already running"
        # A stopped controller has closed its event loop: a restart needs a new one.
        controller = Controller(self, hostname="127.0.0.1", port=self.port)
        await asyncio.to_thread(controller.start)
        self._controller = controller

    async def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            await asyncio.to_thread(controller.stop)

    def about(self, sku: str) -> list[ReceivedMail]:
        return [m for m in self.mails if sku in str(m.message["Subject"])]
