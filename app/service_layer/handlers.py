"""Handlers: one per command, and the reactions to each event.

A command handler takes its command and a fresh unit of work. An event's
inline handlers take the event and the unit of work whose commit is running
them; its after-commit handlers take the event, and what they reach outside
the database (a publisher, notifications), bound to them in
``after_commit_handlers``. After-commit handlers may see an event more than once
(delivery is at least once).

Which handler each message has, and how each runs, is in the tables at the
bottom of this module.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC
from functools import partial
from operator import attrgetter

from app.adapters.notifications import AbstractNotifications
from app.adapters.publisher import AbstractPublisher
from app.domain import commands, events, model
from app.service_layer import holds, ledger
from app.service_layer.delivery import AfterCommitHandlers
from app.service_layer.messagebus import CommandHandler, Grouping
from app.service_layer.unit_of_work import AbstractUnitOfWork, InlineHandler
from app.wire import HOLD_CHANGED, LINE_ALLOCATED, HoldChangedMessage, LineAllocatedMessage

logger = logging.getLogger(__name__)


class InvalidSku(Exception):
    pass


class UnknownBatch(Exception):
    pass


class Superseded(Exception):
    """A change that came after this one was applied to the batch already."""


class UnknownLine(Exception):
    """The service never accepted a line of this order and sku."""


async def add_batch(cmd: commands.CreateBatch, uow: AbstractUnitOfWork) -> None:
    async with uow:
        # A reference already used under another sku is found and refused by
        # the product that owns it.
        product = await uow.products.get_by_batchref(cmd.ref) or await uow.products.get(cmd.sku)
        if product is None:
            product = model.Product(cmd.sku, batches=[])
            uow.products.add(product)
        product.add_batch(model.Batch(cmd.ref, cmd.sku, cmd.qty, cmd.eta))
        await uow.commit()


async def allocate(cmd: commands.Allocate, uow: AbstractUnitOfWork) -> None:
    line = model.OrderLine(cmd.orderid, cmd.sku, cmd.qty)
    async with uow:
        product = await uow.products.get(line.sku, orderid=line.orderid)
        if product is None:
            raise InvalidSku(f"Invalid sku {line.sku}")
        product.allocate(line)
        await uow.commit()


async def read_allocations(cmds: Sequence[commands.Allocate], uow: AbstractUnitOfWork) -> None:
    """What a group of allocations of one sku reads: its product and each order's line, at once."""
    await uow.products.prefetch(cmds[0].sku, [cmd.orderid for cmd in cmds])


async def change_batch_quantity(cmd: commands.ChangeBatchQuantity, uow: AbstractUnitOfWork) -> None:
    async with uow:
        product = await uow.products.get_by_batchref(cmd.ref)
        if product is None:
            raise UnknownBatch(f"Unknown batch {cmd.ref}")
        if not await uow.products.advance(cmd.ref, cmd.position):
            raise Superseded(f"batch {cmd.ref} has a later change than {cmd.position} already")
        product.change_batch_quantity(cmd.ref, cmd.qty, reason=cmd.reason)
        await uow.commit()


async def change_batch(cmd: commands.ChangeBatch, uow: AbstractUnitOfWork) -> None:
    async with uow:
        product = await uow.products.get_by_batchref(cmd.ref)
        if product is None:
            raise UnknownBatch(f"Unknown batch {cmd.ref}")
        if cmd.qty is not None:
            await uow.products.advance(cmd.ref, None)  # after every change applied so far
        product.change_batch(
            cmd.ref,
            cmd.qty,
            cmd.eta,
            new_eta=cmd.new_eta,
            reason=cmd.reason,
            note=cmd.note,
            expected=cmd.expected,
        )
        await uow.commit()


