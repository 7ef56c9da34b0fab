"""Settings, from the environment and an optional .env file."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    database_url: str = Field(
        "sqlite+aiosqlite:///./allocation.db",
        description="Write-side database (SQLAlchemy async URL).",
    )
    read_database_url: str | None = Field(
        None, description="Read-side database, e.g. a replica; defaults to DATABASE_URL."
    )
    db_pool_size: int = Field(10, ge=1, le=200, description="Connections per engine.")
    write_retries: int = Field(
        8, ge=1, le=50, description="Attempts at a write that collides with another."
    )
    log_level: str = Field("INFO", description="Python logging level name.")

    @property
    def effective_read_database_url(self) -> str:
        return self.read_database_url or self.database_url
