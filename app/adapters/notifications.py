"""Telling people about things: the port and its adapters."""

import abc
import logging

logger = logging.getLogger(__name__)


class AbstractNotifications(abc.ABC):
    @abc.abstractmethod
    async def send_out_of_stock(self, sku: str) -> None: ...


class LogNotifications(AbstractNotifications):
    """Used while no mail server is configured: the notice goes to the log."""

    async def send_out_of_stock(self, sku: str) -> None:
        logger.warning("out of stock: %s", sku)
