"""The unit of work: one atomic change, and the events it raised.

A unit of work is used for exactly one handled message: the message bus
builds a fresh one from a factory for every message, and for every retry.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.adapters.database import is_retryable
from app.adapters.projections import AbstractReadModel, SqlAlchemyReadModel
from app.adapters.repository import AbstractRepository, SqlAlchemyRepository
from app.domain import events


class ConcurrencyError(Exception):
    """A concurrent write got in the way; running the message again may succeed."""


class AbstractUnitOfWork(abc.ABC):
    products: AbstractRepository
    read_model: AbstractReadModel

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.rollback()

    @abc.abstractmethod
    async def commit(self) -> None: ...

    @abc.abstractmethod
    async def rollback(self) -> None: ...

    def collect_new_events(self) -> Iterator[events.Event]:
        for product in self.products.seen:
            while product.events:
                yield product.events.pop(0)


class SqlAlchemyUnitOfWork(AbstractUnitOfWork):
    """Single use: one session, one transaction, closed on leaving."""

    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        # Creating a session opens no connection; the first query does.
        self.session = session_factory()
        self.products = SqlAlchemyRepository(self.session)
        self.read_model = SqlAlchemyReadModel(self.session)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await super().__aexit__(exc_type, exc, tb)
        finally:
            await self.session.close()
        if exc is not None and is_retryable(exc):
            raise ConcurrencyError(str(exc)) from exc

    async def commit(self) -> None:
        await self.session.commit()

    async def rollback(self) -> None:
        await self.session.rollback()
