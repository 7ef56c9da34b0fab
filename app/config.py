"""Settings, from the environment and an optional .env file."""

import re
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from app.wire import PREFIX_PATTERN, Names

# Plain URLs, as operators and hosting platforms write them, get the async driver.
_ASYNC_DRIVERS = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}
_SUPPORTED = {"postgresql+asyncpg", "sqlite+aiosqlite"}
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./allocation.db"
MIN_TOKEN_LENGTH = 16
_ORIGIN = re.compile(r"https?://[^/?#@\s,*]+", re.IGNORECASE)
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
    allow_anonymous_writes: bool = Field(
        False,
        description="Outside development, let the API start without API_TOKEN, its writes "
        "open to anyone who reaches it.",
    )
    metrics_token: SecretStr | None = Field(
        None, description="Bearer token GET /metrics must carry; unset leaves it open."
    )
    max_body_bytes: int = Field(
        65536, ge=1024, le=16 * 1024 * 1024, description="Largest request body accepted."
    )
    root_path: str = Field(
        "",
        description="The path prefix a reverse proxy serves the API under, e.g. /allocation.",
    )
    cors_allow_origins: str = Field(
        "",
        description="Origins whose pages may call the API from a browser, comma separated, "
        "e.g. https://shop.example.com; empty allows none.",
    )

    # The HTTP server's, for `allocation serve`.
    host: str = Field("127.0.0.1", min_length=1, description="Address the API listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port the API listens on.")
    web_concurrency: int = Field(1, ge=1, le=64, description="API processes.")
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Addresses (comma-separated, or *) of the proxies whose X-Forwarded-For "
        "and X-Forwarded-Proto are believed.",
    )
    max_header_bytes: int = Field(
        32768,
        ge=1024,
        le=1024 * 1024,
        description="Largest request head (request line and headers) accepted; larger is "
        "a 431 and the connection is closed.",
    )
    header_timeout: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Seconds a connection may take to send a request's head; then it is closed.",
    )
    max_connections: int | None = Field(
        None,
        ge=16,
        description="Connections each API process keeps open at most; past it the idle ones "
        "close first. Unset: derived from the process's open-file limit.",
    )

    redis_url: str | None = Field(
        None, description="Redis for external events; unset turns them off."
    )
    worker_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the worker's /health, /ready and /metrics listen on: "
        "0.0.0.0 to be scraped from elsewhere (the image sets it).",
    )
    worker_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port on which `allocation worker` serves /health, /ready and /metrics; "
        "unset serves none.",
    )
    channel_prefix: str = Field(
        "",
        pattern=PREFIX_PATTERN,
        description="Put before every channel, stream, subject, consumer group and "
        "dead-letter list the service uses on Redis and NATS, e.g. staging.: services "
        "sharing a broker then never take each other's messages. Empty: the book's names.",
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
    nats_url: str | None = Field(
        None,
        description="NATS servers with JetStream for external events, comma separated, "
        "e.g. nats://n1:4222,nats://n2:4222; unset, none.",
    )
    event_brokers: str = Field(
        "",
        description="Where external events go and come from: redis, nats, or redis,nats; "
        "empty: every broker whose URL is set.",
    )
    nats_stream_replicas: int = Field(
        1,
        ge=1,
        le=5,
        description="Replicas of each JetStream stream the service creates (3 on a "
        "3-node cluster); streams an operator made are used as they are.",
    )
    nats_durable: str = Field(
        "allocation",
        min_length=1,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Durable JetStream consumer the workers share for change_batch_quantity.",
    )
    nats_ack_wait: float = Field(
        30.0,
        gt=0,
        le=86400,
        description="Seconds a change_batch_quantity message may stay unacknowledged by "
        "the worker it went to (dead, or stuck) before JetStream delivers it again.",
    )
    nats_max_deliver: int = Field(
        5,
        ge=1,
        le=100,
        description="Deliveries of a change_batch_quantity message that keeps failing "
        "before it is dead-lettered.",
    )
    nats_duplicate_window: float = Field(
        120.0,
        gt=0,
        le=86400,
        description="Seconds within which JetStream drops a line_allocated re-published "
        "with the same event id (streams the service creates).",
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

    @field_validator("api_token", "metrics_token", mode="before")
    @classmethod
    def _no_empty_token(cls, value: object) -> object:
        return value or None

    @field_validator("redis_url", "smtp_host", "nats_url")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("nats_url")
    @classmethod
    def _nats_servers(cls, value: str | None) -> str | None:
        if value is None:
            return None
        servers = [server.strip() for server in value.split(",") if server.strip()]
        for server in servers:
            if not re.fullmatch(r"(nats|tls)://[^\s,/]+", server):
                raise ValueError("must be NATS URLs, comma separated, e.g. nats://n1:4222")
        return ",".join(servers) or None

    @model_validator(mode="after")
    def _brokers_configured(self) -> Self:
        named = {broker.strip() for broker in self.event_brokers.split(",") if broker.strip()}
        if not named <= {"redis", "nats"}:
            raise ValueError("EVENT_BROKERS names redis, nats, or both (redis,nats)")
        for broker, url in (("redis", self.redis_url), ("nats", self.nats_url)):
            if broker in named and url is None:
                raise ValueError(f"EVENT_BROKERS names {broker}, but {broker.upper()}_URL is unset")
        return self

    @property
    def brokers(self) -> frozenset[str]:
        """The brokers external events go to and come from: EVENT_BROKERS, or every one set."""
        named = {broker.strip() for broker in self.event_brokers.split(",") if broker.strip()}
        if not named:
            named = {b for b, url in (("redis", self.redis_url), ("nats", self.nats_url)) if url}
        return frozenset(named)

    @property
    def names(self) -> Names:
        """This deployment's broker names (CHANNEL_PREFIX)."""
        return Names(self.channel_prefix)

    @property
    def dead_letter_list(self) -> str:
        return self.names(self.dead_letter_key)

    @property
    def stream_group_name(self) -> str:
        return self.names(self.stream_group)

    @property
    def nats_durable_name(self) -> str:
        return self.names.durable(self.nats_durable)

    @property
    def nats_servers(self) -> list[str]:
        """The NATS servers events go through: NATS_URL's, unless EVENT_BROKERS leaves NATS out."""
        if not self.nats_url or "nats" not in self.brokers:
            return []
        return self.nats_url.split(",")

    @field_validator("root_path")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.rstrip("/")
        if value and not value.startswith("/"):
            raise ValueError("must start with '/', e.g. /allocation")
        return value

    @field_validator("cors_allow_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        origins = [origin.strip() for origin in value.split(",") if origin.strip()]
        for origin in origins:
            # An Origin header is exactly scheme://host[:port]: "https://x.com/" never matches one.
            if not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    "must be origins, scheme://host[:port] with no path, comma separated, "
                    "e.g. https://shop.example.com,http://localhost:3000"
                )
        return ",".join(origins)

    @property
    def cors_origins(self) -> list[str]:
        """CORS_ALLOW_ORIGINS, one origin each."""
        return self.cors_allow_origins.split(",") if self.cors_allow_origins else []

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
        for name in ("api_token", "metrics_token"):
            secret = getattr(self, name)
            token = secret.get_secret_value() if secret is not None else None
            if token is not None and (
                token.lower() in PLACEHOLDER_PASSWORDS or len(token) < MIN_TOKEN_LENGTH
            ):
                raise ValueError(
                    f"{name.upper()} is a placeholder or shorter than {MIN_TOKEN_LENGTH} "
                    f"characters (ENVIRONMENT={self.environment}); e.g. openssl rand -hex 32"
                )
        return self

    def check_api(self) -> None:
        """Refuse to serve the API with settings only the API must not run with.

        The worker, the CLI and migrations take no writes over HTTP and need
        no token: this is asked by the API alone.
        """
        if (
            self.environment != "development"
            and self.api_token is None
            and not self.allow_anonymous_writes
        ):
            raise InvalidSettings(
                f"API_TOKEN is not set (ENVIRONMENT={self.environment}): anyone who reaches "
                "the API could write. Set API_TOKEN, e.g. openssl rand -hex 32, or "
                "ALLOW_ANONYMOUS_WRITES=true to serve open writes on purpose"
            )

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
