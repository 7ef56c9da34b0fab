"""Holds: stock kept for a checkout, every line or none, until it is confirmed, released or
expires. The handlers of their commands, and the reactions to their events.

A hold is a Hold (its state and deadline) and, for each line, what its sku's
Product keeps for it (``Product.hold``). A command locks the hold first, then
the products of its lines in sku order, as every command on several products
does; a batch's change, which locks its product first, takes the lock of a
hold that loses its units without waiting (a collision, retried, if it is
taken): two never wait on each other in a circle. The deadline is in the
database: ``expire_due`` (run in the background of every process, app.bootstrap)
finds the holds whose time has passed and expires each, whichever process
placed it, whatever died since.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta

from app import clock, tracing
from app.domain import commands, events, model
from app.service_layer.unit_of_work import AbstractUnitOfWork

logger = logging.getLogger(__name__)


class UnknownHold(Exception):
    pass


class HoldShort(Exception):
    """Some line cannot be held in full: nothing is held."""

    def __init__(self, holdid: str, short: list[str]) -> None:
        super().__init__(f"Hold {holdid}: not enough stock of {', '.join(short)}")
        self.members = {"short": short}


class HoldMismatch(Exception):
    """The hold exists with other lines."""


async def place_hold(cmd: commands.PlaceHold, uow: AbstractUnitOfWork) -> None:
    async with uow:
        hold = await uow.holds.get(cmd.holdid)
        if hold is not None:
            if hold.asks() != set(cmd.lines):
                raise HoldMismatch(f"Hold {cmd.holdid} exists with other lines")
            return  # the same hold, asked for again
        products = {}
        for sku, _ in sorted(cmd.lines):
            product = await uow.products.get(sku, holdid=cmd.holdid)
            if product is None:
                # (handlers imports this module for its tables: import it when needed)
                from app.service_layer.handlers import InvalidSku

                raise InvalidSku(f"Invalid sku {sku}")
            products[sku] = product
        lines = sorted(cmd.lines)
        short = [sku for sku, qty in lines if not products[sku].can_hold(cmd.holdid, qty)]
        if short:
            raise HoldShort(cmd.holdid, short)
        held = [model.HoldLine(sku, qty, products[sku].hold(cmd.holdid, qty)) for sku, qty in lines]
        expires_at = clock.now() + timedelta(seconds=cmd.ttl_s)
        uow.holds.add(model.Hold.placed(cmd.holdid, held, expires_at))
        await uow.commit()


async def extend_hold(cmd: commands.ExtendHold, uow: AbstractUnitOfWork) -> None:
    async with uow:
        hold = await _held(uow, cmd.holdid)
        hold.extend(clock.now() + timedelta(seconds=cmd.ttl_s))
        await uow.commit()


async def confirm_hold(cmd: commands.ConfirmHold, uow: AbstractUnitOfWork) -> None:
    async with uow:
        hold = await _held(uow, cmd.holdid, confirmed_for=cmd.orderid)
        if hold.state == "confirmed":
            return  # for this order already
        for line in hold.lines:
            product = await _product(uow, line.sku, hold.holdid, orderid=cmd.orderid)
            product.confirm(hold.holdid, cmd.orderid, line.qty)
        hold.end("confirmed", cmd.orderid)
        await uow.commit()


async def release_hold(cmd: commands.ReleaseHold, uow: AbstractUnitOfWork) -> None:
    async with uow:
        hold = await uow.holds.get(cmd.holdid)
        if hold is None:
            raise UnknownHold(f"No hold {cmd.holdid}")
        if hold.state != "held":
            return  # ended already: nothing is kept
        await _free(uow, hold, "released")
        await uow.commit()


async def expire_hold(cmd: commands.ExpireHold, uow: AbstractUnitOfWork) -> None:
    async with uow:
        # A hold another transaction has locked is being changed, or expired by another
        # process: it is not this one's to wait for.
        hold = await uow.holds.get(cmd.holdid, busy="skip")
        if hold is None or not hold.due(clock.now()):
            return  # ended or extended since it was found due, or busy
        await _free(uow, hold, "expired")
        await uow.commit()


async def _held(
    uow: AbstractUnitOfWork, holdid: str, confirmed_for: str | None = None
) -> model.Hold:
    """The hold, if it is held still (or confirmed for ``confirmed_for``); a hold whose time
    has passed is expired here and now, and that is committed, whatever the caller does."""
    hold = await uow.holds.get(holdid)
    if hold is None:
        raise UnknownHold(f"No hold {holdid}")
    if hold.due(clock.now()):
        await _free(uow, hold, "expired")
        await uow.commit()
    if hold.state == "confirmed" and hold.orderid == confirmed_for:
        return hold
    if hold.state != "held":
        confirmed = f" for order {hold.orderid}" if hold.state == "confirmed" else ""
        raise model.HoldEnded(f"Hold {holdid} is {hold.state}{confirmed}")
    return hold


async def _free(uow: AbstractUnitOfWork, hold: model.Hold, state: str) -> None:
    for line in hold.lines:
        product = await _product(uow, line.sku, hold.holdid)
        product.release(hold.holdid, state)
    hold.end(state)


async def _product(
    uow: AbstractUnitOfWork, sku: str, holdid: str, orderid: str | None = None
) -> model.Product:
    product = await uow.products.get(sku, orderid=orderid, holdid=holdid)
    assert product is not None, sku  # a hold's skus have products
    return product


# Inline, in the transaction of the change (app.service_layer.handlers' tables).


async def hold_in_read_model(event: events.LineHeld, uow: AbstractUnitOfWork) -> None:
    await uow.read_model.batch_held(event.batchref, event.qty, event.version)


async def release_in_read_model(event: events.LineReleased, uow: AbstractUnitOfWork) -> None:
    await uow.read_model.batch_held(event.batchref, -event.qty, event.version)
    if event.why == "lost":
        # The product is locked already: the hold's lock is taken without waiting.
        hold = await uow.holds.get(event.holdid, busy="fail")
        if hold is not None:
            hold.lost(event.sku)


# The deadline loop.

DUE_AT_ONCE = 500  # holds expired per look, at most
AT_A_TIME = 8  # expired side by side: one waiting on a busy product holds up no other


async def expire_due(
    uow: Callable[[], AbstractUnitOfWork],
    expire: Callable[[commands.Command], Awaitable[None]],
    stop: asyncio.Event,
    interval: float = 0.2,
) -> None:
    """Until ``stop``: every ``interval`` seconds, expire each hold whose time has passed.

    ``expire`` handles an ExpireHold (the message bus's ``handle``). A failure is
    logged and looked at again at the next turn: the deadline stays in the database.
    """
    while not stop.is_set():
        due: list[str] = []
        try:
            with tracing.quiet():  # an idle look is no work to trace
                async with uow() as looking:
                    due = await looking.holds.due(clock.now(), DUE_AT_ONCE)
            random.shuffle(due)  # other processes look too: each starts somewhere else
            for n in range(0, len(due), AT_A_TIME):
                batch = due[n : n + AT_A_TIME]
                await asyncio.gather(*(expire(commands.ExpireHold(h)) for h in batch))
        except Exception as e:
            logger.warning("expiring holds failed, trying again: %s", e)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