async def deallocate(cmd: commands.Deallocate, uow: AbstractUnitOfWork) -> None:
    async with uow:
        product = await uow.products.get(cmd.sku, orderid=cmd.orderid)
        if product is None or not product.cancel(cmd.orderid):
            # Not in a batch: out of stock (cancel it), cancelled already (done), or unknown.
            last = await uow.products.last_of_line(cmd.orderid, cmd.sku)
            if product is None or last is None:
                raise UnknownLine(f"Order {cmd.orderid} has no line of {cmd.sku}")
            kind, qty = last
            if kind == "cancelled":
                return
            product.cancel_unplaced(cmd.orderid, qty)
        await uow.commit()


# Inline: run by the unit of work's commit, in its transaction (see
# app.service_layer.unit_of_work). They neither open nor commit it.


async def reallocate(event: events.Deallocated, uow: AbstractUnitOfWork) -> None:
    product = await uow.products.get(event.sku, orderid=event.orderid)
    if product is None:  # pragma: no cover - the product raised the event
        return
    try:
        product.allocate(model.OrderLine(event.orderid, event.sku, event.qty), reallocating=True)
    except model.LineConflict as e:
        # The order was allocated again, differently, since: nothing to redo.
        logger.info("not reallocating: %s", e)


async def add_allocation_to_read_model(event: events.Allocated, uow: AbstractUnitOfWork) -> None:
    read_model, v = uow.read_model, event.version
    await read_model.allocation_changed(event.orderid, event.sku, event.batchref, v)
    await read_model.batch_allocated(event.batchref, event.qty, v)
    await read_model.line_changed(
        event.orderid, event.sku, event.qty, "allocated", event.batchref, v
    )


async def remove_allocation_from_read_model(
    event: events.Deallocated, uow: AbstractUnitOfWork
) -> None:
    read_model, v = uow.read_model, event.version
    await read_model.allocation_changed(event.orderid, event.sku, None, v)
    await read_model.batch_allocated(event.batchref, -event.qty, v)
    await read_model.line_changed(event.orderid, event.sku, event.qty, "out_of_stock", None, v)


async def add_refusal_to_read_model(event: events.LineRefused, uow: AbstractUnitOfWork) -> None:
    await uow.read_model.line_changed(
        event.orderid, event.sku, event.qty, "out_of_stock", None, event.version
    )


async def cancel_line_in_read_model(event: events.LineCancelled, uow: AbstractUnitOfWork) -> None:
    read_model, v = uow.read_model, event.version
    if event.batchref is not None:
        await read_model.allocation_changed(event.orderid, event.sku, None, v)
        await read_model.batch_allocated(event.batchref, -event.qty, v)
    await read_model.line_changed(event.orderid, event.sku, event.qty, "cancelled", None, v)


async def add_batch_to_read_model(event: events.BatchCreated, uow: AbstractUnitOfWork) -> None:
    await uow.read_model.batch_added(event.ref, event.sku, event.eta, event.qty, event.version)


async def resize_batch_in_read_model(
    event: events.BatchQuantityChanged, uow: AbstractUnitOfWork
) -> None:
    await uow.read_model.batch_resized(event.ref, event.qty, event.version)


async def reschedule_batch_in_read_model(
    event: events.BatchEtaChanged, uow: AbstractUnitOfWork
) -> None:
    await uow.read_model.batch_rescheduled(event.ref, event.eta, event.version)


# After the commit: run by app.service_layer.delivery, from the outbox, at
# least once.


async def publish_allocated_event(event: events.Allocated, publisher: AbstractPublisher) -> None:
    message = LineAllocatedMessage(
        orderid=event.orderid,
        sku=event.sku,
        qty=event.qty,
        batchref=event.batchref,
        # Where it stands among its product's events: a consumer keeps the
        # highest (docs/architecture.md).
        version=event.version,
        event_id=event.id,
        request_id=event.request_id,
    )
    # The trace context is the publisher's to add.
    await publisher.publish(LINE_ALLOCATED, message.model_dump(exclude={"traceparent"}))


async def publish_hold_changed_event(
    event: events.HoldChanged, publisher: AbstractPublisher
) -> None:
    message = HoldChangedMessage(
        holdid=event.holdid,
        state=event.state,
        expires_at=event.expires_at.replace(tzinfo=UTC),  # kept as naive UTC
        orderid=event.orderid,
        lines=[{"sku": ln.sku, "qty": ln.qty, "batchref": ln.batchref} for ln in event.lines],
        version=event.hold_version,
        event_id=event.id,
        request_id=event.request_id,
    )
    await publisher.publish(HOLD_CHANGED, message.model_dump(mode="json", exclude={"traceparent"}))


