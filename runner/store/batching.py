"""Group commit: writes that queue up while a transaction runs share the next one.

A busy pool makes several small writes per job (claim, attempt, completion). Each on its own
transaction would pay BEGIN/COMMIT and, on SQLite, a turn at the single write lock; under
load those turns, not the SQL, limit throughput. Here the first writer to get the lock runs
every queued write in one transaction; the writers queued behind it find theirs done.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio
from sqlalchemy.ext.asyncio import AsyncConnection

from ..errors import RunnerError

T = TypeVar("T")
Write = Callable[[AsyncConnection], Awaitable[T]]


class WriteFailed(RunnerError):
    """A write shared a transaction with one that failed; nothing of it was kept."""


@dataclass(slots=True)
class _Queued(Generic[T]):
    write: Write[T]
    done: bool = False
    result: T | None = None
    error: BaseException | None = None


class GroupCommit:
    def __init__(self, begin: Callable[[], AbstractAsyncContextManager[AsyncConnection]]) -> None:
        self._begin = begin
        self._lock = anyio.Lock()
        self._queue: list[_Queued[Any]] = []

    async def run(self, write: Write[T]) -> T:
        queued: _Queued[T] = _Queued(write)
        self._queue.append(queued)
        try:
            async with self._lock:
                if not queued.done:
                    await self._run_batch()
        except BaseException:
            if not queued.done and queued in self._queue:
                self._queue.remove(queued)  # cancelled while waiting: never ran
            raise
        if queued.error is not None:
            raise queued.error
        return queued.result  # type: ignore[return-value]

    async def _run_batch(self) -> None:
        batch, self._queue = self._queue, []
        current: _Queued[Any] | None = None
        try:
            async with self._begin() as conn:
                for current in batch:
                    current.result = await current.write(conn)
        except Exception as exc:
            # The write that failed gets its own error; the others learn that theirs was
            # rolled back with it.
            for queued in batch:
                queued.error = (
                    exc
                    if queued is current
                    else WriteFailed(f"database write rolled back with another: {exc!r}")
                )
        except BaseException:
            # Cancelled: nothing was committed. The other writers get back in line for the
            # next holder of the lock (the cancelled one takes itself out in `run`).
            self._queue[:0] = batch
            raise
        for queued in batch:
            queued.done = True
