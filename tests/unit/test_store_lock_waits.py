"""SQLite on the run's own event loop (store/threaded.py): a job's verbs run there, through
a connection that never blocks the loop. Another connection's write lock (an overlapping
run, a `runner retry`, the store's own thread syncing a manifest) is waited for asleep on
the loop, and the wait can be cancelled and has an end."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

import runner.store.engine
from runner.app.context import Options, open_database
from runner.errors import StoreError
from runner.manifest.digests import DigestEntry
from runner.store.engine import database_url, open_store
from runner.store.sql import SqlStore

ENTRY = DigestEntry("/in/a.png", 10, 5, "ab" * 32)


@contextmanager
def write_lock_held(db: Path, release_after_s: float | None = None) -> Iterator[None]:
    """Another connection holds the database's write lock (BEGIN IMMEDIATE); released
    on leaving, or by a timer thread after `release_after_s`."""
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(release_after_s or 0, holder.rollback)
    if release_after_s is not None:
        timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if holder.in_transaction:
            holder.rollback()
        holder.close()


async def test_a_write_waits_for_the_lock_while_the_loop_runs_on(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    store = await open_store(database_url(str(db), tmp_path), waits_on_loop=True)
    ticks = 0
    done_at_tick: int | None = None

    async def tick() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async def save() -> None:
        nonlocal done_at_tick
        await store.save_digests([ENTRY])
        done_at_tick = ticks

    try:
        # A connection that blocked inside SQLite would stop the loop, and `tick`, for
        # the whole half second.
        with write_lock_held(db, release_after_s=0.5), anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(tick)
                await save()
                tasks.cancel_scope.cancel()
        assert done_at_tick is not None and done_at_tick >= 20  # ~50 ticks while it waited
        assert await store.digests_for([ENTRY.path]) == {ENTRY.path: ENTRY}
    finally:
        await store.close()


async def test_a_lock_held_past_the_wait_is_a_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner.store.engine, "BUSY_TIMEOUT_MS", 300)
    db = tmp_path / "jobs.db"
    store = await open_store(database_url(str(db), tmp_path), waits_on_loop=True)
    try:
        with (
            write_lock_held(db),
            anyio.fail_after(10),
            pytest.raises(StoreError, match="database is locked"),
        ):
            await store.save_digests([ENTRY])
        await store.save_digests([ENTRY])  # released: the next write goes through
        assert await store.digests_for([ENTRY.path]) == {ENTRY.path: ENTRY}
    finally:
        await store.close()


async def test_a_write_waiting_for_the_lock_can_be_cancelled_and_never_lands(
    tmp_path: Path,
) -> None:
    db = tmp_path / "jobs.db"
    store = await open_store(database_url(str(db), tmp_path), waits_on_loop=True)
    try:
        with write_lock_held(db), anyio.fail_after(5):
            with anyio.move_on_after(0.2) as waited:
                await store.save_digests([ENTRY])
            assert waited.cancelled_caught  # a stop in the grace period is not held up
        other = DigestEntry("/in/b.png", 1, 2, "cd" * 32)
        await store.save_digests([other])
        assert await store.digests_for([ENTRY.path, other.path]) == {other.path: other}
    finally:
        await store.close()


async def test_a_jobs_own_verbs_run_on_the_callers_loop_and_the_bulk_ones_on_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: dict[str, int] = {}
    real_holds, real_digests = SqlStore.holds, SqlStore.digests_for

    async def holds(self: SqlStore, key: str, owner: str) -> bool:
        threads["holds"] = threading.get_ident()
        return await real_holds(self, key, owner)

    async def digests_for(self: SqlStore, paths: object) -> object:
        threads["digests_for"] = threading.get_ident()
        return await real_digests(self, paths)  # type: ignore[arg-type]

    monkeypatch.setattr(SqlStore, "holds", holds)
    monkeypatch.setattr(SqlStore, "digests_for", digests_for)
    store = await open_database(database_url(str(tmp_path / "jobs.db"), tmp_path), Options())
    try:
        assert await store.holds("k" * 64, "r") is False
        await store.digests_for(["/in/a.png"])
    finally:
        await store.close()

    assert threads["holds"] == threading.get_ident()  # no hop, no GIL taken in turns
    assert threads["digests_for"] != threading.get_ident()  # out of the uploads' way
