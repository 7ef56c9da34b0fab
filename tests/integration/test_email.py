"""Out-of-stock notices go out by real SMTP, and wait in the outbox while it is down.

The mail server is aiosmtpd on a free port; SQLite and PostgreSQL. No relay
runs by itself: the tests run delivery passes by hand. A notice carries a
Message-ID made from its event's id, so one sent again is recognisably the
same notice.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import pytest
from sqlalchemy import insert

from app import views
from app.adapters import tables
from app.adapters.outbox import serialise
from app.adapters.read_source import ReadSource
from app.clock import utcnow
from app.config import Settings
from app.container import Container
from app.domain import commands, events
from tests.support.faults import failing_after_it_ran
from tests.support.outbox import OutboxRow, deliver_until_delivered, outbox_rows
from tests.support.refs import random_ref
from tests.support.servers import ReceivedMail, SmtpSink

STOCK_TEAM = "stock@example.com"
SENDER = "allocation@example.com"
NOTIFY = "send_out_of_stock_notification"


def message_id(event_id: str) -> str:
    return f"<{event_id}@allocation.out-of-stock>"


def assert_a_notice_of(mail: ReceivedMail, sku: str, row: OutboxRow) -> None:
    """``mail`` is the stock team's notice of ``sku``, made from the event of ``row``."""
    assert mail.recipients == [STOCK_TEAM]
    assert mail.sender == SENDER
    assert mail.message["To"] == STOCK_TEAM
    assert mail.message["From"] == SENDER
    assert sku in mail.message["Subject"]
    assert mail.message["Message-ID"] == message_id(row.id)
    sent = parsedate_to_datetime(str(mail.message["Date"]))
    if sent.tzinfo is None:  # "-0000": in UTC (RFC 5322, 3.3)
        sent = sent.replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - sent) < timedelta(minutes=5)


@pytest.fixture
def email_database_url(module_database: str) -> str:
    # A database of the module's own: another relay on the shared one could
    # deliver these notices elsewhere first.
    return module_database


@pytest.fixture
def settings(email_database_url: str, smtp: SmtpSink) -> Settings:
    return Settings(
        database_url=email_database_url,
        redis_url=None,
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        smtp_from=SENDER,
        notify_email=STOCK_TEAM,
        relay_enabled=False,
    )


async def out_of_stock(container: Container, sku: str, orderid: str) -> OutboxRow:
    """Allocate more of ``sku`` than there is; the OutOfStock event, waiting in the outbox."""
    await container.bus().handle(commands.Allocate(orderid, sku, 11))  # no error: a 202
    assert await views.allocations(container.read_source(), orderid) == []
    [row] = await outbox_rows(container.engine(), sku, "OutOfStock")
    assert row.pending
    return row


async def test_running_out_of_stock_mails_the_stock_team_once(
    container: Container, smtp: SmtpSink
) -> None:
    sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await container.bus().handle(commands.CreateBatch(ref, sku, 10, None))
    row = await out_of_stock(container, sku, orderid)
    assert smtp.about(sku) == []  # it goes after the commit, with delivery

    await deliver_until_delivered(container, [row.id])

    [mail] = smtp.about(sku)
    assert_a_notice_of(mail, sku, row)
    [row] = await outbox_rows(container.engine(), sku, "OutOfStock")
    assert not row.pending
    await container.delivery().deliver_due()
    assert len(smtp.about(sku)) == 1


async def test_a_notice_sent_again_is_the_same_message(
    container: Container, smtp: SmtpSink
) -> None:
    # The mail goes out, then its delivery fails, as if the process had died
    # before it recorded the sending: the event is delivered again.
    faults = failing_after_it_ran(container, NOTIFY)
    sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await container.bus().handle(commands.CreateBatch(ref, sku, 10, None))
    row = await out_of_stock(container, sku, orderid)

    await container.delivery().deliver_due()

    assert faults.struck == 1
    [failed] = await outbox_rows(container.engine(), sku, "OutOfStock")
    assert (failed.pending, failed.attempts) == (True, 1)
    assert failed.last_error is not None
    assert NOTIFY in failed.last_error
    assert len(smtp.about(sku)) == 1

    await deliver_until_delivered(container, [row.id])

    first, again = smtp.about(sku)
    assert_a_notice_of(first, sku, row)
    assert_a_notice_of(again, sku, row)
    assert first.message["Message-ID"] == again.message["Message-ID"]
    [row] = await outbox_rows(container.engine(), sku, "OutOfStock")
    assert not row.pending
    assert row.last_error is None


