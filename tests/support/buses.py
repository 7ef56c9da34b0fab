"""The message bus as app.container wires it, on the fakes: handlers run for real."""

from dataclasses import dataclass

from dependency_injector import providers

from app.backoff import Backoff
from app.container import Container
from app.domain import commands
from app.service_layer.delivery import Delivery, UnitOfWorkFactory
from app.service_layer.handlers import INLINE_HANDLERS
from app.service_layer.messagebus import MessageBus, RetryPolicy
from tests.support.fakes import FakeNotifications, FakePublisher, FakeStore, FakeUnitOfWork

FAST_RETRY = RetryPolicy(attempts=3, backoff=Backoff(0.0001, 0.001, jitter=True))


@dataclass
class Service:
    """The bus as app.container wires it, on fakes, and the delivery after each command."""

    bus: MessageBus
    delivery: Delivery

    async def handle(self, command: commands.Command) -> None:
        await self.bus.handle(command)
        await self.delivery.deliver_due()


def bootstrap_test_bus(
    store: FakeStore,
    notifications: FakeNotifications,
    uow_factory: UnitOfWorkFactory | None = None,
    publisher: FakePublisher | None = None,
) -> Service:
    container = Container()
    container.notifications.override(providers.Object(notifications))
    container.publisher.override(providers.Object(publisher or FakePublisher()))
    container.retry.override(providers.Object(FAST_RETRY))
    container.uow.override(
        providers.Callable(uow_factory)
        if uow_factory is not None
        else providers.Factory(
            FakeUnitOfWork,
            store,
            inline=INLINE_HANDLERS,
            after_commit=container.after_commit_handlers,
        )
    )
    return Service(container.bus(), container.delivery())