async def send_out_of_stock_notification(
    event: events.OutOfStock, notifications: AbstractNotifications
) -> None:
    await notifications.send_out_of_stock(event.sku, event.orderid, event_id=event.id)


# What runs for each message. The bus (app.service_layer.messagebus) runs a
# command's handler on a fresh unit of work and retries it when it collides.
COMMAND_HANDLERS: Mapping[type[commands.Command], CommandHandler] = {
    commands.CreateBatch: add_batch,
    commands.Allocate: allocate,
    commands.ChangeBatchQuantity: change_batch_quantity,
    commands.ChangeBatch: change_batch,
    commands.Deallocate: deallocate,
    commands.PlaceHold: holds.place_hold,
    commands.ExtendHold: holds.extend_hold,
    commands.ConfirmHold: holds.confirm_hold,
    commands.ReleaseHold: holds.release_hold,
    commands.ExpireHold: holds.expire_hold,
}

# Allocations of one sku that arrive while a transaction on it is in flight
# share the next one (group commit): one lock, one read, one commit for all.
GROUPINGS: Mapping[type[commands.Command], Grouping] = {
    commands.Allocate: Grouping(key=attrgetter("sku"), load=read_allocations),
}

# An event's handlers, each under the name it is known by. Inline: run by
# the commit of the unit of work that raised the event, in its transaction
# (app.service_layer.unit_of_work); they write only this database.
# Every change of a batch's units, and every line refused or cancelled, is
# recorded in the stock ledger too (app.service_layer.ledger).
INLINE_HANDLERS: Mapping[type[events.Event], Mapping[str, InlineHandler]] = {
    events.BatchCreated: {
        "add_batch_to_read_model": add_batch_to_read_model,
        "record_in_ledger": ledger.record,
    },
    events.BatchQuantityChanged: {
        "resize_batch_in_read_model": resize_batch_in_read_model,
        "record_in_ledger": ledger.record,
    },
    events.BatchEtaChanged: {"reschedule_batch_in_read_model": reschedule_batch_in_read_model},
    events.Allocated: {
        "add_allocation_to_read_model": add_allocation_to_read_model,
        "record_in_ledger": ledger.record,
    },
    events.LineRefused: {
        "add_refusal_to_read_model": add_refusal_to_read_model,
        "record_in_ledger": ledger.record,
    },
    events.LineCancelled: {
        "cancel_line_in_read_model": cancel_line_in_read_model,
        "record_in_ledger": ledger.record,
    },
    events.Deallocated: {
        "remove_allocation_from_read_model": remove_allocation_from_read_model,
        "record_in_ledger": ledger.record,
        "reallocate": reallocate,
    },
    events.LineHeld: {
        "hold_in_read_model": holds.hold_in_read_model,
        "record_in_ledger": ledger.record,
    },
    events.LineReleased: {
        "release_in_read_model": holds.release_in_read_model,
        "record_in_ledger": ledger.record,
    },
}


def after_commit_handlers(
    publisher: AbstractPublisher, notifications: AbstractNotifications
) -> AfterCommitHandlers:
    """After the commit: the event is stored in the outbox in the same
    transaction, and delivery (app.service_layer.delivery) runs these from
    there, at least once, retrying with backoff, each given what it reaches
    (app.container binds them). The names are stored with the event: keep a
    name when its function is renamed."""
    return {
        events.Allocated: {
            "publish_allocated_event": partial(publish_allocated_event, publisher=publisher)
        },
        events.HoldChanged: {
            "publish_hold_changed_event": partial(publish_hold_changed_event, publisher=publisher)
        },
        events.OutOfStock: {
            "send_out_of_stock_notification": partial(
                send_out_of_stock_notification, notifications=notifications
            )
        },
    }
