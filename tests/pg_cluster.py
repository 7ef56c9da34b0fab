"""A PostgreSQL server of a test's own, to stop and start: an outage on demand.

The machine's shared server must never be stopped, so outage tests make a
throwaway cluster with the installed server binaries (initdb, pg_ctl,
postgres) in a temporary directory, listening on 127.0.0.1 on a free port,
with fsync off. ``stop()`` is a fast shutdown: the server ends every session
and closes, so clients see their connections drop and new ones refused, as
in a real outage. initdb refuses to run as root, so as root the binaries run
as the ``postgres`` OS user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

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
