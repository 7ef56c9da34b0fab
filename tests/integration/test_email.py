"""Out-of-stock notices go out by real SMTP, and wait in the outbox while it is down.

The mail server is aiosmtpd on a free port; SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app import views
from app.config import Settings
from app.container import Container
from app.domain import commands
from tests.conftest import free_port, random_ref
from tests.integration.event_helpers import (
    SmtpSink,
    eventually,
    outbox_rows,
    private_postgres_database,
    relay_until_delivered,
    running_container,
)

STOCK_TEAM = "stock@example.com"
SENDER = "allocation@example.com"


@pytest.fixture(scope="module")
async def events_postgres_url(postgres_server_url: str) -> AsyncIterator[str]:
    async with private_postgres_database(postgres_server_url) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def email_database_url(request: pytest.FixtureRequest) -> str:
    # PostgreSQL in a database of the module's own: another relay on the
    # shared one could deliver these notices elsewhere first.
    name = "sqlite_url" if request.param == "sqlite" else "events_postgres_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpSink]:
    sink = SmtpSink(free_port())
    await sink.start()
    try:
        yield sink
    finally:
        await sink.stop()


@pytest.fixture
async def container(email_database_url: str, smtp: SmtpSink) -> AsyncIterator[Container]:
    settings = Settings(
        database_url=email_database_url,
        redis_url=None,
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        smtp_from=SENDER,
        notify_email=STOCK_TEAM,
        relay_enabled=False,
        outbox_lease=0.05,
    )
    async with running_container(settings) as container:
        yield container


async def test_running_out_of_stock_mails_the_stock_team_once(
    container: Container, smtp: SmtpSink
) -> None:
    sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await container.bus().handle(commands.CreateBatch(ref, sku, 10, None))

    await container.bus().handle(commands.Allocate(orderid, sku, 11))

    async def mailed() -> bool:
        return bool(smtp.about(sku))

    await eventually(mailed, f"a notice about {sku}")
    [mail] = smtp.about(sku)
    assert mail.recipients == [STOCK_TEAM]
    assert mail.sender == SENDER
    assert mail.message["To"] == STOCK_TEAM
    assert mail.message["From"] == SENDER
    assert sku in mail.message["Subject"]
    assert await views.allocations(container.read_engine(), orderid) == []
    [row] = await outbox_rows(container.engine(), sku, "OutOfStock")
    assert not row.pending


async def test_with_smtp_down_the_notice_waits_in_the_outbox(
    container: Container, smtp: SmtpSink
) -> None:
    sku, ref = random_ref("sku"), random_ref("batch")
    fits, too_big = random_ref("order"), random_ref("order")
    await container.bus().handle(commands.CreateBatch(ref, sku, 10, None))
    await smtp.stop()

    await container.bus().handle(commands.Allocate(fits, sku, 10))
    await container.bus().handle(commands.Allocate(too_big, sku, 1))  # no error: a 202

    read_engine, engine = container.read_engine(), container.engine()
    assert await views.allocations(read_engine, fits) == [{"sku": sku, "batchref": ref}]
    assert await views.allocations(read_engine, too_big) == []
    [row] = await outbox_rows(engine, sku, "OutOfStock")
    assert row.pending
    assert row.attempts == 1
    assert row.last_error is not None
    assert "send_out_of_stock_notification" in row.last_error
    assert smtp.about(sku) == []

    await smtp.start()
    await relay_until_delivered(container, [row.id])

    [mail] = smtp.about(sku)
    assert mail.recipients == [STOCK_TEAM]
    assert sku in mail.message["Subject"]
    [row] = await outbox_rows(engine, sku, "OutOfStock")
    assert not row.pending
    assert row.last_error is None
