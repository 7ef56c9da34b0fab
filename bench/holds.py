"""Holds under load, with API processes killed: nothing oversold, nothing stranded.

Two ``allocation serve`` processes on one fresh database; 64 clients send
20,000 hold, extend, confirm and release operations over 20 skus, to either
process. Three times during the load one process is SIGKILLed and started
again on its port. Then, once every hold's time has passed: no batch holds
more than it has, none is negative, every hold is confirmed, released or
expired, and ``allocation reconcile`` is clean. The expiry lag is each
expired hold's ledger time (the commit that freed its units) minus its
``expires_at``.

    BENCH_ONLY=holds python bench/run.py      (make bench runs it too)
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

ROOT = Path(__file__).resolve().parent.parent
ALLOCATION = str(Path(sys.executable).with_name("allocation"))
OPS, CLIENTS, SKUS, KILLS = 20_000, 64, 20, 3
STOCK = 400  # units per sku: two batches of it
TTLS = (1, 2, 3)  # seconds: short, so that thousands expire under the load


class Api:
    """One ``allocation serve`` process on its own port, to kill and start again."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        argv = ["serve", "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                ALLOCATION, *argv, cwd=ROOT, env=self.env, stdout=out, stderr=out
            )
        async with httpx.AsyncClient(timeout=1) as client:
            for _ in range(300):
                try:
                    await client.get(f"{self.url}/health")
                    return
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        raise RuntimeError(f"the API on {self.port} did not start; see {self.log}")

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await asyncio.wait_for(self.process.wait(), 30)


class Load:
    def __init__(self, apis: list[Api], skus: list[str], run: str) -> None:
        self.apis, self.skus, self.run = apis, skus, run
        self.done = 0
        self.quarter = asyncio.Event()  # set at each quarter of the load
        self.outcomes: dict[str, int] = {}
        self.held: list[str] = []  # holds answered 201
        self.next_id = 0

    async def client(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        while self.done < OPS:
            self.done += 1
            if self.done % (OPS // (KILLS + 1)) == 0:
                self.quarter.set()
            op = rng.choices(("hold", "extend", "confirm", "release"), (5, 1, 2, 2))[0]
            if not self.held:
                op = "hold"
            try:
                status: int | str = await self.one(client, rng, op)
            except httpx.TransportError:
                status = "transport"  # a process killed under it: the other takes the next
            key = f"{op} {status}"
            self.outcomes[key] = self.outcomes.get(key, 0) + 1

    async def one(self, client: httpx.AsyncClient, rng: random.Random, op: str) -> int:
        url = rng.choice(self.apis).url
        if op == "hold":
            self.next_id += 1
            holdid = f"{self.run}-h{self.next_id}"
            skus = rng.sample(self.skus, rng.randint(1, 3))
            body = {
                "holdid": holdid,
                "lines": [{"sku": s, "qty": rng.randint(1, 4)} for s in skus],
                "ttl_s": rng.choice(TTLS),
            }
            r = await client.post(f"{url}/holds", json=body)
            if r.status_code == 201:
                self.held.append(holdid)
            return r.status_code
        holdid = rng.choice(self.held[-500:])
        if op == "extend":
            r = await client.post(f"{url}/holds/{holdid}/extend", json={"ttl_s": 2})
        elif op == "confirm":
            r = await client.post(f"{url}/holds/{holdid}/confirm", json={"orderid": holdid})
        else:
            r = await client.delete(f"{url}/holds/{holdid}")
        return r.status_code


async def killer(load: Load, apis: list[Api]) -> int:
    """SIGKILL an API at each quarter of the load, and start it again."""
    kills = 0
    for n in range(1, KILLS + 1):
        await load.quarter.wait()
        load.quarter.clear()
        api = apis[n % len(apis)]
        await api.kill()
        kills += 1
        await api.start()
    return kills


async def facts(db: str) -> dict[str, Any]:
    engine = create_async_engine(db)
    try:
        async with engine.connect() as conn:

            async def one(sql: str) -> Any:
                return (await conn.execute(text(sql))).scalar()

            lags = [
                float(lag)
                for (lag,) in (
                    await conn.execute(
                        text(
                            "SELECT EXTRACT(EPOCH FROM max(l.at) - h.expires_at)"
                            " FROM stock_ledger l JOIN holds h ON h.holdid = l.holdid"
                            " WHERE l.kind = 'expired' GROUP BY h.holdid, h.expires_at"
                        )
                    )
                ).all()
            ]
            return {
                "oversold": await one(
                    "SELECT count(*) FROM batches"
                    " WHERE allocated_quantity + held_quantity > purchased_quantity"
                    " OR allocated_quantity < 0 OR held_quantity < 0"
                ),
                "negative": await one(
                    "SELECT count(*) FROM batches_view WHERE purchased - allocated - held < 0"
                ),
                "stranded": await one(
                    "SELECT count(*) FROM holds WHERE state = 'held' AND expires_at < now() AT"
                    " TIME ZONE 'UTC' - interval '1 second'"
                ),
                "states": dict(
                    (await conn.execute(text("SELECT state, count(*) FROM holds GROUP BY 1"))).all()
                ),
                "lags": lags,
            }
    finally:
        await engine.dispose()


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else max(values, default=0)


async def holds(report: Any, db: str, tmp: Path, run: str, free_port: Any) -> None:
    env = {**os.environ, "DATABASE_URL": db, "REDIS_URL": "", "LOG_LEVEL": "WARNING"}
    apis = [Api(env, free_port(), tmp / f"holds-api-{n}.log") for n in range(2)]
    for api in apis:
        await api.start()
    try:
        skus = [f"{run}-hold-sku-{n}" for n in range(SKUS)]
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            for sku in skus:
                for ref, eta in ((f"{sku}-now", None), (f"{sku}-later", "2031-01-01")):
                    body = {"ref": ref, "sku": sku, "qty": STOCK // 2, "eta": eta}
                    r = await client.post(f"{apis[0].url}/batches", json=body)
                    r.raise_for_status()
            load = Load(apis, skus, run)
            started = time.monotonic()
            rngs = [random.Random(f"{run}-{n}") for n in range(CLIENTS)]
            clients = [load.client(client, rng) for rng in rngs]
            *_, kills = await asyncio.gather(*clients, killer(load, apis))
            seconds = time.monotonic() - started
        await asyncio.sleep(max(TTLS) + 2)  # every hold's time has passed, and a second more
        found = await facts(db)
        reconcile = await asyncio.to_thread(
            subprocess.run,
            [ALLOCATION, "reconcile"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        for api in apis:
            await api.stop()
    clean = reconcile.returncode == 0
    report.figure(
        f"holds: {OPS} operations at {CLIENTS}-way over {SKUS} skus in {seconds:.0f} s"
        f" ({OPS / seconds:.0f}/s), {kills} API processes SIGKILLed; outcomes"
        f" {dict(sorted(load.outcomes.items()))}; holds by state {found['states']}"
    )
    report.check(
        "holds: oversold, negative or stranded (with 3 SIGKILLs)",
        found["oversold"] + found["negative"] + found["stranded"] + (0 if clean else 1),
        0,
        f"oversold {found['oversold']}, negative {found['negative']}, stranded "
        f"{found['stranded']}, reconcile {'clean' if clean else reconcile.stdout[-300:]}",
        higher=False,
    )
    lags = found["lags"]
    report.check(
        "hold expiry lag p99 (s)",
        p99(lags),
        2.0,
        f"{len(lags)} expiries under the load, median {statistics.median(lags or [0]):.2f} s,"
        f" max {max(lags, default=0):.2f} s",
        higher=False,
    )
