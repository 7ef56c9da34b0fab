"""Settings, from the environment and an optional .env file."""

from typing import Any, Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# Plain URLs, as operators and hosting platforms write them, get the async driver.
_ASYNC_DRIVERS = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}
_SUPPORTED = {"postgresql+asyncpg", "sqlite+aiosqlite"}
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./allocation.db"
MIN_TOKEN_LENGTH = 16
# Passwords no deployment should run with, .env.example's among them.
PLACEHOLDER_PASSWORDS = frozenset(
    {"change-me", "changeme", "password", "secret", "example", "postgres", "allocation"}
)


def _with_async_driver(value: str) -> str:
    try:
        url = make_url(value)
    except (ArgumentError, ValueError):
        # SQLAlchemy's message may quote the URL, password and all.
        raise ValueError("is not a database URL, e.g. postgresql://USER:PASSWORD@HOST/DB") from None
    drivername = _ASYNC_DRIVERS.get(url.drivername, url.drivername)
    if drivername not in _SUPPORTED:
        raise ValueError(f"unsupported database {url.drivername!r}; use PostgreSQL or SQLite")
    return url.set(drivername=drivername).render_as_string(hide_password=False)


class Settings(BaseSettings):
    # An empty value means unset, for every setting: `cp .env.example .env` runs.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    environment: Literal["development", "production"] = Field(
        "development",
        description="Outside development, settings that are unsafe to deploy are refused.",
    )

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="Write-side database (SQLAlchemy URL).",
    )
    read_database_url: str | None = Field(
        None,
        description="A streaming replica of DATABASE_URL (PostgreSQL) for reads; unset, "
        "reads go to DATABASE_URL.",
    )
    replica_wait: float = Field(
        0.2,
        ge=0,
        le=10,
        description="Seconds a read given a write's position (?after=) waits for the "
        "replica to replay it before asking the primary.",
    )
    replica_check_interval: float = Field(
        1.0,
        gt=0,
        le=300,
        description="Seconds between checks of the replica: its lag, and whether a "
        "failed replica answers again.",
    )
    db_pool_size: int = Field(10, ge=1, le=200, description="Connections per engine.")
    db_timeout: float = Field(
        5.0,
        gt=0,
        le=300,
        description="Seconds a request waits on the database (PostgreSQL): to connect, "
        "for a pooled connection, for a statement's answer; then it answers 503.",
    )
    write_retries: int = Field(
        8, ge=1, le=50, description="Attempts at a write that collides with another."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="auto: JSON lines, or text when writing to a terminal."
    )
    api_token: SecretStr | None = Field(
        None, description="Bearer token every write must carry; unset leaves writes open."
    )
    max_body_bytes: int = Field(
        65536, ge=1024, le=16 * 1024 * 1024, description="Largest request body accepted."
    )
    root_path: str = Field(
        "",
        description="The path prefix a reverse proxy serves the API under, e.g. /allocation.",
    )

    redis_url: str | None = Field(
        None, description="Redis for external events; unset turns them off."
    )
    worker_metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port on which `allocation worker` serves /metrics; unset serves none.",
    )
    dead_letter_key: str = Field(
        "allocation:dead-letters:change_batch_quantity",
        min_length=1,
        description="Redis list the change_batch_quantity messages that cannot be applied go to.",
    )
    stream_group: str = Field(
        "allocation",
        min_length=1,
        description="Consumer group the workers read the change_batch_quantity stream in.",
    )
    stream_claim_idle: float = Field(
        30.0,
        gt=0,
        le=86400,
        description="Seconds a change_batch_quantity stream entry may stay unacknowledged "
        "by the worker that read it (dead, or stuck) before another claims it.",
    )
    line_allocated_stream_maxlen: int = Field(
        100000,
        ge=1,
        description="About how many entries the line_allocated stream keeps; older "
        "ones are trimmed.",
    )
    smtp_host: str | None = Field(None, description="Mail server; unset logs notices instead.")
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_from: str = Field("allocation@localhost", description="Sender of notices.")
    notify_email: str = Field("stock@localhost", description="Who hears of stock running out.")

    relay_enabled: bool = Field(True, description="Run the outbox relay in the API process.")
    relay_interval: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="Seconds between the relay's looks at the outbox for events "
        "its own process did not just store (another's, or due again after a failure).",
    )
    outbox_retention: float = Field(
        86400.0, gt=0, description="Seconds a delivered event is kept in the outbox."
    )
    idempotency_ttl: float = Field(
        86400.0,
        gt=0,
        description="Seconds a write's Idempotency-Key and its answer are kept; after "
        "that the key is new again.",
    )

    @field_validator("database_url")
    @classmethod
    def _write_url(cls, value: str) -> str:
        return _with_async_driver(value or DEFAULT_DATABASE_URL)

    @field_validator("read_database_url")
    @classmethod
    def _read_url(cls, value: str | None) -> str | None:
        return _with_async_driver(value) if value else None

    @model_validator(mode="after")
    def _replica_of_postgresql(self) -> Self:
        if self.read_database_url == self.database_url:
            self.read_database_url = None  # one database
        if self.read_database_url is None:
            return self
        if not all(
            make_url(url).get_backend_name() == "postgresql"
            for url in (self.database_url, self.read_database_url)
        ):
            raise ValueError(
                "READ_DATABASE_URL names a streaming replica of DATABASE_URL: "
                "both must be PostgreSQL"
            )
        return self

    @field_validator("api_token", mode="before")
    @classmethod
    def _no_empty_token(cls, value: object) -> object:
        return value or None

    @field_validator("redis_url", "smtp_host")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("root_path")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.rstrip("/")
        if value and not value.startswith("/"):
            raise ValueError("must start with '/', e.g. /allocation")
        return value

    @model_validator(mode="after")
    def _safe_outside_development(self) -> Self:
        if self.environment == "development":
            return self
        for name in ("database_url", "read_database_url", "redis_url"):
            value = getattr(self, name)
            password = make_url(value).password if value else None
            if password is not None and password.lower() in PLACEHOLDER_PASSWORDS:
                raise ValueError(
                    f"{name.upper()} uses a placeholder password such as change-me; "
                    f"set a real one (ENVIRONMENT={self.environment})"
                )
        if self.api_token is not None:
            token = self.api_token.get_secret_value()
            if token.lower() in PLACEHOLDER_PASSWORDS or len(token) < MIN_TOKEN_LENGTH:
                raise ValueError(
                    f"API_TOKEN is a placeholder or shorter than {MIN_TOKEN_LENGTH} "
                    f"characters (ENVIRONMENT={self.environment}); e.g. openssl rand -hex 32"
                )
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class InvalidSettings(ValueError):
    """Settings the service refuses: one line naming each and its rule, and no value.

    pydantic's own message quotes each input, which would print a rejected
    token or password in the log.
    """


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as e:
        raise InvalidSettings("; ".join(_rule(error) for error in e.errors())) from None


def _rule(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    name = ".".join(str(part) for part in error["loc"]).upper()
    return f"{name}: {message}" if name else message
