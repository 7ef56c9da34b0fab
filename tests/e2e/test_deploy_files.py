"""The Dockerfile and compose.yaml: linted, validated, and their commands run.

No container engine runs here, so the image's own install and start
commands are proven the next best way: in a clean virtual environment.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from tests.conftest import free_port, wait_until_serving
from tests.databases import ROOT

BIN = Path(sys.executable).parent


def image_command() -> list[str]:
    """The Dockerfile's CMD (exec form)."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    cmd = [line for line in lines if line.startswith("CMD ")]
    assert len(cmd) == 1, cmd
    command: list[str] = json.loads(cmd[0].removeprefix("CMD "))
    return command


def run(*args: str | Path, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_dockerfile_passes_hadolint() -> None:
    result = run(BIN / "hadolint", "Dockerfile")

    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_yaml_follows_the_compose_specification() -> None:
    result = run(
        BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", "compose.yaml"
    )

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_the_images_install_and_start_commands_work_in_a_clean_venv(tmp_path: Path) -> None:
    # What the Dockerfile does: install the project into a fresh venv, copy
    # alembic beside it, migrate, then serve with the image's CMD.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    install = run(bin_dir / "pip", "install", "--no-cache-dir", ROOT)
    assert install.returncode == 0, install.stderr[-3000:]
    srv = tmp_path / "srv"
    srv.mkdir()
    shutil.copy(ROOT / "alembic.ini", srv)
    shutil.copytree(ROOT / "alembic", srv / "alembic")
    database = f"sqlite+aiosqlite:///{tmp_path / 'allocation.db'}"

    migrate = run(bin_dir / "alembic", "upgrade", "head", cwd=srv, DATABASE_URL=database)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    worker_help = run(bin_dir / "allocation", "worker", "--help", cwd=srv)
    assert worker_help.returncode == 0, worker_help.stderr[-3000:]

    port = free_port()
    command = image_command()
    assert command[:2] == ["uvicorn", "app.main:app"], command
    # The image listens on 0.0.0.0:8000; here, loopback and a free port.
    command = [{"0.0.0.0": "127.0.0.1", "8000": str(port)}.get(arg, arg) for arg in command]
    server = subprocess.Popen(
        [bin_dir / command[0], *command[1:]],
        cwd=srv,
        env={**os.environ, "DATABASE_URL": database, "FORWARDED_ALLOW_IPS": "127.0.0.1"},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url, server, time.monotonic() + 30)
        ready = httpx.get(f"{url}/ready", timeout=5)
        assert ready.status_code == 200, ready.text
        batch = {"ref": "b1", "sku": "LAMP", "qty": 5, "eta": None}
        assert httpx.post(f"{url}/add_batch", json=batch).status_code == 201
        line = {"orderid": "o1", "sku": "LAMP", "qty": 1}
        assert httpx.post(f"{url}/allocate", json=line).status_code == 202
        assert httpx.get(f"{url}/allocations/o1").json() == [{"sku": "LAMP", "batchref": "b1"}]
    finally:
        server.terminate()
        server.wait(timeout=15)


def test_env_example_lists_every_setting_with_a_comment() -> None:
    listed: dict[str, str] = {}
    comment = ""
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.startswith("#"):
            comment = line
        elif not line:
            comment = ""
        else:
            name, _, value = line.partition("=")
            assert comment, f"{name} has no comment above it"
            listed[name] = value

    assert {name.upper() for name in Settings.model_fields} <= listed.keys()
    # The placeholders pass the settings' own checks.
    given = {name: listed[name.upper()] for name in Settings.model_fields}
    Settings.model_validate({name: value for name, value in given.items() if value})
