"""The README's generated client: openapi-python-client's package for /openapi.json, used for real.

The generator runs from an environment of its own, made once under the user's
cache directory (``XDG_CACHE_HOME``, else ``~/.cache``), with mypy beside it:
it generates the client from a live uvicorn's /openapi.json, the README's block
adds a batch, allocates a line and reads the allocation through it, and
``mypy --strict`` checks the block and the generated package together.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.support.databases import ROOT, alembic_upgrade
from tests.support.processes import ALLOCATION
from tests.support.servers import free_port, wait_until_serving

pytestmark = pytest.mark.slow

# Pinned: a new generator may name modules and models otherwise.
REQUIREMENTS = ["openapi-python-client==0.29.1", "mypy==2.4.1"]
EXAMPLE = re.compile(r"<!-- generated-client-example -->\n```python\n(.*?)```", re.DOTALL)
PACKAGE = "allocation_service_client"  # from the document's title, "Allocation service"


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("REQUIRE_SERVICES"):
        pytest.fail(f"{reason}, and REQUIRE_SERVICES says this run needs it")
    pytest.skip(reason)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "allocation-tests"


@pytest.fixture(scope="session")
def tools() -> Path:
    """The python of a virtualenv holding the generator and mypy, both run as ``-m``."""
    name = "-".join(r.replace("==", "-") for r in REQUIREMENTS)
    venv = _cache_dir() / name
    ready = venv / "installed"  # written last: a venv without it is not finished
    if ready.exists():
        return venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Built aside and moved in whole: an interrupted install leaves nothing half-made.
    building = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=venv.parent))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True)
        installed = subprocess.run(
            [str(building / "bin" / "python"), "-m", "pip", "install", "-q", *REQUIREMENTS],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if installed.returncode != 0:
            unavailable(f"cannot install {' '.join(REQUIREMENTS)}: {installed.stderr[-2000:]}")
        (building / "installed").write_text("\n".join(REQUIREMENTS) + "\n")
        shutil.rmtree(venv, ignore_errors=True)  # an unfinished one
        try:
            building.rename(venv)
        except OSError:  # another run finished first
            if not ready.exists():
                raise
        else:
            building = venv
    finally:
        if building != venv:
            shutil.rmtree(building, ignore_errors=True)
    # Moved, the venv's scripts name an interpreter that is gone; its python still works.
    return venv / "bin" / "python"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A uvicorn of the test's own, on an empty database: the README's ids are fixed."""
    database = f"sqlite+aiosqlite:///{tmp_path / 'allocation.db'}"
    alembic_upgrade(database)
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database, "LOG_LEVEL": "WARNING"}
    for unwanted in ("API_TOKEN", "READ_DATABASE_URL", "REDIS_URL"):
        env.pop(unwanted, None)
    process = subprocess.Popen([ALLOCATION, "serve", "--port", str(port)], cwd=ROOT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url, process, time.monotonic() + 30)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_the_readme_generated_client_allocates_reads_back_and_type_checks(
    tools: Path, server: str, tmp_path: Path
) -> None:
    [code] = EXAMPLE.findall((ROOT / "README.md").read_text())
    generated = subprocess.run(
        [str(tools), "-m", "openapi_python_client", "generate", "--url", f"{server}/openapi.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    project = tmp_path / "allocation-service-client"
    modules = {p.stem for p in (project / PACKAGE / "api").rglob("*.py")} - {"__init__"}
    # Each operation's module is named after it, not after its path and method.
    assert {"allocate", "get_allocation", "add_batch", "health"} <= modules, modules
    assert all(not m.endswith(("_get", "_post", "_patch")) for m in modules), modules
    models = {p.stem for p in (project / PACKAGE / "models").glob("*.py")}
    assert {"batch_in", "allocation", "problem", "health"} <= models, models
    # One model for every error: a Problem, whatever the status; a constant for each type.
    assert not {"error", "invalid_input", "not_ready", "http_validation_error"} & models, models
    assert {"problem_type", "line_state"} <= models, models
    # Names that read well: no model named twice over, no operation named for its book.
    assert not [m for m in models if m.endswith(("_state_state", "_type_type"))], models
    assert not [m for m in modules if m.endswith("_book")], modules
    constants = (project / PACKAGE / "models" / "problem_type.py").read_text()
    assert 'LINE_EXISTS = "tag:allocation-service,2026:problems/line-exists"' in constants

    script = project / "example.py"
    script.write_text(code.replace("http://127.0.0.1:8000", server))
    ran = subprocess.run(
        [str(tools), str(script)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["batch-001", "Order holds another quantity"]

    checked = subprocess.run(
        [
            str(tools),
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--python-version",
            "3.11",
            "example.py",
            PACKAGE,
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
