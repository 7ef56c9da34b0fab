"""The SQLAlchemy repository against a real database: what it saves and what it loads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import date
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.base import Executable

from app.adapters import tables
from app.adapters.driver import Params, compiled
from app.adapters.repository import SqlRepository, _statements
from app.adapters.transactions import Transaction, transaction
from app.domain import events, model
from tests.support.polling import eventually
from tests.support.refs import random_ref


class CountingTransaction(Transaction):
    """A real transaction that counts the statements run on it, and the rows they return."""

    def __init__(self, inner: Transaction) -> None:
        super().__init__(inner.engine)
        self.inner = inner
        self.statements = 0
        self.rows = 0

    async def execute(self, statement: Executable, params: Params | None = None) -> int:
        self.statements += 1
        return await self.inner.execute(statement, params)

    async def write(
        self,
        statement: Executable,
        params: Params | None = None,
        *,
        expect: int | None = None,
        stale: str = "",
    ) -> None:
        self.statements += 1
        await self.inner.write(statement, params, expect=expect, stale=stale)

    async def execute_many(self, statement: Executable, rows: Sequence[Params]) -> None:
        self.statements += 1
        await self.inner.execute_many(statement, rows)

    async def fetch(self, statement: Executable, params: Params | None = None) -> Sequence[Any]:
        self.statements += 1
        rows = await self.inner.fetch(statement, params)
        self.rows += len(rows)
        return rows

    async def commit(self) -> None:
        await self.inner.commit()

    async def close(self) -> None:
        await self.inner.close()


@asynccontextmanager
async def repository(
    engine: AsyncEngine,
) -> AsyncIterator[tuple[SqlRepository, Transaction]]:
    """A repository on a transaction of its own, rolled back unless committed."""
    tx = transaction(engine)
    try:
        yield SqlRepository(tx), tx
    finally:
        await tx.close()


async def save(repo: SqlRepository, tx: Transaction) -> None:
    await repo.save()
    await tx.commit()


async def add_product(
    engine: AsyncEngine,
    sku: str,
    batches: dict[str, int],
    lines: dict[str, int] | None = None,
) -> None:
    """Save a product with ``batches`` (ref: qty) and allocate ``lines`` (orderid: qty)."""
    async with repository(engine) as (repo, tx):
        product = model.Product(
            sku, [model.Batch(ref, sku, qty, None) for ref, qty in batches.items()]
        )
        for orderid, qty in (lines or {}).items():
            product.allocate(model.OrderLine(orderid, sku, qty))
        repo.add(product)
        await save(repo, tx)


async def allocation_rows(
    engine: AsyncEngine, orderids: list[str]
) -> list[tuple[str, str, int, str]]:
    """(orderid, sku, qty, batchref) of every allocation row of ``orderids``."""
    lines, allocs, batches = tables.order_lines.c, tables.allocations.c, tables.batches.c
    query = (
        select(lines.orderid, lines.sku, lines.qty, batches.reference)
        .join(tables.allocations, allocs.orderline_id == lines.id)
        .join(tables.batches, batches.id == allocs.batch_id)
        .where(lines.orderid.in_(orderids))
        .order_by(lines.orderid)
    )
    async with engine.connect() as conn:
        return [(r.orderid, r.sku, r.qty, r.reference) for r in await conn.execute(query)]


async def order_line_count(engine: AsyncEngine, orderids: list[str]) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count()).where(tables.order_lines.c.orderid.in_(orderids))
        )
        return count or 0


async def product_version(engine: AsyncEngine, sku: str) -> int | None:
    async with engine.connect() as conn:
        version: int | None = await conn.scalar(
            select(tables.products.c.version_number).where(tables.products.c.sku == sku)
        )
        return version


async def test_saves_a_product_with_its_batches_and_gets_it_back(engine: AsyncEngine) -> None:
    sku, early, late = random_ref("sku"), random_ref("early"), random_ref("late")
    async with repository(engine) as (repo, tx):
        repo.add(
            model.Product(
                sku,
                [
                    model.Batch(early, sku, 100, date(2011, 1, 1)),
                    model.Batch(late, sku, 50, None),
                ],
                version_number=3,
            )
        )
        await save(repo, tx)

    async with repository(engine) as (repo, _):
        product = await repo.get(sku)
        assert product is not None
        assert product.sku == sku
        assert product.version_number == 3
        assert {
            b.reference: (b.sku, b.purchased_quantity, b.allocated_quantity, b.eta, b.allocations)
            for b in product.batches
        } == {
            early: (sku, 100, 0, date(2011, 1, 1), set()),
            late: (sku, 50, 0, None, set()),
        }
        assert repo.seen == {product}


async def test_nothing_is_written_until_save(engine: AsyncEngine) -> None:
    sku = random_ref("sku")
    async with repository(engine) as (repo, tx):
        repo.add(model.Product(sku, [model.Batch(random_ref("batch"), sku, 10, None)]))
        await tx.commit()

    assert await product_version(engine, sku) is None


async def test_closing_without_commit_rolls_back_what_was_saved(engine: AsyncEngine) -> None:
    sku = random_ref("sku")
    async with repository(engine) as (repo, _):
        repo.add(model.Product(sku, [model.Batch(random_ref("batch"), sku, 10, None)]))
        await repo.save()

    assert await product_version(engine, sku) is None


async def test_saves_allocations_and_bumps_the_version(engine: AsyncEngine) -> None:
    sku, batchref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await add_product(engine, sku, {batchref: 20})

    async with repository(engine) as (repo, tx):
        product = await repo.get(sku, orderid=orderid)
        assert product is not None
        assert product.allocate(model.OrderLine(orderid, sku, 7)) == batchref
        await save(repo, tx)

    assert await allocation_rows(engine, [orderid]) == [(orderid, sku, 7, batchref)]
    async with repository(engine) as (repo, _):
        product = await repo.get(sku)
        assert product is not None
        assert product.version_number == 1
        [batch] = product.batches
        assert batch.allocated_quantity == 7


async def test_saving_twice_in_one_transaction_writes_each_change_once(
    engine: AsyncEngine,
) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")
    first, second = random_ref("first"), random_ref("second")
    await add_product(engine, sku, {batchref: 20})

    async with repository(engine) as (repo, tx):
        product = await repo.get(sku, orderid=first)
        assert product is not None
        product.allocate(model.OrderLine(first, sku, 3))
        await repo.save()
        assert await repo.get(sku, orderid=second) is product
        product.allocate(model.OrderLine(second, sku, 4))
        await repo.save()
        await save(repo, tx)

    assert await allocation_rows(engine, [first, second]) == sorted(
        [(first, sku, 3, batchref), (second, sku, 4, batchref)]
    )
    assert await product_version(engine, sku) == 2


async def test_get_with_an_orderid_loads_only_that_orders_line(engine: AsyncEngine) -> None:
    sku, batch1, batch2 = random_ref("sku"), random_ref("batch1"), random_ref("batch2")
    mine, other, third = random_ref("mine"), random_ref("other"), random_ref("third")
    # Lines go to the first batch that can take them: ``third`` overflows to batch2.
    await add_product(engine, sku, {batch1: 10, batch2: 10}, {mine: 3, other: 5, third: 4})

    async with repository(engine) as (repo, _):
        product = await repo.get(sku, orderid=mine)
        assert product is not None
        by_ref = {b.reference: b for b in product.batches}
        assert by_ref[batch1].allocations == {model.OrderLine(mine, sku, 3)}
        assert by_ref[batch1].allocated_quantity == 8
        assert by_ref[batch2].allocations == set()
        assert by_ref[batch2].allocated_quantity == 4


async def test_get_without_an_orderid_loads_no_lines(engine: AsyncEngine) -> None:
    sku, batchref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await add_product(engine, sku, {batchref: 10}, {orderid: 2})

    async with repository(engine) as (repo, _):
        product = await repo.get(sku)
        assert product is not None
        [batch] = product.batches
        assert batch.allocations == set()
        assert batch.allocated_quantity == 2


async def test_allocating_a_held_line_again_changes_nothing(engine: AsyncEngine) -> None:
    sku, batchref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await add_product(engine, sku, {batchref: 10}, {orderid: 2})

    async with repository(engine) as (repo, tx):
        product = await repo.get(sku, orderid=orderid)
        assert product is not None
        version = product.version_number
        assert product.allocate(model.OrderLine(orderid, sku, 2)) == batchref
        assert product.events == []
        assert product.version_number == version
        await save(repo, tx)

    assert await allocation_rows(engine, [orderid]) == [(orderid, sku, 2, batchref)]
    assert await product_version(engine, sku) == version


async def test_get_by_batchref_loads_every_line_of_that_batch_only(engine: AsyncEngine) -> None:
    sku, batch1, batch2 = random_ref("sku"), random_ref("batch1"), random_ref("batch2")
    o1, o2, o3 = random_ref("o1"), random_ref("o2"), random_ref("o3")
    await add_product(engine, sku, {batch1: 10, batch2: 10}, {o1: 4, o2: 5, o3: 6})

    async with repository(engine) as (repo, _):
        product = await repo.get_by_batchref(batch1)
        assert product is not None
        assert product.sku == sku
        assert repo.seen == {product}
        by_ref = {b.reference: b for b in product.batches}
        assert set(by_ref) == {batch1, batch2}
        assert by_ref[batch1].allocations == {
            model.OrderLine(o1, sku, 4),
            model.OrderLine(o2, sku, 5),
        }
        assert by_ref[batch1].allocated_quantity == 9
        assert by_ref[batch2].allocations == set()
        assert by_ref[batch2].allocated_quantity == 6


async def test_a_line_loaded_twice_is_held_once(engine: AsyncEngine) -> None:
    sku, batchref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await add_product(engine, sku, {batchref: 10}, {orderid: 4, random_ref("other"): 2})

    async with repository(engine) as (repo, tx):
        product = await repo.get(sku, orderid=orderid)
        assert product is not None
        assert await repo.get_by_batchref(batchref) is product
        assert await repo.get(sku, orderid=orderid) is product
        [batch] = product.batches
        assert len(batch.allocations) == 2
        assert batch.allocated_quantity == 6
        product.change_batch_quantity(batchref, 4)  # one line must go
        await save(repo, tx)

    async with repository(engine) as (repo, _):
        product = await repo.get_by_batchref(batchref)
        assert product is not None
        [batch] = product.batches
        assert batch.allocated_quantity == sum(line.qty for line in batch.allocations)


async def test_deallocating_deletes_the_allocation_and_the_order_line(engine: AsyncEngine) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")
    o1, o2 = random_ref("o1"), random_ref("o2")
    await add_product(engine, sku, {batchref: 10}, {o1: 4, o2: 4})

    async with repository(engine) as (repo, tx):
        product = await repo.get_by_batchref(batchref)
        assert product is not None
        product.change_batch_quantity(batchref, 5)  # one of the two lines must go
        [deallocated] = [e for e in product.events if isinstance(e, events.Deallocated)]
        await save(repo, tx)

    kept = o2 if deallocated.orderid == o1 else o1
    assert await allocation_rows(engine, [o1, o2]) == [(kept, sku, 4, batchref)]
    assert await order_line_count(engine, [deallocated.orderid]) == 0
    async with repository(engine) as (repo, _):
        product = await repo.get_by_batchref(batchref)
        assert product is not None
        [batch] = product.batches
        assert (batch.purchased_quantity, batch.allocated_quantity) == (5, 4)
        assert batch.allocations == {model.OrderLine(kept, sku, 4)}


async def test_a_deallocated_line_reallocated_in_the_same_transaction_moves(
    engine: AsyncEngine,
) -> None:
    sku, first, second, orderid = (
        random_ref("sku"),
        random_ref("first"),
        random_ref("second"),
        random_ref("order"),
    )
    await add_product(engine, sku, {first: 10}, {orderid: 6})
    async with repository(engine) as (repo, tx):
        product = await repo.get(sku)
        assert product is not None
        product.add_batch(model.Batch(second, sku, 10, date(2011, 1, 1)))
        await save(repo, tx)

    async with repository(engine) as (repo, tx):
        product = await repo.get_by_batchref(first)
        assert product is not None
        product.change_batch_quantity(first, 0)
        await repo.save()  # as an inline handler's query would
        # As ``reallocate`` does, in the same transaction.
        assert await repo.get(sku, orderid=orderid) is product
        assert product.allocate(model.OrderLine(orderid, sku, 6)) == second
        await save(repo, tx)

    assert await allocation_rows(engine, [orderid]) == [(orderid, sku, 6, second)]
    assert await order_line_count(engine, [orderid]) == 1
    async with repository(engine) as (repo, _):
        product = await repo.get(sku, orderid=orderid)
        assert product is not None
        by_ref = {b.reference: b for b in product.batches}
        assert (by_ref[first].allocated_quantity, by_ref[second].allocated_quantity) == (0, 6)
        assert by_ref[second].allocations == {model.OrderLine(orderid, sku, 6)}


async def test_deallocating_every_line_leaves_no_rows(engine: AsyncEngine) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")
    orders = [random_ref("order") for _ in range(3)]
    await add_product(engine, sku, {batchref: 10}, dict.fromkeys(orders, 2))

    async with repository(engine) as (repo, tx):
        product = await repo.get_by_batchref(batchref)
        assert product is not None
        product.change_batch_quantity(batchref, 0)
        await save(repo, tx)

    assert await allocation_rows(engine, orders) == []
    assert await order_line_count(engine, orders) == 0


async def test_get_returns_none_for_an_unknown_sku_or_batchref(engine: AsyncEngine) -> None:
    async with repository(engine) as (repo, _):
        assert await repo.get(random_ref("sku")) is None
        assert await repo.get(random_ref("sku"), orderid=random_ref("order")) is None
        assert await repo.get_by_batchref(random_ref("batch")) is None
        assert repo.seen == set()


async def allocate_counting(engine: AsyncEngine, sku: str, orderid: str) -> tuple[int, int]:
    """(statements, rows read) of allocating one more line of ``sku``."""
    tx = CountingTransaction(transaction(engine))
    try:
        repo = SqlRepository(tx)
        product = await repo.get(sku, orderid=orderid)
        assert product is not None
        assert product.allocate(model.OrderLine(orderid, sku, 1)) is not None
        await repo.save()
        await tx.commit()
    finally:
        await tx.close()
    return tx.statements, tx.rows


async def test_an_allocation_costs_the_same_however_many_lines_the_sku_holds(
    engine: AsyncEngine,
) -> None:
    few, many = random_ref("few"), random_ref("many")
    await add_product(engine, few, {random_ref("batch"): 1000}, {random_ref("o"): 1})
    await add_product(
        engine, many, {random_ref("batch"): 1000}, {random_ref("o"): 1 for _ in range(200)}
    )

    assert await allocate_counting(engine, few, random_ref("order")) == await allocate_counting(
        engine, many, random_ref("order")
    )


async def test_saving_an_unchanged_product_writes_nothing(engine: AsyncEngine) -> None:
    sku, batchref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await add_product(engine, sku, {batchref: 10}, {orderid: 2})

    tx = CountingTransaction(transaction(engine))
    try:
        repo = SqlRepository(tx)
        assert await repo.get(sku, orderid=orderid) is not None
        loaded = tx.statements
        await repo.save()
        assert tx.statements == loaded
    finally:
        await tx.close()


async def blocked_on(engine: AsyncEngine, pid: int) -> bool:
    """Whether some backend waits for a lock PostgreSQL backend ``pid`` holds."""
    async with engine.connect() as conn:
        waiting = await conn.scalar(
            text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
            {"pid": pid},
        )
        return bool(waiting)


@pytest.mark.postgres
async def test_a_product_changed_while_its_lock_was_awaited_is_read_as_it_is_now(
    postgres_engine: AsyncEngine,
) -> None:
    # The lock and the read are one statement, whose snapshot predates the
    # wait: what the other transaction committed meanwhile must be read.
    engine = postgres_engine
    sku, ref = random_ref("sku"), random_ref("batch")
    first, second = random_ref("order"), random_ref("order")
    await add_product(engine, sku, {ref: 10})

    async with repository(engine) as (holder, holding):
        product = await holder.get(sku)
        assert product is not None
        product.allocate(model.OrderLine(first, sku, 4))
        await holder.save()
        pid = await holding.scalar(select(func.pg_backend_pid()))
        async with repository(engine) as (waiter, _):
            waited = asyncio.create_task(waiter.get(sku, orderid=first))
            await eventually(lambda: blocked_on(engine, pid), 10, "the second get never waited")
            await holding.commit()
            again = await waited

            assert again is not None
            assert again.version_number == 1
            [batch] = again.batches
            assert (batch.allocated_quantity, batch.allocations) == (
                4,
                {model.OrderLine(first, sku, 4)},
            )
            assert again.allocate(model.OrderLine(second, sku, 7)) is None  # 6 left, not 10


@pytest.mark.postgres
async def test_reading_a_product_reads_only_its_orders_lines_with_any_plan(
    postgres_engine: AsyncEngine,
) -> None:
    # A plan made while each batch held ten lines (as statistics said) must
    # not go through a batch's allocations once one holds thousands.
    engine, sku, orderid = postgres_engine, random_ref("sku"), "o-17"
    for n in range(300):
        await add_product(
            engine, f"{sku}-{n}", {f"{sku}-{n}-b": 100}, {f"o-{k}": 1 for k in range(10)}
        )
    await add_product(engine, sku, {f"{sku}-b": 10**6}, {"o-0": 1})
    raw = await engine.raw_connection()
    try:
        conn: Any = raw.driver_connection
        await conn.execute("ANALYZE")
        sql = compiled(_statements().locked_product, engine.dialect).sql
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE read_product AS {sql}")
        read = f"EXECUTE read_product('{sku}', ARRAY['{orderid}'])"
        await conn.execute(f"BEGIN; {read}; ROLLBACK")  # planned now
        async with repository(engine) as (repo, tx):
            product = await repo.get(sku)
            assert product is not None
            for n in range(1, 5000):
                product.allocate(model.OrderLine(f"o-{n}", sku, 1))
            await save(repo, tx)
        await conn.execute("BEGIN")
        [plan] = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {read}")
        await conn.execute("ROLLBACK")
    finally:
        raw.invalidate()  # not back to the pool with a prepared statement and a setting
    assert lines_read(plan["Plan"]) == 1, json.dumps(plan, indent=1)


def lines_read(node: dict[str, Any]) -> int:
    """The most rows a node of the plan read from order_lines or allocations, in all its loops."""
    here = 0
    if node.get("Relation Name") in ("order_lines", "allocations"):
        removed = int(node.get("Rows Removed by Filter", 0))
        here = int(node["Actual Rows"] * node["Actual Loops"]) + removed
    return max([here, *(lines_read(child) for child in node.get("Plans", []))])