async def test_with_smtp_down_the_notice_waits_in_the_outbox(
    container: Container, smtp: SmtpSink
) -> None:
    sku, ref = random_ref("sku"), random_ref("batch")
    fits, too_big = random_ref("order"), random_ref("order")
    await container.bus().handle(commands.CreateBatch(ref, sku, 10, None))
    await smtp.stop()

    await container.bus().handle(commands.Allocate(fits, sku, 10))
    await container.bus().handle(commands.Allocate(too_big, sku, 1))  # no error: a 202
    await container.delivery().deliver_due()

    read_engine, engine = container.read_engine(), container.engine()
    assert await views.allocations(ReadSource(read_engine), fits) == [{"sku": sku, "batchref": ref}]
    assert await views.allocations(ReadSource(read_engine), too_big) == []
    [row] = await outbox_rows(engine, sku, "OutOfStock")
    assert row.pending
    assert row.attempts == 1
    assert row.last_error is not None
    assert NOTIFY in row.last_error
    assert smtp.about(sku) == []

    await smtp.start()
    await deliver_until_delivered(container, [row.id])

    [mail] = smtp.about(sku)
    assert_a_notice_of(mail, sku, row)
    [row] = await outbox_rows(engine, sku, "OutOfStock")
    assert not row.pending
    assert row.last_error is None


async def test_one_stock_out_sends_one_notice_naming_its_first_refused_order(
    container: Container, smtp: SmtpSink
) -> None:
    sku, ref = random_ref("sku"), random_ref("batch")
    refused = [random_ref("order") for _ in range(5)]
    await container.bus().handle(commands.CreateBatch(ref, sku, 10, None))
    await container.bus().handle(commands.Allocate(random_ref("order"), sku, 10))
    for orderid in refused:
        await container.bus().handle(commands.Allocate(orderid, sku, 1))

    [row] = await outbox_rows(container.engine(), sku, "OutOfStock")
    await deliver_until_delivered(container, [row.id])

    [mail] = smtp.about(sku)
    assert_a_notice_of(mail, sku, row)
    body = mail.message.get_body().get_content()  # type: ignore[union-attr, unused-ignore]
    assert refused[0] in body
    assert all(orderid not in body for orderid in refused[1:])


async def test_stock_added_ends_the_stock_out_and_the_next_one_is_told_again(
    container: Container, smtp: SmtpSink
) -> None:
    sku, ref, more = random_ref("sku"), random_ref("batch"), random_ref("batch")
    first, second = random_ref("order"), random_ref("order")
    await container.bus().handle(commands.CreateBatch(ref, sku, 1, None))
    await container.bus().handle(commands.Allocate(first, sku, 5))  # refused: a stock-out
    await container.bus().handle(commands.CreateBatch(more, sku, 2, None))  # it ends
    await container.bus().handle(commands.Allocate(second, sku, 5))  # a new one

    rows = await outbox_rows(container.engine(), sku, "OutOfStock")
    await deliver_until_delivered(container, [row.id for row in rows])

    mails = smtp.about(sku)
    assert len(mails) == 2
    bodies = [m.message.get_body().get_content() for m in mails]  # type: ignore[union-attr, unused-ignore]
    assert first in bodies[0]
    assert second in bodies[1]


async def test_a_notice_stored_before_notices_named_the_order_is_still_delivered(
    container: Container, smtp: SmtpSink
) -> None:
    sku = random_ref("sku")
    old = events.OutOfStock(sku=sku)
    payload = serialise(old)
    del payload["orderid"]  # the shape rows had before orders were named
    async with container.engine().begin() as conn:
        now = utcnow()
        await conn.execute(
            insert(tables.outbox).values(
                id=old.id,
                type="OutOfStock",
                payload=payload,
                sku=sku,
                created_at=now,
                available_at=now,
            )
        )

    await deliver_until_delivered(container, [old.id])

    [mail] = smtp.about(sku)
    [row] = await outbox_rows(container.engine(), sku, "OutOfStock")
    assert_a_notice_of(mail, sku, row)
    assert "An order for" in mail.message.get_body().get_content()  # type: ignore[union-attr, unused-ignore]


async def test_a_sale_of_more_orders_than_units_at_once_mails_the_stock_team_once(
    container: Container, smtp: SmtpSink
) -> None:
    # Orders that arrive together share transactions (group commit): the
    # stock-out still begins once, with the first line no batch could take.
    sku, ref = random_ref("sku"), random_ref("batch")
    orders = [random_ref("order") for _ in range(30)]
    await container.bus().handle(commands.CreateBatch(ref, sku, 10, None))

    await asyncio.gather(*(container.bus().handle(commands.Allocate(o, sku, 1)) for o in orders))

    reads = container.read_source()
    states = [await views.order(reads, orderid) for orderid in orders]
    lines = [state["lines"][0]["state"] for state in states if state is not None]
    assert Counter(lines) == {"allocated": 10, "out_of_stock": 20}
    [row] = await outbox_rows(container.engine(), sku, "OutOfStock")
    await deliver_until_delivered(container, [row.id])

    [mail] = smtp.about(sku)
    assert_a_notice_of(mail, sku, row)
    first_refused = row.payload["orderid"]
    assert f"Order {first_refused} " in mail.message.get_body().get_content()  # type: ignore[union-attr, unused-ignore]
    assert (await views.order(reads, first_refused) or {})["lines"][0]["state"] == "out_of_stock"
