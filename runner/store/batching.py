"""Group commit: writes that queue up while a transaction runs share the next one.

A busy pool makes several small writes per job (claim, attempt, completion). Each on its own
transaction would pay BEGIN/COMMIT and, on SQLite, a turn at the single write lock; under
load those turns, not the SQL, limit throughput. Here the first waiter to get the lock runs
every queued write in one transaction; the writers queued behind it find theirs done.

`submit` queues a write at once and returns a `Pending` to await later: writes run in the
order they were submitted, so a caller can queue one and carry on, knowing that its next
write cannot overtake it.

With `lock_wait_s` (a SQLite connection on a busy event loop, busy_timeout 0), a write lock
that another connection holds is waited for here, asleep on the loop, rather than inside
SQLite, blocking it: the batch goes back in line and is tried again, sooner at first, until
`lock_wait_s` has gone by. The wait can be cancelled; a transaction once begun cannot.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

import anyio
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from runner.errors import RunnerError, StoreError, WriteFailed
from runner.store.connection import Conn

T = TypeVar("T")
Write = Callable[[Conn], Awaitable[T]]


# How many times a batch the database rolled back by itself is run again.
TRANSIENT_RETRIES = 3
# Waiting for another connection's SQLite write lock, each pause as long as the wait so
# far, between these (a try costs microseconds; SQLite's own busy handler waits up to
# 100 ms between tries).
LOCK_PAUSE_FIRST_S = 0.001
LOCK_PAUSE_MAX_S = 0.025
# PostgreSQL's SQLSTATEs for "try the transaction again": serialization failure, deadlock.
_RETRY_STATES = frozenset({"40001", "40P01"})


def _transient(exc: Exception) -> bool:
    cause = getattr(exc, "orig", None)
    state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    return isinstance(exc, DBAPIError) and state in _RETRY_STATES


def sqlite_locked(exc: Exception) -> bool:
    """SQLite's "database is locked": another connection holds the write lock."""
    cause = getattr(exc, "orig", None)
    return (
        isinstance(cause, sqlite3.OperationalError)
        and getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY
    )


def _translated(exc: Exception) -> Exception:
    """The database's own errors (a full disk, a lost connection) as one StoreError line;
    our own errors pass unchanged."""
    if isinstance(exc, RunnerError) or not isinstance(exc, (SQLAlchemyError, OSError)):
        return exc
    cause = getattr(exc, "orig", None) or exc
    return StoreError(f"database error: {type(cause).__name__}: {cause}")


class Pending(Generic[T]):
    """A submitted write: `await wait()` for its result (running its batch if need be)."""

    def __init__(self, owner: GroupCommit, write: Write[T]) -> None:
        self._owner = owner
        self.write = write
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None

    async def wait(self) -> T:
        try:
            async with self._owner._lock:
                while not self.done:
                    # A batch takes milliseconds; cancelled halfway, its rollback would be
                    # cancelled too and the connection never handed back to the pool. So it
                    # runs to its end and a cancellation lands just after.
                    with anyio.CancelScope(shield=True):
                        pause = await self._owner._run_batch()
                    if pause is not None:  # the database was locked: back in line, asleep
                        await anyio.sleep(pause)
        except BaseException:
            self._owner._withdraw(self)
            raise
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class GroupCommit:
    def __init__(
        self,
        begin: Callable[[], AbstractAsyncContextManager[Conn]],
        lock_wait_s: float | None = None,
    ) -> None:
        self._begin = begin
        self._lock = anyio.Lock()
        self._queue: list[Pending[Any]] = []
        self._lock_wait_s = lock_wait_s
        self._locked_since: float | None = None  # when the current wait for the lock began

    def submit(self, write: Write[T]) -> Pending[T]:
        pending = Pending(self, write)
        self._queue.append(pending)
        return pending

    async def run(self, write: Write[T]) -> T:
        return await self.submit(write).wait()

    def _withdraw(self, pending: Pending[Any]) -> None:
        """A waiter was cancelled before its write ran: it never will."""
        if not pending.done and pending in self._queue:
            self._queue.remove(pending)

    async def _run_batch(self) -> float | None:
        """Run every queued write in one transaction; or, with `lock_wait_s`, put them back
        in line and return how long to sleep when another connection holds the lock."""
        batch, self._queue = self._queue, []
        current: Pending[Any] | None = None
        try:
            for tries_left in range(TRANSIENT_RETRIES, -1, -1):
                try:
                    async with self._begin() as conn:
                        for current in batch:
                            current.result = await current.write(conn)
                    break
                except Exception as exc:
                    if (pause := self._lock_pause(exc)) is not None:
                        self._queue[:0] = batch
                        return pause
                    # The database undid the whole transaction to break a deadlock between
                    # runners (or a serialization conflict): run it again, from the start.
                    if not tries_left or not _transient(exc):
                        raise
                    await anyio.sleep(random.uniform(0.005, 0.05))
        except Exception as exc:
            # The write that failed gets its own error; the others learn that theirs was
            # rolled back with it.
            error = _translated(exc)
            for pending in batch:
                pending.error = (
                    error
                    if pending is current or current is None  # None: before any write ran
                    else WriteFailed(f"rolled back with another write that failed: {error}")
                )
        except BaseException:
            # Interrupted all the same (KeyboardInterrupt): nothing was committed. The other
            # writers get back in line for the next holder of the lock.
            self._queue[:0] = batch
            raise
        self._locked_since = None  # the batch ran (or failed): any wait for the lock is over
        for pending in batch:
            pending.done = True
        return None

    def _lock_pause(self, exc: Exception) -> float | None:
        """How long to sleep before trying again, if `exc` is another connection's lock
        and the wait for it has not run out; else None."""
        if self._lock_wait_s is None or not sqlite_locked(exc):
            return None
        now = time.monotonic()
        if self._locked_since is None:
            self._locked_since = now
        waited = now - self._locked_since
        if waited >= self._lock_wait_s:
            return None
        return min(max(waited, LOCK_PAUSE_FIRST_S), LOCK_PAUSE_MAX_S)
