"""SqlStore: the Store protocol over SQLAlchemy 2 async — the jobs' life cycle.

The runner's SQL lives in this package only: here the writes, in `queries` the reports,
in `engine` the connection set-up and migrations, in `batching` the group commit that
every write goes through.

Kept lean on purpose: a job costs a share of one statement to claim (claims come in small
batches), one to start an attempt and three to finish it. Attempt counts are not stored;
they are counted from `attempts`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)

from runner.errors import (
    LeaseLost,
    ProviderBusy,
    ProviderPaced,
    RunnerError,
    StopNotice,
    StoppedElsewhere,
)
from runner.manifest.digests import DigestEntry
from runner.records import (
    DIED,
    SILENT_AFTER_S,
    AttemptRecord,
    ExportRow,
    FailureKind,
    Job,
    JobSpec,
    JobState,
    Outcome,
    OutputRef,
    Summary,
    short_key,
)
from runner.redact import redact
from runner.store import admin, hot, queries
from runner.store import tables as t
from runner.store.batch_sql import SqlBatchStore
from runner.store.batching import GroupCommit
from runner.store.connection import Conn, Database
from runner.store.protocol import AttemptTicket, RunInfo
from runner.store.rows import ids_for, insert_new, output_rows, spec_from_row, usage_columns

_CHUNK = 500  # keys per IN (...) list, under SQLite's bound-parameter limit
_PENDING, _RUNNING = JobState.PENDING.value, JobState.RUNNING.value


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _spec_row(spec: JobSpec, folders: Mapping[str, int]) -> dict[str, Any]:
    """`folders`: the id of each output folder (see `queries.output_dir`)."""
    return {
        "image_path": str(spec.image),
        "mask_path": str(spec.mask) if spec.mask else None,
        "image_sha256": spec.image_sha256,
        "mask_sha256": spec.mask_sha256,
        "output_folder_id": folders[str(spec.output_dir)],
        "output_name": spec.output_name,
        "manifest_entry": spec.entry,
    }


# The jobs columns a manifest's entry sets (see `_spec_row`), compared on each sync.
_SPEC_COLUMNS = (
    "image_path", "mask_path", "image_sha256", "mask_sha256", "output_folder_id",
    "output_name", "manifest_entry",
)  # fmt: skip

BUSY = "busy"  # begin_attempt's answer when the fleet's requests out reach the limit


@dataclass(frozen=True, slots=True)
class _Wait:
    """begin_attempt's answer when the fleet's pace says: not before `seconds` from now."""

    seconds: float


class _Ticket:
    """A recorded attempt, as later writes about it need it."""

    def __init__(self, attempt_id: int) -> None:
        self.id = attempt_id


def _attempt_id(ticket: AttemptTicket) -> int:
    attempt_id = getattr(ticket, "id", None)
    if not isinstance(attempt_id, int):
        raise TypeError(f"not an attempt ticket: {ticket!r}")
    return attempt_id


class SqlStore:
    def __init__(
        self,
        engine: Database,
        clock: Callable[[], datetime],
        *,
        lock_wait_s: float | None = None,
    ) -> None:
        self._engine = engine
        self._now = clock
        # Reads queue with the writes: on SQLite there is one connection, and a read in a
        # batch's transaction sees everything committed before it. `lock_wait_s`: how long
        # to wait, asleep on the loop, for another connection's write lock (batching.py).
        self._db = GroupCommit(engine.begin, lock_wait_s)
        self.batches = SqlBatchStore(self._db, clock)  # batch mode's own verbs

    async def close(self) -> None:
        await self._engine.dispose()

    # -- the manifest's jobs ------------------------------------------------------------
    async def sync_manifest(
        self, manifest: str, specs: Sequence[JobSpec], *, start: int = 0, final: bool = True
    ) -> int:
        now = self._now()

        async def write(conn: Conn) -> int:
            # A re-run of an unchanged manifest writes nothing: each known job's stored
            # inputs are compared first and only rows that differ (files moved, a changed
            # output name) are updated; the membership is rewritten only if it changed.
            j = t.jobs.c
            stored: dict[str, tuple[Any, ...]] = {}
            for chunk in _chunks([s.key for s in specs]):
                rows = await conn.execute(
                    select(j.key, *(j[name] for name in _SPEC_COLUMNS)).where(j.key.in_(chunk))
                )
                stored.update({row[0]: tuple(row[1:]) for row in rows})
            new = [s for s in specs if s.key not in stored]
            folders = await ids_for(conn, t.folders, "path", {str(s.output_dir) for s in specs})
            if new:  # another runner syncing the same manifest may have inserted some
                inserted = [_new_job_row(s, now, folders) for s in new]
                await conn.execute(insert_new(conn, t.jobs), inserted)
            refreshed = []
            for spec in specs:
                row = _spec_row(spec, folders)
                was = stored.get(spec.key)
                if was is not None and was != tuple(row[name] for name in _SPEC_COLUMNS):
                    refreshed.append({"k": spec.key, **row, "updated_at": now})
            if refreshed:
                stmt = update(t.jobs).where(t.jobs.c.key == bindparam("k"))
                await conn.execute(stmt, refreshed)
            await _sync_members(conn, manifest, [s.key for s in specs], start, final)
            return len(new)

        return await self._db.run(write)

    async def specs_page(
        self,
        manifest: str,
        states: Collection[str],
        after: int,
        limit: int,
        before: int | None = None,
    ) -> Sequence[tuple[int, JobSpec]]:
        m = t.manifest_jobs.c
        until = [m.position < before] if before is not None else []

        async def read(conn: Conn) -> list[tuple[int, JobSpec]]:
            rows = await conn.execute(
                select(m.position, t.jobs, queries.output_dir())
                .join(t.manifest_jobs, m.job_key == t.jobs.c.key)
                .where(queries.listed_in(manifest), m.position > after, t.jobs.c.status.in_(states))
                .where(*until)
                .order_by(m.position)
                .limit(limit)
            )
            return [(row.position, spec_from_row(row)) for row in rows]

        return await self._db.run(read)

    async def state_counts(
        self, manifest: str, positions: tuple[int, int | None] = (0, None)
    ) -> Mapping[tuple[str, str], int]:
        j, m = t.jobs.c, t.manifest_jobs.c
        start, before = positions
        where = [queries.listed_in(manifest), m.position >= start]
        where += [m.position < before] if before is not None else []

        async def read(conn: Conn) -> dict[tuple[str, str], int]:
            counted = select(j.provider, j.status, func.count()).group_by(j.provider, j.status)
            # The whole list of a manifest that lists every job in its database (the default
            # layout): counted from the jobs' own index, without matching each to the list.
            whole = positions == (0, None) and await queries.members_of(conn, manifest) is None
            if not whole:
                counted = counted.join(t.manifest_jobs, m.job_key == j.key).where(*where)
            return {(str(p), str(s)): int(n) for p, s, n in await conn.execute(counted)}

        return await self._db.run(read)

    async def record_sync(self, manifest: str, fingerprint: str | None, duplicates: int) -> None:
        syncs = t.manifest_syncs

        async def write(conn: Conn) -> None:
            await conn.execute(delete(syncs).where(syncs.c.manifest == manifest))
            if fingerprint is not None:
                await conn.execute(
                    insert_new(conn, syncs),
                    [{"manifest": manifest, "fingerprint": fingerprint,
                      "duplicates": duplicates, "synced_at": self._now()}],
                )  # fmt: skip

        await self._db.run(write)

    async def last_sync(self, manifest: str) -> tuple[str, int] | None:
        syncs = t.manifest_syncs.c

        async def read(conn: Conn) -> tuple[str, int] | None:
            row = (
                await conn.execute(
                    select(syncs.fingerprint, syncs.duplicates).where(syncs.manifest == manifest)
                )
            ).first()
            return (str(row[0]), int(row[1])) if row is not None else None

        return await self._db.run(read)

    async def input_stats(self, manifest: str) -> list[tuple[str, int | None, int | None]]:
        """Each input file of the manifest's jobs with the size and mtime its digest was
        cached at (None: no digest cached): unchanged files mean unchanged job keys. An
        unusable table row has no input (its table is in the manifest's fingerprint)."""
        m, j = t.manifest_jobs.c, t.jobs.c
        image, mask = t.file_digests.alias("image"), t.file_digests.alias("mask")
        query = (
            select(j.image_path, image.c.size_bytes, image.c.mtime_ns,
                   j.mask_path, mask.c.size_bytes, mask.c.mtime_ns)
            .select_from(
                t.manifest_jobs.join(t.jobs, j.key == m.job_key)
                .outerjoin(image, image.c.path == j.image_path)
                .outerjoin(mask, mask.c.path == j.mask_path)
            )
            .where(queries.listed_in(manifest))
            .where(or_(j.failure_kind.is_(None), j.failure_kind != FailureKind.ROW.value))
        )  # fmt: skip

        async def read(conn: Conn) -> list[tuple[str, int | None, int | None]]:
            found: list[tuple[str, int | None, int | None]] = []
            rows = (await conn.execute(query)).all()  # at once: row by row took twice as long
            for path, size, mtime, mask_path, mask_size, mask_mtime in rows:
                found.append((str(path), size, mtime))
                if mask_path is not None:
                    found.append((str(mask_path), mask_size, mask_mtime))
            return found

        return await self._db.run(read)

    async def retry(self, manifest: str, key: str | None = None) -> int:
        states = (JobState.FAILED, JobState.CANCELLED) if key else (JobState.FAILED,)
        return await self._move(manifest, states, JobState.PENDING, key)

    async def cancel(self, manifest: str, key: str | None, states: Collection[JobState]) -> int:
        return await self._move(manifest, states, JobState.CANCELLED, key)

    async def _move(
        self, manifest: str, states: Collection[JobState], to: JobState, key: str | None
    ) -> int:
        now = self._now()
        return await self._db.run(
            lambda conn: admin.move_jobs(
                conn, manifest, from_states=states, to_state=to, key=key, now=now
            )
        )

    async def reject_rows(self, problems: Mapping[str, str]) -> Sequence[str]:
        now = self._now()
        return await self._db.run(lambda conn: admin.reject_rows(conn, problems, now))

    async def set_prices(self, prices: Mapping[str, str]) -> None:
        await self._db.run(lambda conn: admin.set_prices(conn, prices))

    async def load_catalogue(self, source_url: str) -> tuple[datetime, str] | None:
        return await self._db.run(lambda conn: admin.load_catalogue(conn, source_url))

    async def save_catalogue(self, source_url: str, body: str) -> None:
        now = self._now()
        await self._db.run(lambda conn: admin.save_catalogue(conn, source_url, redact(body), now))

    # -- runs and leases ----------------------------------------------------------------
    async def start_run(self, run: RunInfo) -> None:
        now = self._now()
        await self._execute(
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

        async def write(conn: Conn) -> None:
            await self._release_runs(conn, [run_id])
            await conn.execute(
                update(t.runs)
                .where(t.runs.c.id == run_id)
                .values(ended_at=self._now(), exit_code=exit_code, stop_reason=redact(stop_reason))
            )

        await self._db.run(write)

    async def unfinished_runs(self, host: str) -> Sequence[RunInfo]:
        async def read(conn: Conn) -> list[RunInfo]:
            rows = await conn.execute(
                select(t.runs).where(t.runs.c.host == host, t.runs.c.ended_at.is_(None))
            )
            return [RunInfo(r.id, r.manifest, r.host, r.pid, r.process_tag) for r in rows]

        return await self._db.run(read)

    async def reclaim_dead_runs(self, dead_run_ids: Iterable[str]) -> int:
        ids = list(dead_run_ids)
        if not ids:
            return 0

        async def write(conn: Conn) -> int:
            released = await self._release_runs(conn, ids)
            await conn.execute(
                update(t.runs)
                .where(t.runs.c.id.in_(ids))
                .values(ended_at=self._now(), stop_reason=DIED)
            )
            return released

        return await self._db.run(write)

    async def _release_runs(self, conn: Conn, ids: Sequence[str]) -> int:
        """Jobs these runs hold go back to pending; their unanswered attempts are abandoned."""
        now = self._now()
        released = await conn.execute(
            update(t.jobs)
            .where(t.jobs.c.lease_owner.in_(ids), t.jobs.c.status == _RUNNING)
            .values(status=_PENDING, lease_owner=None, lease_expires_at=None, updated_at=now)
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
        jobs = await self.claim_many(manifest, provider, owner, lease_until, 1)
        return jobs[0] if jobs else None

    async def claim_many(
        self,
        manifest: str,
        provider: str,
        owner: str,
        lease_until: datetime,
        limit: int,
        below: int | None = None,
    ) -> Sequence[Job]:
        now = self._now()

        async def write(conn: Conn) -> list[Job]:
            take = (manifest, provider, owner, lease_until, now, limit, below)
            rows = await self._take(conn, *take, expired=False)
            if not rows:  # rare: only a crashed runner's jobs whose leases have lapsed
                rows = await self._take(conn, *take, expired=True)
                if rows:
                    a = t.attempts.c
                    await conn.execute(
                        update(t.attempts)
                        .where(a.job_key.in_([r.key for r in rows]), a.outcome == Outcome.IN_FLIGHT)
                        .values(outcome=Outcome.ABANDONED.value, finished_at=now)
                    )
            return [Job(spec_from_row(r), r.attempts_this_round, r.unanswered) for r in rows]

        return await self._db.run(write)

    @staticmethod
    async def _take(
        conn: Conn,
        manifest: str,
        provider: str,
        owner: str,
        lease_until: datetime,
        now: datetime,
        limit: int,
        below: int | None,
        *,
        expired: bool,
    ) -> Sequence[Any]:
        values = {
            "b_manifest": manifest, "b_provider": provider, "b_owner": owner,
            "b_lease_until": lease_until, "b_now": now, "b_limit": limit, "b_below": below,
        }  # fmt: skip
        rows = (await conn.execute(hot.claim(expired, bounded=below is not None), values)).all()
        return sorted(rows, key=lambda row: row.position)  # RETURNING keeps no order

    async def renew_leases(self, owner: str, lease_until: datetime) -> None:
        async def write(conn: Conn) -> None:
            await conn.execute(
                update(t.jobs)
                .where(t.jobs.c.lease_owner == owner, t.jobs.c.status == _RUNNING)
                .values(lease_expires_at=lease_until)
            )
            await conn.execute(
                update(t.runs).where(t.runs.c.id == owner).values(heartbeat_at=self._now())
            )

        await self._db.run(write)

    async def held_elsewhere(self, manifest: str, provider: str, owner: str) -> int:
        statement = (
            select(func.count())
            .select_from(t.jobs)
            .where(
                queries.in_manifest(manifest),
                t.jobs.c.provider == provider,
                t.jobs.c.status == _RUNNING,
                t.jobs.c.lease_owner != owner,
            )
        )

        async def read(conn: Conn) -> int:
            return int(await conn.scalar(statement) or 0)

        return await self._db.run(read)

    # -- one job's life -----------------------------------------------------------------
    async def begin_attempt(
        self,
        key: str,
        owner: str,
        provider: str,
        model: str,
        *,
        lease_until: datetime | None = None,
        in_flight_limit: int | None = None,
        own_in_flight: int | None = None,
        interval_s: float | None = None,
    ) -> AttemptTicket:
        now = self._now()
        # A claim by another runner waits for the fence, then finds the lease extended.
        fence = hot.FENCE if lease_until is None else hot.FENCE_LEASED
        out_now = hot.OUT_NOW if own_in_flight is None else hot.OUT_NOW_OTHERS
        values = {
            "b_key": key, "b_owner": owner, "b_provider": provider, "b_now": now,
            "b_lease_until": lease_until,
        }  # fmt: skip
        attempt = {
            "job_key": key,
            "run_id": owner,
            "provider": provider,
            "model": model,
            "outcome": Outcome.IN_FLIGHT.value,
            "counted": True,  # until the answer says otherwise: a crash now may be billed
            "started_at": now,
        }
        pace = t.provider_pace

        async def write(conn: Conn) -> int | StopNotice | str | _Wait | None:
            # Errors are returned, not raised: a raise would roll back the whole batch.
            if (stop := (await conn.execute(hot.STOPPED, values)).first()) is not None:
                return StopNotice(stop.provider, stop.kind, stop.message, stop.exit_code)
            # One count at a time per provider across runners (PostgreSQL runs their
            # transactions side by side; SQLite's write lock already does this). Should the
            # wait close a cycle with row locks, PostgreSQL picks a victim and the batch is
            # run again (batching.py).
            if conn.dialect.name == "postgresql":
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext(:name))"),
                    {"name": f"runner in flight: {provider}"},
                )
            slot = (await conn.execute(hot.PACED, values)).first()
            ready = now  # what another live run set (this run's own gate keeps its own)
            others = await self._other_live_runs(conn, slot, owner)
            if slot is not None and slot.paused_until and slot.pause_run_id in others:
                ready = max(ready, slot.paused_until)  # a rate-limit answer's wait
            if slot is not None and interval_s and slot.next_slot_at and slot.slot_run_id in others:
                ready = max(ready, slot.next_slot_at)  # requests_per_minute
            if ready > now:
                return _Wait((ready - now).total_seconds())
            if in_flight_limit is not None:
                out = (await conn.scalar(out_now, values) or 0) + (own_in_flight or 0)
                if out >= in_flight_limit:
                    return BUSY
            if (await conn.execute(fence, values)).rowcount != 1:
                return None  # not ours (any more)
            if interval_s:
                taken = {
                    "provider": provider,
                    "next_slot_at": now + timedelta(seconds=interval_s),
                    "slot_run_id": owner,
                }
                if slot is None:
                    await conn.execute(insert_new(conn, pace), [taken])
                else:
                    await conn.execute(
                        update(pace).where(pace.c.provider == provider).values(**taken)
                    )
            (attempt_id,) = (await conn.execute(hot.NEW_ATTEMPT, attempt)).inserted_primary_key or (
                None,
            )
            if attempt_id is None:
                raise RunnerError("the database returned no id for a new attempt")
            return int(attempt_id)

        answer = await self._db.run(write)
        if isinstance(answer, StopNotice):
            raise StoppedElsewhere(answer)
        if isinstance(answer, _Wait):
            raise ProviderPaced(answer.seconds)
        if isinstance(answer, str):  # BUSY
            raise ProviderBusy(f"{provider}: {in_flight_limit} requests out across runners")
        if answer is None:
            raise LeaseLost(f"job {short_key(key)} is no longer held by this run; not sent")
        return _Ticket(answer)

    async def reserve_budget(
        self, run_id: str, manifest: str, estimate: float, cap: float
    ) -> tuple[bool, float]:
        now = self._now()
        r, a = t.runs.c, t.attempts.c

        async def write(conn: Conn) -> tuple[bool, float]:
            if conn.dialect.name == "postgresql":  # one reservation at a time per manifest
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext(:name))"),
                    {"name": f"runner budget: {manifest}"},
                )
            since = await conn.scalar(select(r.started_at).where(r.id == run_id)) or now
            sharing = select(r.id).where(
                r.manifest == manifest, or_(r.ended_at.is_(None), r.ended_at >= since)
            )
            # A runner silent this long is gone: its reservations no longer hold money back.
            alive = now - timedelta(seconds=SILENT_AFTER_S)
            # One statement, so one snapshot: read apart (PostgreSQL's READ COMMITTED takes
            # one per statement), a job completed in between, its reservation released and
            # its cost recorded in one transaction, was counted in neither, and the budget
            # let one job too many through.
            spent, reserved = (
                await conn.execute(
                    select(
                        select(func.coalesce(func.sum(a.cost_usd), 0.0))
                        .where(a.run_id.in_(sharing))
                        .scalar_subquery(),
                        select(func.coalesce(func.sum(r.reserved_usd), 0.0))
                        .where(r.id.in_(sharing), r.ended_at.is_(None), r.heartbeat_at > alive)
                        .scalar_subquery(),
                    )
                )
            ).one()
            committed = float(spent or 0.0) + float(reserved or 0.0)
            if committed + estimate > cap + 1e-9:
                return False, committed
            await conn.execute(
                update(t.runs).where(r.id == run_id).values(reserved_usd=r.reserved_usd + estimate)
            )
            return True, committed

        return await self._db.run(write)

    async def release_budget(self, run_id: str, estimate: float) -> None:
        await self._execute(self._release_statement(run_id, estimate))

    @staticmethod
    def _release_statement(run_id: str, estimate: float) -> Any:
        r = t.runs.c
        return (
            update(t.runs)
            .where(r.id == run_id)
            .values(
                reserved_usd=case((r.reserved_usd > estimate, r.reserved_usd - estimate), else_=0.0)
            )
        )

    @staticmethod
    async def _other_live_runs(conn: Conn, slot: Any, owner: str) -> set[str]:
        """Of the runs that set a provider's pace, those still running, this one aside."""
        if slot is None:
            return set()
        ids = {slot.slot_run_id, slot.pause_run_id} - {None, owner}
        if not ids:
            return set()
        r = t.runs.c
        rows = await conn.execute(select(r.id).where(r.id.in_(ids), r.ended_at.is_(None)))
        return {str(run_id) for run_id in rows.scalars()}

    async def pause_provider(self, provider: str, seconds: float, run_id: str) -> None:
        until = self._now() + timedelta(seconds=seconds)
        pace = t.provider_pace

        async def write(conn: Conn) -> None:
            await conn.execute(insert_new(conn, pace), [{"provider": provider}])
            await conn.execute(
                update(pace)
                .where(
                    pace.c.provider == provider,
                    or_(pace.c.paused_until.is_(None), pace.c.paused_until < until),
                )
                .values(paused_until=until, pause_run_id=run_id)
            )

        await self._db.run(write)

    async def stop_provider(self, notice: StopNotice, run_id: str) -> None:
        stops = t.provider_stops
        row = {
            "provider": notice.provider,
            "kind": notice.kind,
            "message": redact(notice.message),
            "exit_code": int(notice.exit_code),
            "run_id": run_id,
            "stopped_at": self._now(),
        }

        async def write(conn: Conn) -> None:
            # The first runner's reason stands; another's at the same moment is the same.
            await conn.execute(insert_new(conn, stops), [row])

        await self._db.run(write)

    async def clear_provider_stops(self, providers: Collection[str]) -> None:
        stops = t.provider_stops
        await self._execute(delete(stops).where(stops.c.provider.in_(list(providers))))

    def _finish_values(self, ticket: AttemptTicket, record: AttemptRecord) -> dict[str, Any]:
        """hot.FINISH_ATTEMPT's parameters: the attempt, and the columns its answer sets."""
        return {
            "b_id": _attempt_id(ticket),
            "outcome": record.outcome.value,
            "counted": record.counted,
            "finished_at": self._now(),
            "latency_ms": record.latency_ms,
            "http_status": record.http_status,
            # Provider texts: redacted at the provider already, and again here.
            "error_code": redact(record.error_code),
            "error_message": redact(record.error_message),
            "request_id": redact(record.request_id),
            "cost_usd": record.cost_usd,
            **usage_columns(record),
        }

    async def finish_attempt(self, ticket: AttemptTicket, record: AttemptRecord) -> None:
        async def write(conn: Conn) -> None:
            await conn.execute(hot.FINISH_ATTEMPT, self._finish_values(ticket, record))

        await self._db.run(write)

    async def complete(
        self,
        key: str,
        owner: str,
        ticket: AttemptTicket,
        record: AttemptRecord,
        outputs: Sequence[OutputRef],
        *,
        release_usd: float = 0.0,
    ) -> bool:
        async def write(conn: Conn) -> bool:
            if release_usd:
                await conn.execute(self._release_statement(owner, release_usd))
            return await self._complete(conn, key, ticket, record, outputs, owner)

        return await self._db.run(write)

    async def holds(self, key: str, owner: str) -> bool:
        values = {"b_key": key, "b_owner": owner}

        async def read(conn: Conn) -> bool:
            return bool(await conn.scalar(hot.HOLDS, values))

        return await self._db.run(read)

    async def record_late(
        self, key: str, attempt_id: int, record: AttemptRecord, outputs: Sequence[OutputRef]
    ) -> bool:
        async def write(conn: Conn) -> bool:
            known = await conn.scalar(
                select(func.count())
                .select_from(t.attempts)
                .join(t.jobs, t.jobs.c.key == t.attempts.c.job_key)
                .where(
                    t.attempts.c.id == attempt_id,
                    t.attempts.c.job_key == key,
                    t.jobs.c.status != JobState.SUCCEEDED.value,
                )
            )
            if not known:
                return False
            return await self._complete(conn, key, _Ticket(attempt_id), record, outputs, None)

        return await self._db.run(write)

    async def _complete(
        self,
        conn: Conn,
        key: str,
        ticket: AttemptTicket,
        record: AttemptRecord,
        outputs: Sequence[OutputRef],
        owner: str | None,
    ) -> bool:
        """Finish the paid attempt; the job succeeds with `outputs` if `owner` holds it
        (None: whoever does, for replies an earlier run recorded late)."""
        succeed = hot.SUCCEED if owner is not None else hot.SUCCEED_ANY_HOLDER
        # A success may still carry a note (fewer images than asked for).
        values = {
            "b_key": key, "b_owner": owner, "b_now": self._now(),
            "b_error": redact(record.error_message),
        }  # fmt: skip
        # Paid, whoever holds it.
        await conn.execute(hot.FINISH_ATTEMPT, self._finish_values(ticket, record))
        if (await conn.execute(succeed, values)).rowcount != 1:
            return False  # another runner holds the job (or finished it): not ours to record
        if outputs:
            await conn.execute(hot.NEW_OUTPUTS, output_rows(key, _attempt_id(ticket), outputs))
        return True

    async def fail(self, key: str, owner: str, reason: str, kind: FailureKind) -> None:
        now = self._now()
        await self._settle(
            key,
            owner,
            status=JobState.FAILED,
            error=redact(reason),
            failure_kind=kind.value,
            finished_at=now,
        )

    async def release(self, key: str, owner: str, *, fresh_attempts: bool = False) -> None:
        extra = {"attempt_floor": queries.latest_attempt_id()} if fresh_attempts else {}
        await self._settle(key, owner, status=JobState.PENDING, **extra)

    async def renew_attempts(self, key: str, owner: str) -> None:
        await self._execute(
            update(t.jobs)
            .where(t.jobs.c.key == key, t.jobs.c.lease_owner == owner)
            .values(attempt_floor=queries.latest_attempt_id(), updated_at=self._now())
        )

    async def _settle(self, key: str, owner: str, status: JobState, **values: Any) -> None:
        """End our hold on a job; a job another runner has since taken is left alone."""
        await self._execute(
            update(t.jobs)
            .where(t.jobs.c.key == key, t.jobs.c.lease_owner == owner, t.jobs.c.status == _RUNNING)
            .values(
                status=status.value,
                lease_owner=None,
                lease_expires_at=None,
                updated_at=self._now(),
                **values,
            )
        )

    async def _execute(self, statement: Any) -> None:
        async def write(conn: Conn) -> None:
            await conn.execute(statement)

        await self._db.run(write)

    # -- reading ------------------------------------------------------------------------
    async def summary(self, manifest: str) -> Summary:
        return await self._db.run(lambda conn: queries.summary(conn, manifest, self._now()))

    async def export_rows(
        self, manifest: str, keys: Collection[str] | None = None
    ) -> Sequence[ExportRow]:
        return await self._db.run(lambda conn: queries.export_rows(conn, manifest, keys))

    async def export_page(
        self, manifest: str, states: Collection[str], after: int, limit: int
    ) -> Sequence[tuple[int, ExportRow]]:
        return await self._db.run(
            lambda conn: queries.export_page(conn, manifest, states, after, limit)
        )

    async def job_states(self, manifest: str) -> Mapping[str, str]:
        return await self._db.run(lambda conn: queries.job_states(conn, manifest))

    async def succeeded_costs(self, manifest: str) -> Mapping[str, float]:
        return await self._db.run(lambda conn: queries.succeeded_costs(conn, manifest))

    async def output_paths(self) -> frozenset[str]:
        return await self._db.run(queries.output_paths)

    # -- input digest cache -------------------------------------------------------------
    async def digests_for(self, paths: Collection[str]) -> Mapping[str, DigestEntry]:
        d = t.file_digests.c

        async def read(conn: Conn) -> dict[str, DigestEntry]:
            found = {}
            for chunk in _chunks(list(paths)):
                rows = await conn.execute(select(t.file_digests).where(d.path.in_(chunk)))
                found.update(
                    {r.path: DigestEntry(r.path, r.size_bytes, r.mtime_ns, r.sha256) for r in rows}
                )
            return found

        return await self._db.run(read)

    async def save_digests(self, entries: Sequence[DigestEntry]) -> None:
        if not entries:
            return
        unique = list({e.path: e for e in entries}.values())

        async def write(conn: Conn) -> None:
            for chunk in _chunks([e.path for e in unique]):
                await conn.execute(delete(t.file_digests).where(t.file_digests.c.path.in_(chunk)))
            await conn.execute(
                insert_new(conn, t.file_digests),
                [
                    {
                        "path": e.path,
                        "size_bytes": e.size,
                        "mtime_ns": e.mtime_ns,
                        "sha256": e.sha256,
                    }
                    for e in unique
                ],
            )

        await self._db.run(write)


