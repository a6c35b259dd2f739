"""The store on an event loop of its own, in a thread of its own; on SQLite, a job's own
verbs on the caller's loop.

On the loop that also streams a pool's uploads and 2 MB replies, a store call waits its turn
behind that traffic: measured, a claim took 250 ms at 32 requests in flight (through
aiosqlite, whose every statement crossed between threads). On a loop that does nothing else
the call runs at once. SQLite's statements run right there, blocking only this loop
(connection.py); PostgreSQL's are awaited on it. A store call costs one hop between the
loops each way.

Those hops, and two threads taking turns at the GIL, cost more than the SQL itself for the
verbs every request makes (claim, attempt, answer, success: ~2 ms of a job's CPU at 16
requests at once, bench/README.md). On SQLite those verbs run inline on the caller's loop,
through a second connection of their own that never blocks it: a statement takes
microseconds, and a write lock another connection holds is waited for asleep on the loop
(batching.py). A bulk verb (syncing a manifest, a report, an export) can take a second, so
it stays on the store's thread, where it holds up no upload. Each call commits before it
returns, so the two connections see each other's writes in the order they were awaited.

`ThreadedStore` forwards each Store call to the SqlStore that serves it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from runner.errors import StopNotice
from runner.manifest.digests import DigestEntry
from runner.records import (
    AttemptRecord,
    BatchRecord,
    ExportRow,
    FailureKind,
    Job,
    JobSpec,
    JobState,
    OutputRef,
    Summary,
)
from runner.store.batch_sql import SqlBatchStore
from runner.store.protocol import AttemptTicket, RunInfo
from runner.store.sql import SqlStore

T = TypeVar("T")


class StoreLoop:
    """An asyncio loop running in a daemon thread, for the store alone."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="runner-store", daemon=True
        )
        self._thread.start()

    async def call(self, function: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run `function(*args)` on the store's loop; cancelling the caller cancels it."""
        future = asyncio.run_coroutine_threadsafe(function(*args), self._loop)
        return await asyncio.wrap_future(future)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class CallerLoop:
    """The caller's own loop: a call is simply awaited."""

    async def call(self, function: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        return await function(*args)


async def open_threaded(
    opener: Callable[[], Awaitable[SqlStore]],
    per_job_opener: Callable[[], Awaitable[SqlStore]] | None = None,
) -> ThreadedStore:
    """The store `opener` opens, on a thread; with `per_job_opener`, a job's own verbs go to
    the store that one opens, on the caller's loop (SQLite)."""
    loop = StoreLoop()

    async def open_it() -> SqlStore:
        return await opener()

    try:
        inner = await loop.call(open_it)
    except BaseException:
        loop.stop()
        raise
    per_job = None
    if per_job_opener is not None:
        try:
            per_job = await per_job_opener()
        except BaseException:
            with contextlib.suppress(Exception):
                await loop.call(inner.close)
            loop.stop()
            raise
    return ThreadedStore(inner, loop, per_job)


class ThreadedBatches:
    """Batch mode's verbs (batch_sql.py), each run on the store's loop."""

    def __init__(self, inner: SqlBatchStore, loop: StoreLoop) -> None:
        self._inner = inner
        self._loop = loop

    def _call(self, method: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kw: Any) -> Any:
        return self._loop.call(functools.partial(method, *args, **kw))

    async def known_uploads(self, provider: str, digests: Sequence[str]) -> dict[str, str]:
        result: dict[str, str] = await self._call(self._inner.known_uploads, provider, digests)
        return result

    async def save_upload(
        self, provider: str, sha256: str, file_id: str, size: int, expires_at: datetime | None
    ) -> None:
        await self._call(self._inner.save_upload, provider, sha256, file_id, size, expires_at)

    async def forget_uploads(self, provider: str, file_ids: Sequence[str]) -> None:
        await self._call(self._inner.forget_uploads, provider, file_ids)

    async def all_uploads(self, provider: str) -> list[str]:
        result: list[str] = await self._call(self._inner.all_uploads, provider)
        return result

    async def submit(
        self, batch: BatchRecord, lines: Mapping[str, float | None], owner: str
    ) -> int:
        result: int = await self._call(self._inner.submit, batch, lines, owner)
        return result

    async def update(self, batch_id: str, **values: Any) -> None:
        await self._call(self._inner.update, batch_id, **values)

    async def open_batches(self, manifest: str | None = None) -> list[BatchRecord]:
        result: list[BatchRecord] = await self._call(self._inner.open_batches, manifest)
        return result

    async def waiting_lines(self, batch_id: str) -> dict[str, JobSpec]:
        result: dict[str, JobSpec] = await self._call(self._inner.waiting_lines, batch_id)
        return result

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
        result: bool = await self._call(
            self._inner.record_line, batch, spec, run_id, record, outputs,
            state=state, reason=reason, kind=kind, max_attempts=max_attempts,
        )  # fmt: skip
        return result

    async def close(self, batch_id: str, reason: str, state: JobState = JobState.PENDING) -> int:
        result: int = await self._call(self._inner.close, batch_id, reason, state)
        return result

    async def open_estimate(self, manifest: str) -> float:
        result: float = await self._call(self._inner.open_estimate, manifest)
        return result


class ThreadedStore:
    def __init__(self, inner: SqlStore, loop: StoreLoop, per_job: SqlStore | None = None) -> None:
        self._inner = inner
        self._loop = loop
        self.batches = ThreadedBatches(inner.batches, loop)
        # Where a job's own verbs go: `per_job` on the caller's loop, else the thread's.
        self._per_job = per_job
        self._job: SqlStore = per_job or inner
        self._job_loop: StoreLoop | CallerLoop = CallerLoop() if per_job else loop

    async def close(self) -> None:
        try:
            if self._per_job is not None:
                await self._per_job.close()
        finally:
            try:
                await self._loop.call(self._inner.close)
            finally:
                self._loop.stop()

    async def sync_manifest(
        self, manifest: str, specs: Sequence[JobSpec], *, start: int = 0, final: bool = True
    ) -> int:
        return await self._loop.call(
            functools.partial(self._inner.sync_manifest, start=start, final=final),
            manifest,
            specs,
        )

    async def specs_page(
        self,
        manifest: str,
        states: Collection[str],
        after: int,
        limit: int,
        before: int | None = None,
    ) -> Sequence[tuple[int, JobSpec]]:
        return await self._loop.call(self._inner.specs_page, manifest, states, after, limit, before)

    async def state_counts(
        self, manifest: str, positions: tuple[int, int | None] = (0, None)
    ) -> Mapping[tuple[str, str], int]:
        return await self._loop.call(self._inner.state_counts, manifest, positions)

    async def record_sync(self, manifest: str, fingerprint: str | None, duplicates: int) -> None:
        await self._loop.call(self._inner.record_sync, manifest, fingerprint, duplicates)

    async def last_sync(self, manifest: str) -> tuple[str, int] | None:
        return await self._loop.call(self._inner.last_sync, manifest)

    async def input_stats(self, manifest: str) -> list[tuple[str, int | None, int | None]]:
        return await self._loop.call(self._inner.input_stats, manifest)

    async def retry(self, manifest: str, key: str | None = None) -> int:
        return await self._loop.call(self._inner.retry, manifest, key)

    async def cancel(self, manifest: str, key: str | None, states: Collection[JobState]) -> int:
        return await self._loop.call(self._inner.cancel, manifest, key, states)

    async def reject_rows(self, problems: Mapping[str, str]) -> Sequence[str]:
        return await self._loop.call(self._inner.reject_rows, problems)

    async def set_prices(self, prices: Mapping[str, str]) -> None:
        await self._loop.call(self._inner.set_prices, prices)

    async def load_catalogue(self, source_url: str) -> tuple[datetime, str] | None:
        return await self._loop.call(self._inner.load_catalogue, source_url)

    async def save_catalogue(self, source_url: str, body: str) -> None:
        await self._loop.call(self._inner.save_catalogue, source_url, body)

    async def start_run(self, run: RunInfo) -> None:
        await self._loop.call(self._inner.start_run, run)

    async def end_run(self, run_id: str, exit_code: int, stop_reason: str | None) -> None:
        await self._loop.call(self._inner.end_run, run_id, exit_code, stop_reason)

    async def reclaim_dead_runs(self, dead_run_ids: Iterable[str]) -> int:
        return await self._loop.call(self._inner.reclaim_dead_runs, list(dead_run_ids))

    async def unfinished_runs(self, host: str) -> Sequence[RunInfo]:
        return await self._loop.call(self._inner.unfinished_runs, host)

    async def claim_many(
        self,
        manifest: str,
        provider: str,
        owner: str,
        lease_until: datetime,
        limit: int,
        below: int | None = None,
    ) -> Sequence[Job]:
        return await self._job_loop.call(
            self._job.claim_many, manifest, provider, owner, lease_until, limit, below
        )

    async def renew_leases(self, owner: str, lease_until: datetime) -> None:
        await self._job_loop.call(self._job.renew_leases, owner, lease_until)

    async def held_elsewhere(self, manifest: str, provider: str, owner: str) -> int:
        return await self._job_loop.call(self._job.held_elsewhere, manifest, provider, owner)

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
        async def begin() -> AttemptTicket:
            return await self._job.begin_attempt(
                key,
                owner,
                provider,
                model,
                lease_until=lease_until,
                in_flight_limit=in_flight_limit,
                own_in_flight=own_in_flight,
                interval_s=interval_s,
            )

        return await self._job_loop.call(begin)

    async def reserve_budget(
        self, run_id: str, manifest: str, estimate: float, cap: float
    ) -> tuple[bool, float]:
        return await self._job_loop.call(self._job.reserve_budget, run_id, manifest, estimate, cap)

    async def release_budget(self, run_id: str, estimate: float) -> None:
        await self._job_loop.call(self._job.release_budget, run_id, estimate)

    async def pause_provider(self, provider: str, seconds: float, run_id: str) -> None:
        await self._job_loop.call(self._job.pause_provider, provider, seconds, run_id)

    async def stop_provider(self, notice: StopNotice, run_id: str) -> None:
        await self._job_loop.call(self._job.stop_provider, notice, run_id)

    async def clear_provider_stops(self, providers: Collection[str]) -> None:
        await self._loop.call(self._inner.clear_provider_stops, list(providers))

    async def finish_attempt(self, ticket: AttemptTicket, record: AttemptRecord) -> None:
        await self._job_loop.call(self._job.finish_attempt, ticket, record)

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
        async def complete() -> bool:
            return await self._job.complete(
                key, owner, ticket, record, outputs, release_usd=release_usd
            )

        return await self._job_loop.call(complete)

    async def holds(self, key: str, owner: str) -> bool:
        return await self._job_loop.call(self._job.holds, key, owner)

    async def fail(self, key: str, owner: str, reason: str, kind: FailureKind) -> None:
        await self._job_loop.call(self._job.fail, key, owner, reason, kind)

    async def release(self, key: str, owner: str, *, fresh_attempts: bool = False) -> None:
        async def release() -> None:
            await self._job.release(key, owner, fresh_attempts=fresh_attempts)

        await self._job_loop.call(release)

    async def renew_attempts(self, key: str, owner: str) -> None:
        await self._job_loop.call(self._job.renew_attempts, key, owner)

    async def record_late(
        self, key: str, attempt_id: int, record: AttemptRecord, outputs: Sequence[OutputRef]
    ) -> bool:
        return await self._loop.call(self._inner.record_late, key, attempt_id, record, outputs)

    async def summary(self, manifest: str) -> Summary:
        return await self._loop.call(self._inner.summary, manifest)

    async def export_rows(
        self, manifest: str, keys: Collection[str] | None = None
    ) -> Sequence[ExportRow]:
        return await self._loop.call(self._inner.export_rows, manifest, keys)

    async def export_page(
        self, manifest: str, states: Collection[str], after: int, limit: int
    ) -> Sequence[tuple[int, ExportRow]]:
        return await self._loop.call(self._inner.export_page, manifest, states, after, limit)

    async def job_states(self, manifest: str) -> Mapping[str, str]:
        return await self._loop.call(self._inner.job_states, manifest)

    async def succeeded_costs(self, manifest: str) -> Mapping[str, float]:
        return await self._loop.call(self._inner.succeeded_costs, manifest)

    async def output_paths(self) -> frozenset[str]:
        return await self._loop.call(self._inner.output_paths)

    async def digests_for(self, paths: Collection[str]) -> Mapping[str, DigestEntry]:
        return await self._loop.call(self._inner.digests_for, paths)

    async def save_digests(self, entries: Sequence[DigestEntry]) -> None:
        await self._loop.call(self._inner.save_digests, entries)
