"""The floor for the write path: POST /allocate as one PostgreSQL transaction with
nothing but FastAPI and asyncpg: lock the product, read its batches, insert the
line, update the batch, bump the version, write an outbox row and both read-model
rows (the allocation and the batch's availability), commit. bench/run.py serves
it next to the service, with the same number of workers, on tables of its own
(``bw_*``) in the same database.

    BARE_DSN=postgresql://USER@HOST/DB uvicorn bench.bare_write_app:app --workers 2
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg  # type: ignore[import-untyped]
import orjson
from fastapi import FastAPI, Request, Response

SCHEMA = """
CREATE TABLE IF NOT EXISTS bw_products(sku text PRIMARY KEY, version int NOT NULL);
CREATE TABLE IF NOT EXISTS bw_batches(ref text PRIMARY KEY, sku text NOT NULL,
  qty int NOT NULL, allocated int NOT NULL, eta date);
CREATE INDEX IF NOT EXISTS bw_batches_sku ON bw_batches(sku);
CREATE TABLE IF NOT EXISTS bw_lines(orderid text, sku text, qty int, batchref text,
  PRIMARY KEY (orderid, sku));
CREATE TABLE IF NOT EXISTS bw_view(orderid text, sku text, batchref text, version int,
  PRIMARY KEY (orderid, sku));
CREATE TABLE IF NOT EXISTS bw_batches_view(ref text PRIMARY KEY, sku text NOT NULL,
  available int NOT NULL, version int NOT NULL);
CREATE TABLE IF NOT EXISTS bw_outbox(id bigserial PRIMARY KEY, payload jsonb,
  created timestamptz DEFAULT now());
"""
pool: asyncpg.Pool | None = None


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    global pool
    pool = await asyncpg.create_pool(os.environ["BARE_DSN"], min_size=10, max_size=10)
    async with pool.acquire() as conn:
        # Two workers start at once: one creates the tables, the other waits.
        await conn.execute("SELECT pg_advisory_lock(4242)")
        await conn.execute(SCHEMA)
        await conn.execute("SELECT pg_advisory_unlock(4242)")
    yield
    await pool.close()


app = FastAPI(lifespan=lifespan)


@app.post("/add_batch", status_code=201)
async def add_batch(request: Request) -> Response:
    assert pool is not None
    b = orjson.loads(await request.body())
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO bw_products VALUES ($1, 0) ON CONFLICT DO NOTHING", b["sku"]
        )
        await conn.execute(
            "INSERT INTO bw_batches VALUES ($1, $2, $3, 0, $4::text::date) ON CONFLICT DO NOTHING",
            b["ref"],
            b["sku"],
            b["qty"],
            b["eta"],
        )
    return Response(status_code=201, headers={"Location": f"/batches/{b['ref']}"})


@app.post("/allocate")
async def allocate(request: Request) -> Response:
    assert pool is not None
    line = orjson.loads(await request.body())
    orderid, sku, qty = line["orderid"], line["sku"], line["qty"]
    async with pool.acquire() as conn, conn.transaction():
        version = await conn.fetchval(
            "SELECT version FROM bw_products WHERE sku = $1 FOR UPDATE", sku
        )
        if version is None:
            return Response(orjson.dumps({"message": f"Invalid sku {sku}"}), status_code=400)
        batches = await conn.fetch(
            "SELECT ref, qty - allocated AS free, eta FROM bw_batches"
            " WHERE sku = $1 ORDER BY eta NULLS FIRST",
            sku,
        )
        held = await conn.fetchval(
            "SELECT 1 FROM bw_lines WHERE orderid = $1 AND sku = $2", orderid, sku
        )
        if held is None:
            batch = next((b["ref"] for b in batches if b["free"] >= qty), None)
            if batch is not None:
                await conn.execute(
                    "INSERT INTO bw_lines VALUES ($1, $2, $3, $4)", orderid, sku, qty, batch
                )
                await conn.execute(
                    "UPDATE bw_batches SET allocated = allocated + $2 WHERE ref = $1", batch, qty
                )
                await conn.execute(
                    "UPDATE bw_products SET version = $2 WHERE sku = $1", sku, version + 1
                )
                await conn.execute(
                    "INSERT INTO bw_outbox(payload) VALUES ($1::jsonb)",
                    orjson.dumps({"type": "Allocated", "orderid": orderid}).decode(),
                )
                await conn.execute(
                    "INSERT INTO bw_view VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    orderid,
                    sku,
                    batch,
                    version + 1,
                )
                await conn.execute(
                    "INSERT INTO bw_batches_view SELECT ref, sku, qty - allocated, $2"
                    " FROM bw_batches WHERE ref = $1 ON CONFLICT (ref) DO UPDATE"
                    " SET available = EXCLUDED.available, version = EXCLUDED.version"
                    " WHERE bw_batches_view.version < EXCLUDED.version",
                    batch,
                    version + 1,
                )
    return Response(status_code=202, headers={"Location": f"/allocations/{orderid}"})
