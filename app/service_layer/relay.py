"""The relay: keeps delivering the outbox, whatever stopped delivery before.

One runs in each API process and in the worker; any number may share one
database (see app.service_layer.delivery). It delivers as soon as a commit
of its own process wakes it, and looks every poll interval for the rest:
events of other processes, of a process that died, due again after a
failure. Now and then it prunes delivered events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from app import metrics, outages, tracing
from app.adapters.database_errors import DatabaseUnavailable
from app.service_layer.delivery import Delivery

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelaySettings:
    poll_interval: float = 1.0  # seconds between looks, unless woken
    # Woken by a commit, it waits this long first: under load one pass then
    # delivers the events of many commits, in one transaction.
    gather: float = 0.01
    retention: timedelta = timedelta(days=1)
    prune_every: float = 60.0  # seconds


class Relay:
    def __init__(self, delivery: Delivery, settings: RelaySettings) -> None:
        self._delivery = delivery
        self._settings = settings

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; errors are logged, never fatal.

        A database outage is logged once, when it starts, and once when it
        ends (app.outages).
        """
        # Stopping wakes the relay from its wait between passes.
        watcher = asyncio.create_task(stop.wait())
        watcher.add_done_callback(lambda _: self._delivery.wake())
        try:
            await self._run(stop)
        finally:
            watcher.cancel()

    async def _run(self, stop: asyncio.Event) -> None:
        next_prune = time.monotonic()
        while not stop.is_set():
            claimed = 0
            try:
                with tracing.quiet():  # what it delivers goes on in each event's own trace
                    claimed = await self._delivery.deliver_due()
                    if time.monotonic() >= next_prune:
                        next_prune = time.monotonic() + self._settings.prune_every
                        await self._prune()
            except DatabaseUnavailable as e:
                metrics.RELAY_FAILURES.inc()
                outages.failed("database", str(e))
            except Exception:
                metrics.RELAY_FAILURES.inc()
                logger.exception("relay pass failed; trying again shortly")
            else:
                outages.succeeded("database")
            if claimed < self._delivery.batch_size and await self._delivery.woken(
                within=self._settings.poll_interval
            ):
                await asyncio.sleep(self._settings.gather)

    async def _prune(self) -> None:
        try:
            removed = await self._delivery.prune(self._settings.retention)
        except Exception:
            metrics.PRUNE_FAILURES.inc()
            raise
        if removed:
            logger.info("relay: pruned %d delivered events", removed)
