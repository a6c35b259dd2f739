"""What the store's SQL runs on: one protocol, two ways to reach a database.

PostgreSQL is reached through SQLAlchemy's asyncio layer on asyncpg: a fleet's runners wait
on the network, and the event loop must go on meanwhile.

SQLite is a file in this process. Through the asyncio layer (aiosqlite) every statement
crossed to aiosqlite's thread and back and through SQLAlchemy's greenlet adapter: measured,
~15 ms of CPU per job for claim, attempt and completion, against ~1 ms for the same SQL
through SQLAlchemy Core on the stdlib `sqlite3` module. The store already runs on an event
loop of its own in a thread of its own (threaded.py), where a statement that blocks holds up
only the store's next statement — which would have waited for the single connection anyway.
So for SQLite the statements run right there: `InlineEngine` gives a synchronous SQLAlchemy
engine the few awaitable verbs the store uses. SQLAlchemy and Alembic stay the schema's one
source; only the driver under them differs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, CursorResult, Engine
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.sql.base import Executable
from sqlalchemy.util.typing import TupleAny

T = TypeVar("T")


class Conn(Protocol):
    """The verbs the store's SQL uses, met by AsyncConnection and InlineConnection."""

    @property
    def dialect(self) -> Dialect: ...

    async def execute(
        self, statement: Executable, parameters: Any = None
    ) -> CursorResult[*TupleAny]: ...

    async def scalar(self, statement: Executable, parameters: Any = None) -> Any: ...

    async def exec_driver_sql(self, statement: str, parameters: Any = None) -> Any: ...

    async def run_sync(self, fn: Callable[[Connection], T]) -> T: ...


class Database(Protocol):
    """An engine as the store uses it: a transaction at a time, and closing."""

    def begin(self) -> AbstractAsyncContextManager[Conn]: ...

    async def dispose(self) -> None: ...


class InlineConnection:
    """A synchronous Connection behind the awaitable verbs of `Conn`; each call runs at once."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    @property
    def dialect(self) -> Dialect:
        return self._connection.dialect

    async def execute(
        self, statement: Executable, parameters: Any = None
    ) -> CursorResult[*TupleAny]:
        return self._connection.execute(statement, parameters)

    async def scalar(self, statement: Executable, parameters: Any = None) -> Any:
        return self._connection.scalar(statement, parameters)

    async def exec_driver_sql(self, statement: str, parameters: Any = None) -> Any:
        return self._connection.exec_driver_sql(statement, parameters)

    async def run_sync(self, fn: Callable[[Connection], T]) -> T:
        return fn(self._connection)


class InlineEngine:
    """A synchronous Engine (SQLite) used from the store's own event loop thread."""

    def __init__(self, engine: Engine) -> None:
        self.sync_engine = engine

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[Conn]:
        with self.sync_engine.begin() as connection:
            yield InlineConnection(connection)

    async def dispose(self) -> None:
        self.sync_engine.dispose()
