"""Handlers: one per command, and the reactions to each event.

Every handler takes its message and a fresh unit of work; anything else it
needs is bound in app.container. Event handlers may run more than once for
one event (delivery is at least once), so each is idempotent.
"""

from __future__ import annotations

import logging

from app.adapters.notifications import AbstractNotifications
from app.adapters.publisher import AbstractPublisher
from app.domain import commands, events, model
from app.service_layer.unit_of_work import AbstractUnitOfWork

logger = logging.getLogger(__name__)


class InvalidSku(Exception):
    pass


class UnknownBatch(Exception):
    pass


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


async def change_batch_quantity(cmd: commands.ChangeBatchQuantity, uow: AbstractUnitOfWork) -> None:
    async with uow:
        product = await uow.products.get_by_batchref(cmd.ref)
        if product is None:
            raise UnknownBatch(f"Unknown batch {cmd.ref}")
        product.change_batch_quantity(cmd.ref, cmd.qty)
        await uow.commit()


async def reallocate(event: events.Deallocated, uow: AbstractUnitOfWork) -> None:
    try:
        await allocate(commands.Allocate(event.orderid, event.sku, event.qty), uow)
    except model.LineConflict as e:
        # The order was allocated again, differently, since: nothing to redo.
        logger.info("not reallocating: %s", e)


async def add_allocation_to_read_model(event: events.Allocated, uow: AbstractUnitOfWork) -> None:
    async with uow:
        await uow.read_model.allocation_refreshed(event.orderid, event.sku)
        await uow.read_model.batch_refreshed(event.batchref)
        await uow.commit()


async def remove_allocation_from_read_model(
    event: events.Deallocated, uow: AbstractUnitOfWork
) -> None:
    async with uow:
        await uow.read_model.allocation_refreshed(event.orderid, event.sku)
        await uow.read_model.batch_refreshed(event.batchref)
        await uow.commit()


async def update_batch_read_model(
    event: events.BatchCreated | events.BatchQuantityChanged, uow: AbstractUnitOfWork
) -> None:
    async with uow:
        await uow.read_model.batch_refreshed(event.ref)
        await uow.commit()


async def publish_allocated_event(
    event: events.Allocated, uow: AbstractUnitOfWork, publisher: AbstractPublisher
) -> None:
    await publisher.publish(
        "line_allocated",
        {
            "orderid": event.orderid,
            "sku": event.sku,
            "qty": event.qty,
            "batchref": event.batchref,
            "event_id": event.id,
            "request_id": event.request_id,
        },
    )


async def send_out_of_stock_notification(
    event: events.OutOfStock,
    uow: AbstractUnitOfWork,
    notifications: AbstractNotifications,
) -> None:
    await notifications.send_out_of_stock(event.sku)
