"""The floor for the read path: GET /allocations/{orderid} with nothing but
FastAPI and asyncpg between HTTP and PostgreSQL. bench/run.py serves it next
to the service, on the same data, with the same number of workers.

    BARE_DSN=postgresql://USER@HOST/DB uvicorn bench.bare_app:app --workers 2
"""

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg  # type: ignore[import-untyped]
from fastapi import FastAPI, Response

QUERY = (
    "SELECT sku, batchref FROM allocations_view"
    " WHERE orderid = $1 AND batchref IS NOT NULL ORDER BY sku"
)
pool: asyncpg.Pool | None = None


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    global pool
    pool = await asyncpg.create_pool(os.environ["BARE_DSN"], min_size=2, max_size=10)
    yield
    await pool.close()


app = FastAPI(lifespan=lifespan)


@app.get("/allocations/{orderid}")
async def allocations(orderid: str) -> Response:
    assert pool is not None
    rows = await pool.fetch(QUERY, orderid)
    if not rows:
        return Response(status_code=404)
    return Response(json.dumps([dict(r) for r in rows]), media_type="application/json")
