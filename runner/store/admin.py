"""Changing jobs by hand (retry, cancel), prices, and the model catalogue cache.

Plain functions over a connection, like `queries`; SqlStore wraps each in a transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update

from runner.records import FailureKind, JobState
from runner.store import tables as t
from runner.store.connection import Conn
from runner.store.queries import in_manifest, latest_attempt_id
from runner.store.rows import ids_for


async def move_jobs(
    conn: Conn,
    manifest: str,
    *,
    from_states: Collection[JobState],
    to_state: JobState,
    key: str | None,
    now: datetime,
) -> int:
    """`retry` (failed/cancelled → pending, with a fresh attempt budget) and `cancel`
    (pending/failed → cancelled). Running jobs are never moved: their runner owns them."""
    where = [in_manifest(manifest), t.jobs.c.status.in_([state.value for state in from_states])]
    if key is not None:
        where.append(t.jobs.c.key.startswith(key))
    values: dict[str, Any] = {"status": to_state.value, "updated_at": now}
    if to_state is JobState.PENDING:
        # An unusable table row stays failed: only fixing the row (a new job) helps.
        kind = t.jobs.c.failure_kind
        where.append(or_(kind.is_(None), kind != FailureKind.ROW.value))
        floor = latest_attempt_id()
        # A fresh set of attempts, and the blind re-send limit starts over: the user asked.
        values.update(attempt_floor=floor, retry_floor=floor, finished_at=None, failure_kind=None)
    else:
        values.update(finished_at=now)
    result = await conn.execute(update(t.jobs).where(*where).values(**values))
    return int(result.rowcount)


async def reject_rows(conn: Conn, problems: Mapping[str, str], now: datetime) -> list[str]:
    """Fail these new (pending) jobs of unusable table rows, each with its problem; returns
    the keys it failed (a row failed by an earlier sync is not failed again)."""
    j = t.jobs.c
    failed = []
    for key, problem in problems.items():
        result = await conn.execute(
            update(t.jobs)
            .where(j.key == key, j.status == JobState.PENDING.value)
            .values(
                status=JobState.FAILED.value, failure_kind=FailureKind.ROW.value, error=problem,
                finished_at=now, updated_at=now,
            )
        )  # fmt: skip
        if result.rowcount:
            failed.append(key)
    return failed


async def set_prices(conn: Conn, prices: Mapping[str, str]) -> None:
    """Record the price each pending job will be costed at. Finished jobs keep the one they
    ran at; running ones are another runner's (priced when it started), and touching their
    rows here, while that runner's own transactions lock them, could deadlock."""
    if not prices:
        return
    # Most jobs of a manifest share a price: one UPDATE per price (and per few hundred
    # keys), not one per job.
    by_price: dict[str, list[str]] = {}
    for key, price in prices.items():
        by_price.setdefault(price, []).append(key)
    ids = await ids_for(conn, t.prices, "body", by_price)
    j = t.jobs.c
    for price, keys in by_price.items():
        for start in range(0, len(keys), _KEYS_PER_STATEMENT):
            chunk = keys[start : start + _KEYS_PER_STATEMENT]
            await conn.execute(
                update(t.jobs)
                .where(j.key.in_(chunk), j.status == JobState.PENDING.value)
                .values(price_id=ids[price])
            )


_KEYS_PER_STATEMENT = 500  # well under SQLite's limit on bound parameters


async def load_catalogue(conn: Conn, source_url: str) -> tuple[datetime, str] | None:
    c = t.model_catalogues.c
    row = (
        await conn.execute(select(c.fetched_at, c.body).where(c.source_url == source_url))
    ).first()
    return (row.fetched_at, row.body) if row else None


async def save_catalogue(conn: Conn, source_url: str, body: str, fetched_at: datetime) -> None:
    c = t.model_catalogues.c
    changed = await conn.execute(
        update(t.model_catalogues)
        .where(c.source_url == source_url)
        .values(body=body, fetched_at=fetched_at)
    )
    if not changed.rowcount:
        await conn.execute(
            t.model_catalogues.insert().values(
                source_url=source_url, body=body, fetched_at=fetched_at
            )
        )
