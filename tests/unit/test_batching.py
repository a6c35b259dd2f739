"""Group commit: a batch the database rolled back by itself (a deadlock between runners, a
serialization conflict) is run again from the start; any other error is not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError

from runner.errors import StoreError
from runner.store.batching import TRANSIENT_RETRIES, GroupCommit


class Orig(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


def failing(sqlstate: str, times: int) -> tuple[GroupCommit, list[str]]:
    """A store whose transactions fail `times` times with `sqlstate`, then commit."""
    log: list[str] = []

    @asynccontextmanager
    async def begin() -> AsyncIterator[Any]:
        log.append("begin")
        yield object()
        if log.count("begin") <= times:
            log.append("rolled back")
            raise DBAPIError("UPDATE jobs ...", {}, Orig(sqlstate))
        log.append("commit")

    return GroupCommit(begin), log


async def write(conn: Any) -> str:
    return "done"


async def test_a_deadlock_victim_batch_is_run_again() -> None:
    commits, log = failing("40P01", times=2)
    assert await commits.run(write) == "done"
    assert log.count("begin") == 3 and log[-1] == "commit"


async def test_it_gives_up_after_a_few_tries() -> None:
    commits, log = failing("40001", times=TRANSIENT_RETRIES + 1)
    with pytest.raises(StoreError, match="40001"):
        await commits.run(write)
    assert log.count("begin") == TRANSIENT_RETRIES + 1


async def test_other_database_errors_are_not_retried() -> None:
    commits, log = failing("23505", times=1)  # a unique violation: retrying cannot help
    with pytest.raises(StoreError):
        await commits.run(write)
    assert log.count("begin") == 1
