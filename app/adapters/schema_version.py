"""The schema: brought up to this code's (``allocation migrate``), and checked at startup.

The migrations ship inside the package (app/migrations), so an installed
service migrates with no checkout: ``alembic upgrade head`` from a checkout
runs the same ones, through alembic.ini.
"""

import asyncio
import logging
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.database_errors import unavailable_reason

# The newest migration (alembic's head). A test keeps the two equal.
SCHEMA_VERSION = "0012"
STARTUP_TIMEOUT = 10.0  # seconds the database has to answer at startup
MIGRATIONS = Path(__file__).parent.parent / "migrations"


def migrate() -> None:
    """Apply every migration the database lacks, to DATABASE_URL (alembic's env.py reads it)."""
    from alembic import command
    from alembic.config import Config

    logging.getLogger("alembic").setLevel(logging.INFO)  # each migration it applies
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    command.upgrade(config, "head")


class StartupError(Exception):
    """The service cannot start; the message says why and what to do."""


async def check_database(engine: AsyncEngine, seconds: float = STARTUP_TIMEOUT) -> None:
    where = engine.url.render_as_string(hide_password=True)
    try:
        async with asyncio.timeout(seconds), engine.connect() as conn:
            has_versions = await conn.run_sync(
                lambda sync: inspect(sync).has_table("alembic_version")
            )
            version = None
            if has_versions:
                result = await conn.execute(text("SELECT version_num FROM alembic_version"))
                version = result.scalar_one_or_none()
    except TimeoutError:
        raise StartupError(
            f"cannot reach the database at {where}: no answer within {seconds:g}s"
        ) from None
    except Exception as e:
        raise StartupError(
            f"cannot reach the database at {where}: {unavailable_reason(e)}"
        ) from None
    if version != SCHEMA_VERSION:
        found = "no migrations" if version is None else f"migration {version}"
        raise StartupError(
            f"the database at {where} is not migrated: it has {found}, this code needs "
            f"{SCHEMA_VERSION}. Run `allocation migrate` first."
        )
