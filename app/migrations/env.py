"""Alembic, run on the async engine; the URL is the service's DATABASE_URL.

A caller may hand in a connection as ``config.attributes["connection"]``
(the tests do) instead.
"""

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from app.adapters.engines import build_engine
from app.adapters.tables import metadata
from app.config import InvalidSettings, load_settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def database_url() -> str:
    try:
        return load_settings().database_url
    except InvalidSettings as e:
        raise SystemExit(f"alembic: {e}") from None


async def run_async_migrations() -> None:
    engine = build_engine(database_url())
    try:
        try:
            connection = await engine.connect()
        except Exception as e:
            # One line, without the URL's password; not a page of traceback.
            where = engine.url.render_as_string(hide_password=True)
            raise SystemExit(
                f"alembic: cannot reach the database at {where}: {_reason(e)}"
            ) from None
        try:
            await connection.run_sync(run_migrations)
            await connection.commit()
        finally:
            await connection.close()
    finally:
        await engine.dispose()


def _reason(e: Exception) -> str:
    cause = getattr(e, "orig", None) or e
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
elif (connection := config.attributes.get("connection")) is not None:
    run_migrations(connection)
else:
    asyncio.run(run_async_migrations())
