"""The README's httpx example, run as written against a real server."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.databases import ROOT, alembic_upgrade
from tests.support.readme import httpx_example
from tests.support.servers import free_port, wait_until_serving


@pytest.mark.slow
def test_the_readme_httpx_example_allocates_and_reads_back(tmp_path: Path) -> None:
    code = httpx_example()
    database = f"sqlite+aiosqlite:///{tmp_path / 'allocation.db'}"
    alembic_upgrade(database)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)],
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
        assert result.stdout.strip() == "[{'sku': 'SMALL-TABLE', 'batchref': 'batch-001'}]"
    finally:
        server.terminate()
        server.wait(timeout=15)
