"""Settings, from the environment and an optional .env file."""

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

# Plain URLs, as operators and hosting platforms write them, get the async driver.
_ASYNC_DRIVERS = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}
_SUPPORTED = {"postgresql+asyncpg", "sqlite+aiosqlite"}
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./allocation.db"


def _with_async_driver(value: str) -> str:
    url = make_url(value)
    drivername = _ASYNC_DRIVERS.get(url.drivername, url.drivername)
    if drivername not in _SUPPORTED:
        raise ValueError(f"unsupported database {url.drivername!r}; use PostgreSQL or SQLite")
    return url.set(drivername=drivername).render_as_string(hide_password=False)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="Write-side database (SQLAlchemy URL).",
    )
    read_database_url: str | None = Field(
        None, description="Read-side database, e.g. a replica; defaults to DATABASE_URL."
    )
    db_pool_size: int = Field(10, ge=1, le=200, description="Connections per engine.")
    write_retries: int = Field(
        8, ge=1, le=50, description="Attempts at a write that collides with another."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    redis_url: str | None = Field(
        None, description="Redis for external events; unset turns them off."
    )
    smtp_host: str | None = Field(None, description="Mail server; unset logs notices instead.")
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_from: str = Field("allocation@localhost", description="Sender of notices.")
    notify_email: str = Field("stock@localhost", description="Who hears of stock running out.")

    relay_enabled: bool = Field(True, description="Run the outbox relay in the API process.")
    relay_interval: float = Field(
        1.0, gt=0, le=3600, description="Seconds between looks at an empty outbox."
    )
    outbox_lease: float = Field(
        30.0,
        gt=0,
        le=86400,
        description="Seconds an event belongs to the process delivering it; after "
        "that another relay may deliver it.",
    )
    outbox_retention: float = Field(
        86400.0, gt=0, description="Seconds a delivered event is kept in the outbox."
    )

    @field_validator("database_url")
    @classmethod
    def _write_url(cls, value: str) -> str:
        return _with_async_driver(value or DEFAULT_DATABASE_URL)

    @field_validator("read_database_url")
    @classmethod
    def _read_url(cls, value: str | None) -> str | None:
        return _with_async_driver(value) if value else None

    @field_validator("redis_url", "smtp_host")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def effective_read_database_url(self) -> str:
        return self.read_database_url or self.database_url
