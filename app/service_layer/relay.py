"""The relay: delivers what the outbox still holds, whatever stopped it before.

Several relays (one per API process and worker) may run against one
database: each claims a few due events at a time, for a lease, and no other
relay takes them until the lease runs out. A process that dies holding
events loses nothing: when its lease ends another relay claims them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from app import metrics
from app.adapters.outbox import utcnow
from app.service_layer.messagebus import MessageBus, UnitOfWorkFactory
from app.service_layer.unit_of_work import DatabaseUnavailable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelaySettings:
    batch_size: int = 100
    poll_interval: float = 1.0  # seconds between looks at an empty outbox
    lease: timedelta = timedelta(seconds=30)
    retention: timedelta = timedelta(days=1)
    prune_every: timedelta = timedelta(minutes=10)


class Relay:
    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        bus_factory: Callable[[], MessageBus],
        settings: RelaySettings,
    ) -> None:
        self._uow_factory = uow_factory
        self._bus_factory = bus_factory
        self._settings = settings
        self.failures = 0  # deliveries that failed, since start

    async def run_once(self) -> int:
        """Claim and deliver one batch of due events; returns how many were delivered."""
        async with self._uow_factory() as uow:
            pending = await uow.outbox.claim(self._settings.batch_size, self._settings.lease)
            await uow.commit()
        bus = self._bus_factory()
        # Past half the lease, hand the rest back rather than risk another
        # relay taking them while this one is still at work.
        deadline = bus.deadline()
        for done, item in enumerate(pending):
            if deadline is not None and time.monotonic() > deadline:
                await self._release([i.event.id for i in pending[done:]])
                return done
            if not await bus.redeliver(item.event, item.attempts, item.handled, deadline):
                self.failures += 1
                metrics.RELAY_FAILURES.inc()
        return len(pending)

    async def _release(self, event_ids: list[str]) -> None:
        async with self._uow_factory() as uow:
            await uow.outbox.release(event_ids)
            await uow.commit()

    async def prune(self) -> int:
        async with self._uow_factory() as uow:
            removed = await uow.outbox.prune(before=utcnow() - self._settings.retention)
            await uow.commit()
        return removed

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; errors are logged, never fatal.

        A database outage is logged once, when it starts, and once when it ends.
        """
        next_prune = utcnow()
        database_down = False
        while not stop.is_set():
            delivered = 0
            try:
                delivered = await self.run_once()
                if utcnow() >= next_prune:
                    await self.prune()
                    next_prune = utcnow() + self._settings.prune_every
            except DatabaseUnavailable as e:
                metrics.RELAY_FAILURES.inc()
                if not database_down:
                    logger.warning(
                        "relay: the database is unavailable (%s); trying again every %gs",
                        e,
                        self._settings.poll_interval,
                    )
                database_down = True
            except Exception:
                metrics.RELAY_FAILURES.inc()
                logger.exception("relay pass failed; trying again shortly")
            else:
                if database_down:
                    logger.info("relay: the database is back; delivering again")
                database_down = False
            if delivered < self._settings.batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._settings.poll_interval)
