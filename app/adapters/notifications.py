"""Telling people about things: the port and its adapters."""

import abc
import logging
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib

from app import outages
from app.adapters.unavailable import MailUnavailable

logger = logging.getLogger(__name__)


class AbstractNotifications(abc.ABC):
    @abc.abstractmethod
    async def send_out_of_stock(self, sku: str, orderid: str | None, event_id: str) -> None:
        """Tell of ``sku`` running out, first for ``orderid``; one ``event_id``, one notice.

        One notice per stock-out: until stock of the sku is added, the lines
        refused after the first send none. (``orderid`` is None for an event
        stored before notices named the order.)
        """


class EmailNotifications(AbstractNotifications):
    """Mail over SMTP; a connection per message, opened when there is one to send."""

    def __init__(
        self, host: str, port: int, sender: str, recipient: str, timeout: float = 10
    ) -> None:
        self._host = host
        self._port = port
        self._sender = sender
        self._recipient = recipient
        self._timeout = timeout

    async def send_out_of_stock(self, sku: str, orderid: str | None, event_id: str) -> None:
        message = EmailMessage()
        message["From"] = self._sender
        message["To"] = self._recipient
        message["Subject"] = f"Out of stock: {sku}"
        message["Date"] = formatdate(usegmt=True)
        # Sent again after a crash, it is recognisably the same message.
        message["Message-ID"] = f"<{event_id}@allocation.out-of-stock>"
        first = f"Order {orderid}" if orderid else "An order"
        message.set_content(
            f"{first} for {sku} could not be allocated: no batch has enough stock left.\n\n"
            f"Until stock of {sku} is added, orders it cannot take send no further notice.\n"
        )
        try:
            await aiosmtplib.send(
                message, hostname=self._host, port=self._port, timeout=self._timeout
            )
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected, OSError) as e:
            reason = f"{type(e).__name__}: {e}"
            outages.failed("mail", reason)
            raise MailUnavailable(reason) from e
        outages.succeeded("mail")


class LogNotifications(AbstractNotifications):
    """Used while no mail server is configured: the notice goes to the log."""

    async def send_out_of_stock(self, sku: str, orderid: str | None, event_id: str) -> None:
        logger.warning(
            "out of stock: %s, first for order %s (no SMTP_HOST set, so no email is sent)",
            sku,
            orderid or "-",
        )
