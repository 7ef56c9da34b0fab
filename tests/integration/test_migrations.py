"""Alembic owns the schema: its migrations must build exactly what app.adapters.tables declares."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.adapters import tables
from tests.support.databases import ROOT, alembic_upgrade


def alembic_config() -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "app" / "migrations"))
    config.attributes["configure_logger"] = False
    return config


def alembic_downgrade(url: str, revision: str) -> None:
    previous = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = url
    try:
        command.downgrade(alembic_config(), revision)
    finally:
        if previous is None:
            del os.environ["DATABASE_URL"]
        else:
            os.environ["DATABASE_URL"] = previous


def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


async def schema_diff(url: str, metadata: MetaData) -> list[Any]:
    """What autogenerate would change to turn the live schema into ``metadata``."""

    def compare(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, metadata))

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


async def inspect_schema(url: str, look: Callable[[Connection], Any]) -> Any:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(look)
    finally:
        await engine.dispose()


def table_names(conn: Connection) -> list[str]:
    return sorted(inspect(conn).get_table_names())


def sequence_names(conn: Connection) -> list[str]:
    return sorted(inspect(conn).get_sequence_names())


def current_revisions(conn: Connection) -> list[str]:
    return list(conn.scalars(select(text("version_num")).select_from(text("alembic_version"))))


def operation_name(difference: Any) -> str:
    # Column changes come as a list of (operation, ...) tuples, the rest as one tuple.
    first = difference[0] if isinstance(difference, list) else difference
    return str(first[0])


def drifted(change: Callable[[MetaData], None]) -> MetaData:
    copy = MetaData(naming_convention=tables.metadata.naming_convention)
    for table in tables.metadata.sorted_tables:
        table.to_metadata(copy)
    change(copy)
    return copy


def add_column(metadata: MetaData) -> None:
    metadata.tables["batches"].append_column(Column("colour", String(20), nullable=True))


def narrow_a_column(metadata: MetaData) -> None:
    metadata.tables["order_lines"].c.orderid.type = String(100)


def make_a_column_nullable(metadata: MetaData) -> None:
    metadata.tables["allocations_view"].c.version.nullable = True


def add_an_index(metadata: MetaData) -> None:
    Index("ix_order_lines_orderid", metadata.tables["order_lines"].c.orderid)


def drop_a_server_default(metadata: MetaData) -> None:
    metadata.tables["batches"].c.allocated_quantity.server_default = None


def drop_a_unique_constraint(metadata: MetaData) -> None:
    table = metadata.tables["order_lines"]
    [unique] = [c for c in table.constraints if isinstance(c, UniqueConstraint)]
    table.constraints.remove(unique)


def drop_a_foreign_key(metadata: MetaData) -> None:
    table = metadata.tables["allocations"]
    [fk] = [c for c in table.foreign_key_constraints if c.referred_table.name == "batches"]
    table.constraints.remove(fk)
    table.foreign_keys.difference_update(fk.elements)


def add_a_table(metadata: MetaData) -> None:
    Table("audit", metadata, Column("id", Integer, primary_key=True))


async def test_the_migrations_build_the_schema_the_orm_declares(
    empty_database_url: str,
) -> None:
    await asyncio.to_thread(alembic_upgrade, empty_database_url)

    assert await schema_diff(empty_database_url, tables.metadata) == []
    assert await inspect_schema(empty_database_url, current_revisions) == [head()]


@pytest.mark.parametrize(
    ("change", "operation"),
    [
        (add_column, "add_column"),
        (narrow_a_column, "modify_type"),
        (make_a_column_nullable, "modify_nullable"),
        (drop_a_server_default, "modify_default"),
        (add_an_index, "add_index"),
        (drop_a_unique_constraint, "remove_constraint"),
        (drop_a_foreign_key, "remove_fk"),
        (add_a_table, "add_table"),
    ],
)
async def test_the_comparison_notices_drift(
    empty_database_url: str, change: Callable[[MetaData], None], operation: str
) -> None:
    await asyncio.to_thread(alembic_upgrade, empty_database_url)

    diff = await schema_diff(empty_database_url, drifted(change))
    assert [operation_name(d) for d in diff] == [operation]


async def test_downgrading_to_base_leaves_only_the_version_table(
    empty_database_url: str,
) -> None:
    await asyncio.to_thread(alembic_upgrade, empty_database_url)
    await asyncio.to_thread(alembic_downgrade, empty_database_url, "base")

    assert await inspect_schema(empty_database_url, table_names) == ["alembic_version"]
    assert await inspect_schema(empty_database_url, current_revisions) == []
    if empty_database_url.startswith("postgresql"):
        assert await inspect_schema(empty_database_url, sequence_names) == []


async def test_upgrading_again_after_a_downgrade_rebuilds_the_same_schema(
    empty_database_url: str,
) -> None:
    await asyncio.to_thread(alembic_upgrade, empty_database_url)
    await asyncio.to_thread(alembic_downgrade, empty_database_url, "base")
    await asyncio.to_thread(alembic_upgrade, empty_database_url)

    assert await schema_diff(empty_database_url, tables.metadata) == []
