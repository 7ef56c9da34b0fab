"""The README's httpx example, run as written against a real server."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.databases import ROOT, alembic_upgrade
from tests.support.processes import ALLOCATION
from tests.support.readme import HTTPX_EXAMPLE_PRINTS, httpx_example
from tests.support.servers import free_port, wait_until_serving


@pytest.mark.slow
def test_the_readme_httpx_example_allocates_and_reads_back(tmp_path: Path) -> None:
    code = httpx_example()
    database = f"sqlite+aiosqlite:///{tmp_path / 'allocation.db'}"
    alembic_upgrade(database)
    port = free_port()
    server = subprocess.Popen(
        [ALLOCATION, "serve", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url, server, time.monotonic() + 30)
        script = tmp_path / "example.py"
        script.write_text(code.replace("http://127.0.0.1:8000", url))

        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=60
        )

        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == HTTPX_EXAMPLE_PRINTS
    finally:
        server.terminate()
        server.wait(timeout=15)
