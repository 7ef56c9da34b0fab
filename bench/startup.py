"""How quickly the processes are at work: median over STARTS starts of each.

    python bench/startup.py        (or: make bench-startup)

On a fresh migrated SQLite file and the Redis of BENCH_REDIS_URL, it times
from the exec of ``allocation worker`` until it logs that it is subscribed
to the change_batch_quantity channel (the moment from which no pub/sub
message is lost), and ``allocation outbox`` from its exec to its exit.

Beside them, in the same run, the floor: a Python process that imports the
libraries those commands cannot do without (typer, pydantic-settings,
SQLAlchemy's asyncio engine, aiosqlite, redis) and exits. How long Python
takes to import them swings twofold with the machine's load; the ratios to
the floor do not.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
STARTS = int(os.environ.get("STARTS", "5"))
LISTENING = b"listening on change_batch_quantity"


def until_listening(env: dict[str, str]) -> float:
    started = time.monotonic()
    worker = subprocess.Popen(
        [BIN / "allocation", "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert worker.stdout is not None
    try:
        for line in worker.stdout:
            if LISTENING in line:
                return time.monotonic() - started
        raise RuntimeError("the worker exited before it listened")
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def outbox_answered(env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(
        [BIN / "allocation", "outbox"], env=env, check=True, capture_output=True, timeout=60
    )
    return time.monotonic() - started


FLOOR = "import typer, pydantic_settings, sqlalchemy.ext.asyncio, aiosqlite, redis.asyncio"


def floor() -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", FLOOR], check=True, timeout=60)
    return time.monotonic() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        database = f"sqlite+aiosqlite:///{Path(tmp) / 'allocation.db'}"
        env = {
            **os.environ,
            "DATABASE_URL": database,
            "REDIS_URL": REDIS,
            "LOG_FORMAT": "json",
        }
        subprocess.run([BIN / "alembic", "upgrade", "head"], cwd=ROOT, env=env, check=True)
        listening, answered, floors = [], [], []
        for _ in range(STARTS):  # interleaved: the three see the same machine
            listening.append(until_listening(env))
            answered.append(outbox_answered(env))
            floors.append(floor())
    base = statistics.median(floors)
    for name, times in (
        ("worker subscribed", listening),
        ("allocation outbox answered", answered),
        ("floor (imports alone)", floors),
    ):
        print(
            f"{name}: median {statistics.median(times):.2f} s, "
            f"{statistics.median(times) / base:.2f} of the floor "
            f"({', '.join(f'{t:.2f}' for t in times)})"
        )


if __name__ == "__main__":
    main()
