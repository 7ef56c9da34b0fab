"""Settings as an operator meets them: `.env.example` copied as it stands, and refusals.

Each test runs the real commands (alembic, uvicorn, ``allocation``) in a
directory of its own, as someone who has just cloned the repository would.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.databases import ROOT
from tests.support.processes import ALLOCATION, message_of, service_env
from tests.support.servers import free_port, wait_until_serving

pytestmark = pytest.mark.slow

SECRET = "s3cr3t-t0ken-that-is-long-but-placeholder"


def environment(**settings: str) -> dict[str, str]:
    """The process environment with none of the service's settings: only the .env speaks."""
    env = service_env("unused")
    for name in ("DATABASE_URL", "REDIS_URL", "SMTP_HOST", "LOG_LEVEL"):
        env.pop(name, None)
    env["PYTHONPATH"] = str(ROOT)
    env.update(settings)
    return env


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A directory holding `.env.example` copied to `.env`, and migrated as that says."""
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    alembic = str(Path(sys.executable).with_name("alembic"))
    result = run(
        [alembic, "-c", str(ROOT / "alembic.ini"), "upgrade", "head"], tmp_path, environment()
    )
    assert result.returncode == 0, result.stderr
    return tmp_path


def serve(cwd: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    argv = [ALLOCATION, "serve", "--port", str(port), *args]
    server = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(url, server, time.monotonic() + 30)
    return server, url


def stop(server: subprocess.Popen[str]) -> str:
    server.terminate()
    output, _ = server.communicate(timeout=15)
    return output


def test_the_service_runs_on_env_example_copied_as_it_stands(checkout: Path) -> None:
    server, url = serve(checkout, environment())
    try:
        assert httpx.get(f"{url}/ready").status_code == 200
        batch = {"ref": "batch-001", "sku": "SMALL-TABLE", "qty": 20, "eta": None}
        assert httpx.post(f"{url}/add_batch", json=batch).status_code == 201
        assert httpx.get(f"{url}/metrics").status_code == 200
    finally:
        stop(server)
    assert (checkout / "allocation.db").exists()  # DATABASE_URL came from the .env


def test_the_servers_settings_come_from_the_env_file_too(checkout: Path) -> None:
    env_file = checkout / ".env"
    # The proxy is somewhere else: X-Forwarded-For from this client is not believed.
    env_file.write_text(
        env_file.read_text().replace(
            "FORWARDED_ALLOW_IPS=127.0.0.1", "FORWARDED_ALLOW_IPS=10.9.9.9"
        )
    )
    forwarded = {"X-Forwarded-For": "203.0.113.9"}

    server, url = serve(checkout, environment(LOG_FORMAT="json"))
    try:
        httpx.get(f"{url}/health", headers=forwarded)
        # PROMETHEUS_MULTIPROC_DIR is there, empty: it means unset, not multiprocess mode.
        assert httpx.get(f"{url}/metrics").status_code == 200
    finally:
        output = stop(server)
    assert '"client":"127.0.0.1"' in output
    assert "203.0.113.9" not in output

    # The environment wins over the file, as for every setting.
    server, url = serve(checkout, environment(LOG_FORMAT="json", FORWARDED_ALLOW_IPS="127.0.0.1"))
    try:
        httpx.get(f"{url}/health", headers=forwarded)
    finally:
        output = stop(server)
    assert '"client":"203.0.113.9"' in output


@pytest.mark.parametrize(
    ("settings", "rule"),
    [
        ({"API_TOKEN": SECRET[:12]}, "API_TOKEN is a placeholder or shorter than 16 characters"),
        (
            {"API_TOKEN": "x" * 20, "REDIS_URL": f"redis://:{SECRET}@127.0.0.1:6379/0"},
            "",  # a real-looking password: accepted; here only to be kept out of output
        ),
        ({"WORKER_PORT": "nine"}, "WORKER_PORT: Input should be a valid integer"),
        (
            {"DATABASE_URL": f"postgresql://me:{SECRET}@host:port/db"},
            "DATABASE_URL: is not a database URL",
        ),
    ],
)
def test_a_refused_setting_is_one_line_naming_it_and_no_secret(
    tmp_path: Path, settings: dict[str, str], rule: str
) -> None:
    env = environment(ENVIRONMENT="production", **settings)
    env.setdefault("API_TOKEN", SECRET)
    api = run([sys.executable, "-c", "import app.main"], tmp_path, env)
    cli = run([ALLOCATION, "outbox"], tmp_path, env)
    for result in (api, cli):
        assert SECRET not in result.stdout + result.stderr
        assert SECRET[:12] not in result.stdout + result.stderr
    if not rule:
        return
    for result in (api, cli):
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert message_of(lines[0]).startswith("cannot start: ")
        assert rule in lines[0]


def test_alembic_that_cannot_reach_the_database_says_so_in_one_line(tmp_path: Path) -> None:
    env = environment(DATABASE_URL=f"postgresql://allocation:{SECRET}@127.0.0.1:{free_port()}/x")
    alembic = str(Path(sys.executable).with_name("alembic"))

    result = run([alembic, "-c", str(ROOT / "alembic.ini"), "upgrade", "head"], tmp_path, env)

    assert result.returncode != 0
    output = (result.stdout + result.stderr).strip().splitlines()
    assert output == [line for line in output if "alembic: cannot reach the database" in line]
    assert len(output) == 1
    assert SECRET not in output[0]
    assert "Connect" in output[0]


def test_an_empty_optional_setting_means_unset(tmp_path: Path) -> None:
    code = (
        "from app.config import load_settings; s = load_settings(); "
        "print(s.worker_port, s.redis_url, s.smtp_port)"
    )
    env = environment(WORKER_PORT="", REDIS_URL="", SMTP_PORT="")
    result = run([sys.executable, "-c", code], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "None", "25"]
