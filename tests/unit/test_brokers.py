"""Which broker the events go to and come from, and where dead letters are kept, by setting.

The container is opened on a SQLite file; neither Redis nor NATS is
reached: their clients connect when first used.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.adapters.dead_letters import RedisDeadLetters
from app.adapters.jetstream_dead_letters import JetStreamDeadLetters
from app.adapters.publisher import FanoutPublisher, JetStreamPublisher, NoPublisher, RedisPublisher
from app.config import InvalidSettings, Settings, load_settings
from tests.support.containers import running_container

REDIS, NATS = "redis://127.0.0.1:1/0", "nats://127.0.0.1:1,nats://127.0.0.2:1"


@pytest.mark.parametrize(
    ("redis", "nats", "brokers", "publisher", "dead_letters"),
    [
        (None, None, "", NoPublisher, type(None)),
        (REDIS, None, "", RedisPublisher, RedisDeadLetters),
        (None, NATS, "", JetStreamPublisher, JetStreamDeadLetters),
        (REDIS, NATS, "", FanoutPublisher, RedisDeadLetters),
        (REDIS, NATS, "nats", JetStreamPublisher, RedisDeadLetters),
        (REDIS, NATS, "redis", RedisPublisher, RedisDeadLetters),
    ],
)
async def test_events_go_where_the_settings_say_and_dead_letters_stay_on_redis_if_set(
    tmp_path: Path,
    redis: str | None,
    nats: str | None,
    brokers: str,
    publisher: type,
    dead_letters: type,
) -> None:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'a.db'}",
        redis_url=redis,
        nats_url=nats,
        event_brokers=brokers,
    )
    async with running_container(settings) as container:
        assert type(container.publisher()) is publisher
        assert type(container.dead_letters()) is dead_letters
        jetstream = container.jetstream()
        assert (jetstream is not None) == ("nats" in settings.brokers)
        if jetstream is not None:
            assert jetstream.servers == ["nats://127.0.0.1:1", "nats://127.0.0.2:1"]


@pytest.mark.parametrize(
    ("variables", "says"),
    [
        ({"EVENT_BROKERS": "nats"}, "EVENT_BROKERS names nats, but NATS_URL is unset"),
        ({"EVENT_BROKERS": "kafka"}, "EVENT_BROKERS names redis, nats, or both"),
        ({"NATS_URL": "http://n1:4222"}, "NATS_URL: must be NATS URLs"),
    ],
)
def test_settings_that_name_no_broker_stop_the_service(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], says: str
) -> None:
    for name in ("REDIS_URL", "NATS_URL", "EVENT_BROKERS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InvalidSettings, match=says):
        load_settings()
