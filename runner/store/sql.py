"""SqlStore: the Store protocol over SQLAlchemy 2 async — the jobs' life cycle.

The runner's SQL lives in this package only: here the writes, in `queries` the reports,
in `engine` the connection set-up and migrations.

On SQLite, writers inside one process queue on an anyio lock instead of SQLite's busy
handler, whose sleeps (up to 100 ms each) would throttle a busy pool; between processes
the busy timeout (see `engine`) does the waiting.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..digests import DigestEntry
from ..errors import RunnerError
from ..models import (
    AttemptRecord,
    ExportRow,
    Job,
    JobSpec,
    JobState,
    Outcome,
    OutputRef,
    Summary,
)
from . import queries
from . import tables as t
from .base import RunInfo

_CHUNK = 500  # keys per IN (...) list, under SQLite's bound-parameter limit


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _spec_row(spec: JobSpec) -> dict[str, Any]:
    return {
        "image_path": str(spec.image),
        "mask_path": str(spec.mask) if spec.mask else None,
        "image_sha256": spec.image_sha256,
        "mask_sha256": spec.mask_sha256,
        "output_dir": str(spec.output_dir),
        "output_name": spec.output_name,
        "manifest_entry": spec.entry,
    }


def _spec_from_row(row: Any) -> JobSpec:
    return JobSpec(
        key=row.key,
        entry=row.manifest_entry,
        image=Path(row.image_path),
        mask=Path(row.mask_path) if row.mask_path else None,
        prompt=row.prompt,
        provider=row.provider,
        model=row.model,
        params=json.loads(row.params_json),
        output_dir=Path(row.output_dir),
        output_name=row.output_name,
        image_sha256=row.image_sha256,
        mask_sha256=row.mask_sha256,
    )


def _usage_columns(record: AttemptRecord) -> dict[str, Any]:
    usage = record.usage
    if usage is None:
        return {}
    return {
        "input_tokens": usage.input_tokens,
        "input_image_tokens": usage.input_image_tokens,
        "input_text_tokens": usage.input_text_tokens,
        "output_tokens": usage.output_tokens,
        "output_image_tokens": usage.output_image_tokens,
        "total_tokens": usage.total_tokens,
        "usage_json": usage.raw,
    }


class SqlStore:
    def __init__(
        self, engine: AsyncEngine, clock: Callable[[], datetime], *, serialize: bool
    ) -> None:
        self._engine = engine
        self._now = clock
        self._lock = anyio.Lock() if serialize else None

    async def close(self) -> None:
        await self._engine.dispose()

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        if self._lock is None:
            async with self._engine.begin() as conn:
                yield conn
            return
        async with self._lock, self._engine.begin() as conn:
            yield conn

    # -- the manifest's jobs ------------------------------------------------------------
    async def sync_manifest(self, manifest: str, specs: Sequence[JobSpec]) -> int:
        now = self._now()
        async with self._tx() as conn:
            known: set[str] = set()
            for chunk in _chunks([s.key for s in specs]):
                rows = await conn.execute(select(t.jobs.c.key).where(t.jobs.c.key.in_(chunk)))
                known.update(rows.scalars())
            new = [s for s in specs if s.key not in known]
            if new:
                await conn.execute(insert(t.jobs), [self._new_job_row(s, now) for s in new])
            refreshed = [
                {"k": s.key, **_spec_row(s), "updated_at": now} for s in specs if s.key in known
            ]
            if refreshed:
                stmt = update(t.jobs).where(t.jobs.c.key == bindparam("k"))
                await conn.execute(stmt, refreshed)
            await conn.execute(
                delete(t.manifest_jobs).where(t.manifest_jobs.c.manifest == manifest)
            )
            if specs:
                await conn.execute(
                    insert(t.manifest_jobs),
                    [
                        {"manifest": manifest, "job_key": s.key, "position": i}
                        for i, s in enumerate(specs)
                    ],
                )
        return len(new)

    @staticmethod
    def _new_job_row(spec: JobSpec, now: datetime) -> dict[str, Any]:
        return {
            "key": spec.key,
            "status": JobState.PENDING.value,
            "prompt": spec.prompt,
            "provider": spec.provider,
            "model": spec.model,
            "params_json": json.dumps(dict(spec.params), sort_keys=True),
            "attempts": 0,
            "attempt_base": 0,
            "created_at": now,
            "updated_at": now,
            **_spec_row(spec),
        }

    async def retry_failed(self, manifest: str, key: str | None = None) -> int:
        where = [queries.in_manifest(manifest), t.jobs.c.status == JobState.FAILED.value]
        if key is not None:
            where.append(t.jobs.c.key.startswith(key))
        async with self._tx() as conn:
            result = await conn.execute(
                update(t.jobs)
                .where(*where)
                .values(
                    status=JobState.PENDING.value,
                    attempt_base=t.jobs.c.attempts,
                    finished_at=None,
                    updated_at=self._now(),
                )
            )
        return int(result.rowcount)

    # -- runs and leases ----------------------------------------------------------------
    async def start_run(self, run: RunInfo) -> None:
        now = self._now()
        async with self._tx() as conn:
            await conn.execute(
                insert(t.runs).values(
                    id=run.id,
                    manifest=run.manifest,
                    host=run.host,
                    pid=run.pid,
                    process_tag=run.process_tag,
                    started_at=now,
                    heartbeat_at=now,
                )
            )

    async def end_run(self, run_id: str, exit_code: int, stop_reason: str | None) -> None:
        """Close the run; anything it still holds (it was interrupted) goes back to pending."""
        async with self._tx() as conn:
            await self._release_runs(conn, [run_id])
            await conn.execute(
                update(t.runs)
                .where(t.runs.c.id == run_id)
                .values(ended_at=self._now(), exit_code=exit_code, stop_reason=stop_reason)
            )

    async def unfinished_runs(self, host: str) -> Sequence[RunInfo]:
        async with self._tx() as conn:
            rows = await conn.execute(
                select(t.runs).where(t.runs.c.host == host, t.runs.c.ended_at.is_(None))
            )
            return [RunInfo(r.id, r.manifest, r.host, r.pid, r.process_tag) for r in rows]

    async def reclaim_dead_runs(self, dead_run_ids: Iterable[str]) -> int:
        ids = list(dead_run_ids)
        if not ids:
            return 0
        async with self._tx() as conn:
            released = await self._release_runs(conn, ids)
            await conn.execute(
                update(t.runs)
                .where(t.runs.c.id.in_(ids))
                .values(ended_at=self._now(), stop_reason="the process died without finishing")
            )
        return released

    async def _release_runs(self, conn: AsyncConnection, ids: Sequence[str]) -> int:
        """Jobs these runs hold go back to pending; their unanswered attempts are abandoned."""
        now = self._now()
        released = await conn.execute(
            update(t.jobs)
            .where(t.jobs.c.lease_owner.in_(ids), t.jobs.c.status == JobState.RUNNING.value)
            .values(
                status=JobState.PENDING.value,
                lease_owner=None,
                lease_expires_at=None,
                updated_at=now,
            )
        )
        await conn.execute(
            update(t.attempts)
            .where(t.attempts.c.run_id.in_(ids), t.attempts.c.outcome == Outcome.IN_FLIGHT)
            .values(outcome=Outcome.ABANDONED.value, finished_at=now)
        )
        return int(released.rowcount)

    async def claim(
        self, manifest: str, provider: str, owner: str, lease_until: datetime
    ) -> Job | None:
        now = self._now()
        claimable = (
            select(t.jobs.c.key)
            .join(t.manifest_jobs, t.manifest_jobs.c.job_key == t.jobs.c.key)
            .where(
                t.manifest_jobs.c.manifest == manifest,
                t.jobs.c.provider == provider,
                self._claimable(now),
            )
            .order_by(t.manifest_jobs.c.position)
            .limit(1)
            # PostgreSQL: concurrent claimers skip each other's rows; SQLite ignores this and
            # relies on BEGIN IMMEDIATE, which lets one writer in at a time.
            .with_for_update(skip_locked=True, of=t.jobs)
            .scalar_subquery()
        )
        async with self._tx() as conn:
            row = (
                await conn.execute(
                    update(t.jobs)
                    .where(t.jobs.c.key == claimable, self._claimable(now))
                    .values(
                        status=JobState.RUNNING.value,
                        lease_owner=owner,
                        lease_expires_at=lease_until,
                        updated_at=now,
                    )
                    .returning(t.jobs)
                )
            ).first()
            if row is None:
                return None
            # Whoever held it before is gone: their unanswered attempt will never be answered.
            await conn.execute(
                update(t.attempts)
                .where(t.attempts.c.job_key == row.key, t.attempts.c.outcome == Outcome.IN_FLIGHT)
                .values(outcome=Outcome.ABANDONED.value, finished_at=now)
            )
        return Job(_spec_from_row(row), row.attempts, row.attempts - row.attempt_base)

    @staticmethod
    def _claimable(now: datetime) -> Any:
        return or_(
            t.jobs.c.status == JobState.PENDING.value,
            and_(t.jobs.c.status == JobState.RUNNING.value, t.jobs.c.lease_expires_at < now),
        )

    async def renew_leases(self, owner: str, lease_until: datetime) -> None:
        async with self._tx() as conn:
            await conn.execute(
                update(t.jobs)
                .where(t.jobs.c.lease_owner == owner, t.jobs.c.status == JobState.RUNNING.value)
                .values(lease_expires_at=lease_until)
            )
            await conn.execute(
                update(t.runs).where(t.runs.c.id == owner).values(heartbeat_at=self._now())
            )

    async def held_elsewhere(self, manifest: str, provider: str, owner: str) -> int:
        async with self._tx() as conn:
            count = await conn.scalar(
                select(func.count())
                .select_from(t.jobs)
                .where(
                    queries.in_manifest(manifest),
                    t.jobs.c.provider == provider,
                    t.jobs.c.status == JobState.RUNNING.value,
                    t.jobs.c.lease_owner != owner,
                )
            )
        return int(count or 0)

    # -- one job's life -----------------------------------------------------------------
    async def begin_attempt(self, key: str, owner: str, provider: str, model: str) -> int:
        async with self._tx() as conn:
            result = await conn.execute(
                insert(t.attempts).values(
                    job_key=key,
                    run_id=owner,
                    provider=provider,
                    model=model,
                    outcome=Outcome.IN_FLIGHT.value,
                    counted=True,
                    started_at=self._now(),
                )
            )
            await conn.execute(
                update(t.jobs).where(t.jobs.c.key == key).values(attempts=t.jobs.c.attempts + 1)
            )
            (attempt_id,) = result.inserted_primary_key or (None,)
        if attempt_id is None:
            raise RunnerError("the database returned no id for a new attempt")
        return int(attempt_id)

    async def finish_attempt(self, attempt_id: int, record: AttemptRecord) -> None:
        async with self._tx() as conn:
            await self._finish_attempt(conn, attempt_id, record)

    async def _finish_attempt(
        self, conn: AsyncConnection, attempt_id: int, record: AttemptRecord
    ) -> None:
        key = await conn.scalar(
            update(t.attempts)
            .where(t.attempts.c.id == attempt_id)
            .values(
                outcome=record.outcome.value,
                counted=record.counted,
                finished_at=self._now(),
                latency_ms=record.latency_ms,
                http_status=record.http_status,
                error_code=record.error_code,
                error_message=record.error_message,
                request_id=record.request_id,
                cost_usd=record.cost_usd,
                **_usage_columns(record),
            )
            .returning(t.attempts.c.job_key)
        )
        if not record.counted:
            await conn.execute(
                update(t.jobs).where(t.jobs.c.key == key).values(attempts=t.jobs.c.attempts - 1)
            )

    async def complete(
        self,
        key: str,
        owner: str,
        attempt_id: int,
        record: AttemptRecord,
        outputs: Sequence[OutputRef],
    ) -> None:
        now = self._now()
        async with self._tx() as conn:
            await self._finish_attempt(conn, attempt_id, record)
            await conn.execute(
                insert(t.outputs),
                [
                    {
                        "job_key": key,
                        "attempt_id": attempt_id,
                        "image_index": out.index,
                        "path": str(out.path),
                        "sha256": out.sha256,
                        "size_bytes": out.size,
                        "width": out.width,
                        "height": out.height,
                        "format": out.format,
                    }
                    for out in outputs
                ],
            )
            # A success is a success even if our lease lapsed and another runner took the
            # job meanwhile: the images are on disk and paid for.
            await conn.execute(
                update(t.jobs)
                .where(t.jobs.c.key == key, t.jobs.c.status != JobState.SUCCEEDED.value)
                .values(
                    status=JobState.SUCCEEDED.value,
                    error=None,
                    lease_owner=None,
                    lease_expires_at=None,
                    finished_at=now,
                    updated_at=now,
                )
            )

    async def fail(self, key: str, owner: str, reason: str) -> None:
        now = self._now()
        await self._settle(key, owner, status=JobState.FAILED, error=reason, finished_at=now)

    async def release(self, key: str, owner: str, *, fresh_attempts: bool = False) -> None:
        extra = {"attempt_base": t.jobs.c.attempts} if fresh_attempts else {}
        await self._settle(key, owner, status=JobState.PENDING, **extra)

    async def _settle(self, key: str, owner: str, status: JobState, **values: Any) -> None:
        """End our hold on a job; a job another runner has since taken is left alone."""
        async with self._tx() as conn:
            await conn.execute(
                update(t.jobs)
                .where(
                    t.jobs.c.key == key,
                    t.jobs.c.lease_owner == owner,
                    t.jobs.c.status == JobState.RUNNING.value,
                )
                .values(
                    status=status.value,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=self._now(),
                    **values,
                )
            )

    # -- reading ------------------------------------------------------------------------
    async def summary(self, manifest: str) -> Summary:
        async with self._tx() as conn:
            return await queries.summary(conn, manifest)

    async def export_rows(self, manifest: str) -> Sequence[ExportRow]:
        async with self._tx() as conn:
            return await queries.export_rows(conn, manifest)

    async def job_states(self, manifest: str) -> Mapping[str, str]:
        async with self._tx() as conn:
            return await queries.job_states(conn, manifest)

    # -- input digest cache -------------------------------------------------------------
    async def load_digests(self) -> Mapping[str, DigestEntry]:
        async with self._tx() as conn:
            rows = await conn.execute(select(t.file_digests))
            return {r.path: DigestEntry(r.path, r.size_bytes, r.mtime_ns, r.sha256) for r in rows}

    async def save_digests(self, entries: Sequence[DigestEntry]) -> None:
        if not entries:
            return
        paths = [e.path for e in entries]
        async with self._tx() as conn:
            for chunk in _chunks(paths):
                await conn.execute(delete(t.file_digests).where(t.file_digests.c.path.in_(chunk)))
            await conn.execute(
                insert(t.file_digests),
                [
                    {
                        "path": e.path,
                        "size_bytes": e.size,
                        "mtime_ns": e.mtime_ns,
                        "sha256": e.sha256,
                    }
                    for e in {e.path: e for e in entries}.values()
                ],
            )
