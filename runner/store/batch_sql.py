"""Batch mode's verbs over SQLAlchemy: uploads, batches, and one line's answer recorded.

A job moves pending → running (claimed, as for a live request) → submitted (a line of an
open batch) → succeeded | failed | pending (its line's answer, or its batch ended without
one). While it is `submitted` nothing claims it, live or batch: a line is never sent twice.
Each answered line is one row in `attempts` (cost at batch prices), like a live reply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, select, update

from runner.errors import RunnerError
from runner.records import (
    AttemptRecord,
    BatchRecord,
    FailureKind,
    JobSpec,
    JobState,
    OutputRef,
)
from runner.redact import redact
from runner.store import queries
from runner.store import tables as t
from runner.store.batching import GroupCommit
from runner.store.connection import Conn
from runner.store.rows import output_rows, spec_from_row, usage_columns

_CHUNK = 500
_SUBMITTED = JobState.SUBMITTED.value


class SqlBatchStore:
    def __init__(self, db: GroupCommit, clock: Callable[[], datetime]) -> None:
        self._db = db
        self._now = clock

    # -- uploads ------------------------------------------------------------------------
    async def known_uploads(self, provider: str, digests: Sequence[str]) -> dict[str, str]:
        """sha256 -> file id of the inputs already at the provider (and not expiring)."""
        u = t.uploads.c
        now = self._now()

        async def read(conn: Conn) -> dict[str, str]:
            found: dict[str, str] = {}
            for start in range(0, len(digests), _CHUNK):
                rows = await conn.execute(
                    select(u.sha256, u.file_id).where(
                        u.provider == provider,
                        u.sha256.in_(list(digests[start : start + _CHUNK])),
                        (u.expires_at.is_(None)) | (u.expires_at > now),
                    )
                )
                found.update({r.sha256: r.file_id for r in rows})
            return found

        return await self._db.run(read)

    async def save_upload(
        self, provider: str, sha256: str, file_id: str, size: int, expires_at: datetime | None
    ) -> None:
        u = t.uploads

        async def write(conn: Conn) -> None:
            await conn.execute(u.delete().where(u.c.provider == provider, u.c.sha256 == sha256))
            await conn.execute(
                insert(u).values(
                    provider=provider, sha256=sha256, file_id=file_id, size_bytes=size,
                    uploaded_at=self._now(), expires_at=expires_at,
                )
            )  # fmt: skip

        await self._db.run(write)

    async def forget_uploads(self, provider: str, file_ids: Sequence[str]) -> None:
        u = t.uploads.c

        async def write(conn: Conn) -> None:
            await conn.execute(
                t.uploads.delete().where(u.provider == provider, u.file_id.in_(list(file_ids)))
            )

        await self._db.run(write)

    async def all_uploads(self, provider: str) -> list[str]:
        u = t.uploads.c

        async def read(conn: Conn) -> list[str]:
            return list(
                (await conn.execute(select(u.file_id).where(u.provider == provider))).scalars()
            )

        return await self._db.run(read)

    # -- batches ------------------------------------------------------------------------
    async def submit(
        self, batch: BatchRecord, lines: Mapping[str, float | None], owner: str
    ) -> int:
        """Record `batch` (before it is created at the provider) and move its jobs, held by
        `owner`, to submitted. Returns how many jobs moved (a job taken by another runner
        meanwhile stays out of the batch's accounting: its line is ignored when collected)."""
        j = t.jobs.c

        async def write(conn: Conn) -> int:
            await conn.execute(insert(t.batches).values(**_batch_row(batch)))
            keys = list(lines)
            moved = 0
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start : start + _CHUNK]
                moved += (
                    await conn.execute(
                        update(t.jobs)
                        .where(j.key.in_(chunk), j.lease_owner == owner,
                               j.status == JobState.RUNNING.value)
                        .values(status=_SUBMITTED, lease_owner=None, lease_expires_at=None,
                                updated_at=self._now())
                    )
                ).rowcount  # fmt: skip
            rows = [
                {"batch_id": batch.id, "job_key": key, "estimate_usd": estimate}
                for key, estimate in lines.items()
            ]
            if rows:
                await conn.execute(insert(t.batch_lines), rows)
            return moved

        return await self._db.run(write)

    async def update(self, batch_id: str, **values: Any) -> None:
        """The provider's latest word on a batch (status, counts, file ids, times)."""
        allowed = set(t.batches.c.keys()) - {"id", "provider", "manifest", "run_id"}
        unknown = set(values) - allowed
        if unknown:
            raise RunnerError(f"not a batch column: {', '.join(sorted(unknown))}")

        async def write(conn: Conn) -> None:
            await conn.execute(update(t.batches).where(t.batches.c.id == batch_id).values(**values))

        await self._db.run(write)

    async def open_batches(self, manifest: str | None = None) -> list[BatchRecord]:
        """Batches whose lines are not all recorded yet, oldest first."""
        b = t.batches.c
        where: list[Any] = [b.collected_at.is_(None)]
        if manifest is not None:
            where.append(b.manifest == manifest)

        async def read(conn: Conn) -> list[BatchRecord]:
            rows = await conn.execute(select(t.batches).where(*where).order_by(b.created_at, b.id))
            return [_batch_from_row(r) for r in rows]

        return await self._db.run(read)

    async def waiting_lines(self, batch_id: str) -> dict[str, JobSpec]:
        """The jobs of a batch still waiting for their line's answer."""
        line = t.batch_lines.c

        async def read(conn: Conn) -> dict[str, JobSpec]:
            rows = await conn.execute(
                select(t.jobs, queries.output_dir())
                .join(t.batch_lines, line.job_key == t.jobs.c.key)
                .where(line.batch_id == batch_id, line.outcome.is_(None),
                       t.jobs.c.status == _SUBMITTED)
            )  # fmt: skip
            return {r.key: spec_from_row(r) for r in rows}

        return await self._db.run(read)

    async def record_line(
        self,
        batch: BatchRecord,
        spec: JobSpec,
        run_id: str,
        record: AttemptRecord,
        outputs: Sequence[OutputRef] = (),
        *,
        state: JobState,
        reason: str | None = None,
        kind: FailureKind | None = None,
        max_attempts: int | None = None,
    ) -> bool:
        """One line's answer: an attempt (paid if it has usage), the job's new state, its
        outputs. Only the first answer for a line counts (False: a duplicate, ignored). A
        job going back to pending that has used `max_attempts` counted attempts (since the
        last `runner retry`) fails instead: out of attempts, as a live job would."""
        line = t.batch_lines.c
        now = self._now()

        async def write(conn: Conn) -> bool:
            claimed = await conn.execute(
                update(t.batch_lines)
                .where(line.batch_id == batch.id, line.job_key == spec.key, line.outcome.is_(None))
                .values(outcome=record.outcome.value)
            )
            if claimed.rowcount != 1:
                return False
            inserted = await conn.execute(
                insert(t.attempts).values(
                    job_key=spec.key, run_id=run_id, provider=batch.provider, model=spec.model,
                    outcome=record.outcome.value, counted=record.counted,
                    started_at=batch.created_at, finished_at=now,
                    http_status=record.http_status, error_code=redact(record.error_code),
                    error_message=redact(record.error_message),
                    request_id=redact(record.request_id), cost_usd=record.cost_usd,
                    **usage_columns(record),
                )
            )  # fmt: skip
            (attempt_id,) = inserted.inserted_primary_key or (None,)
            final, why, why_kind = state, reason, kind
            if state is JobState.PENDING and max_attempts is not None and record.counted:
                used = await conn.scalar(
                    select(func.count())
                    .select_from(t.attempts)
                    .join(t.jobs, t.jobs.c.key == t.attempts.c.job_key)
                    .where(t.attempts.c.job_key == spec.key, t.attempts.c.counted.is_(True),
                           t.attempts.c.id > t.jobs.c.attempt_floor)
                )  # fmt: skip
                if (used or 0) >= max_attempts:
                    final, why_kind = JobState.FAILED, FailureKind.ATTEMPTS
                    why = f"gave up after {used} batch attempts: {reason}"
            state_now = final
            values: dict[str, Any] = {"status": state_now.value, "updated_at": now}
            if state_now in (JobState.SUCCEEDED, JobState.FAILED):
                values["finished_at"] = now
            if state_now is JobState.FAILED:
                values.update(error=redact(why), failure_kind=why_kind.value if why_kind else None)
            elif state_now is JobState.SUCCEEDED:
                values.update(error=redact(record.error_message), failure_kind=None)
            else:
                values["error"] = redact(why)
            await conn.execute(
                update(t.jobs).where(t.jobs.c.key == spec.key, t.jobs.c.status == _SUBMITTED)
                .values(**values)
            )  # fmt: skip
            if outputs:
                await conn.execute(insert(t.outputs), output_rows(spec.key, attempt_id, outputs))
            return True

        return await self._db.run(write)

    async def close(self, batch_id: str, reason: str, state: JobState = JobState.PENDING) -> int:
        """Every answer of the batch is in: the jobs of lines without one (never run, never
        billed) go to `state` with `reason`, and the batch is done. Returns how many moved."""
        line = t.batch_lines.c
        now = self._now()

        async def write(conn: Conn) -> int:
            waiting = select(line.job_key).where(line.batch_id == batch_id, line.outcome.is_(None))
            ended = {"finished_at": now} if state is not JobState.PENDING else {}
            kind = {"failure_kind": FailureKind.REFUSED.value} if state is JobState.FAILED else {}
            back = await conn.execute(
                update(t.jobs)
                .where(t.jobs.c.key.in_(waiting), t.jobs.c.status == _SUBMITTED)
                .values(status=state.value, error=redact(reason), updated_at=now, **ended, **kind)
            )
            await conn.execute(
                update(t.batch_lines)
                .where(line.batch_id == batch_id, line.outcome.is_(None))
                .values(outcome="not_run")
            )
            await conn.execute(
                update(t.batches).where(t.batches.c.id == batch_id).values(collected_at=now)
            )
            return int(back.rowcount)

        return await self._db.run(write)

    async def open_estimate(self, manifest: str) -> float:
        """What the lines of this manifest's open batches are estimated to cost (batch
        prices): spent money as far as --max-cost is concerned."""
        line = t.batch_lines.c

        async def read(conn: Conn) -> float:
            total = await conn.scalar(
                select(func.coalesce(func.sum(line.estimate_usd), 0.0))
                .select_from(t.batch_lines.join(t.batches, t.batches.c.id == line.batch_id))
                .where(and_(t.batches.c.manifest == manifest, line.outcome.is_(None)))
            )
            return float(total or 0.0)

        return await self._db.run(read)


def _batch_row(batch: BatchRecord) -> dict[str, Any]:
    return asdict(batch)


def _batch_from_row(row: Any) -> BatchRecord:
    return BatchRecord(**{name: getattr(row, name) for name in BatchRecord.__dataclass_fields__})