async def _sync_members(
    conn: Conn, manifest: str, keys: Sequence[str], start: int, final: bool
) -> None:
    """Make `keys` the manifest's jobs at positions `start`, `start + 1`, ... (and, when
    `final`, the last ones). Unchanged positions are only read: a re-run of an unchanged
    manifest writes nothing. A key that moves between chunks is moved, not duplicated (a
    row's key is unique per manifest)."""
    m = t.manifest_jobs.c
    number = await _manifest_number(conn, manifest)
    end = start + len(keys)
    listed = [(key, start + i) for i, key in enumerate(keys)]
    in_range = m.position >= start if final else and_(m.position >= start, m.position < end)
    current = await conn.execute(
        select(m.job_key, m.position).where(m.manifest_id == number, in_range).order_by(m.position)
    )
    if [tuple(row) for row in current] == listed:
        return
    await conn.execute(delete(t.manifest_jobs).where(m.manifest_id == number, in_range))
    if listed:
        await conn.execute(
            _upsert_position(conn),
            [{"manifest_id": number, "job_key": k, "position": i} for k, i in listed],
        )


async def _manifest_number(conn: Conn, manifest: str) -> int:
    """The manifest's id in `manifests`, added at its first sync (only read after that)."""
    number = select(t.manifests.c.id).where(t.manifests.c.path == manifest)
    found = await conn.scalar(number)
    if found is None:
        # Runners syncing a new manifest together (PostgreSQL): one adds it, the other
        # waits for that and then reads it.
        await conn.execute(insert_new(conn, t.manifests), [{"path": manifest}])
        found = await conn.scalar(number)
    return int(found)


def _upsert_position(conn: Conn) -> Any:
    """INSERT into manifest_jobs, or move the key's row to its new position."""
    members = t.manifest_jobs
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
    stmt = dialect_insert(members)
    return stmt.on_conflict_do_update(
        index_elements=[members.c.job_key, members.c.manifest_id],
        set_={"position": stmt.excluded.position},
    )


def _new_job_row(spec: JobSpec, now: datetime, folders: Mapping[str, int]) -> dict[str, Any]:
    return {
        "key": spec.key,
        "status": _PENDING,
        "prompt": spec.prompt,
        "provider": spec.provider,
        "model": spec.model,
        "params_json": json.dumps(dict(spec.params), sort_keys=True),
        "attempt_floor": 0,
        "retry_floor": 0,
        "created_at": now,
        "updated_at": now,
        **_spec_row(spec, folders),
    }
