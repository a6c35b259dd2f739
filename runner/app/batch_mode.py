"""Batch mode: a profile's jobs through OpenAI's Batch API at half price (`mode: batch`).

Each run first collects what earlier runs submitted (finished batches' lines become
outputs, failures or pending jobs again), then submits what is pending in new batches, and
exits 75 while batches are open ("run again to collect"); `run --wait` polls until they end.

Nothing is sent twice: a batch is recorded with its input file's id before `POST /batches`
and tagged with its row id in the batch's metadata, so a run that died before recording the
answer is followed by one that finds the batch at the provider instead of creating another.
A job stays `submitted` (never claimed, live or batch) until its batch has ended.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream

from runner.cpu_work import run_cpu_work
from runner.dialects.openai.batch import (
    ENDED,
    MAX_INPUT_BYTES,
    LineAnswer,
    OpenAIBatchClient,
    edit_line,
    line_answer,
)
from runner.engine.ports import Prepare
from runner.engine.pricing import PriceBook
from runner.errors import (
    ExitCode,
    InputChanged,
    InputError,
    OutputError,
    PermanentJobError,
    ProviderError,
    ProviderStop,
    StopNotice,
    first_error,
)
from runner.files.local import Outputs
from runner.files.uploads import part_bytes
from runner.records import (
    AttemptRecord,
    BatchRecord,
    EditRequest,
    FailureKind,
    ImageLimits,
    JobSpec,
    JobState,
    Outcome,
    ProviderProfile,
)
from runner.store.threaded import ThreadedBatches, ThreadedStore

log = logging.getLogger("runner")
# OpenAI bills Batch API requests at half the live price.
BATCH_DISCOUNT = 0.5
# How long a claimed job may wait between its claim and its batch's record.
CLAIM_LEASE_S = 600.0
# Collecting: lines read ahead of the tasks that decode, write and record them (a line is a
# whole reply, a few MB), and how many lines are handled at once.
COLLECT_QUEUE_LINES = 4
COLLECT_WORKERS = 4


@dataclass(slots=True)
class BatchBudget:
    """--max-cost for batch lanes: a line counts at its estimated batch cost from the
    moment it is submitted (it may be billed whenever the provider runs it)."""

    cap: float | None
    committed: float = 0.0

    def take(self, estimate: float | None) -> bool:
        if self.cap is None:
            return True
        if estimate is None or self.committed + estimate > self.cap:
            return False
        self.committed += estimate
        return True


@dataclass(slots=True)
class BatchReport:
    succeeded: int = 0
    failed: int = 0
    submitted: int = 0  # jobs sent in new batches by this run
    spent_usd: float = 0.0
    stops: list[StopNotice] = field(default_factory=list)
    open_batches: int = 0  # at the end of this run's pass
    open_jobs: int = 0


class BatchLane:
    """One `mode: batch` profile's collect-then-submit pass."""

    def __init__(
        self,
        profile: ProviderProfile,
        client: OpenAIBatchClient,
        store: ThreadedStore,
        *,
        manifest: str,
        owner: str,
        outputs: Outputs,
        prepare: Prepare,
        limits: Callable[[str], ImageLimits],
        book: PriceBook,
        now: Callable[[], datetime],
        keep_files: bool = False,
        budget: BatchBudget | None = None,
        max_attempts: int | None = None,
    ) -> None:
        self.profile = profile
        self._max_attempts = max_attempts
        self._budget = budget or BatchBudget(None)
        self._client = client
        self._store = store
        self._batches: ThreadedBatches = store.batches
        self._manifest = manifest
        self._owner = owner
        self._outputs = outputs
        self._prepare = prepare
        self._limits = limits
        self._book = book
        self._now = now
        self._keep_files = keep_files
        self.report = BatchReport()

    # -- collect ------------------------------------------------------------------------
    async def collect(self) -> None:
        """Every open batch of this profile: its state from the provider, and for those
        that ended, each line's answer recorded."""
        for batch in await self._batches.open_batches(self._manifest):
            if batch.provider != self.profile.name:
                continue
            try:
                await self._collect_one(batch)
            except ProviderStop as exc:
                self._stop(exc)
                return
            except ProviderError as exc:  # the batch stays open; the next run tries again
                self._hold(f"could not collect batch {batch.provider_batch_id}", exc)
                return
        await self._count_open()

    async def _collect_one(self, batch: BatchRecord) -> None:
        info = await self._provider_view(batch)
        if info is None:
            return
        status = str(info.get("status"))
        counts = info.get("request_counts") or {}
        await self._batches.update(
            batch.id,
            status=status,
            completed_lines=int(counts.get("completed") or 0),
            failed_lines=int(counts.get("failed") or 0),
            output_file_id=info.get("output_file_id"),
            error_file_id=info.get("error_file_id"),
            expires_at=_time(info.get("expires_at")),
            ended_at=self._now() if status in ENDED else None,
        )
        if status not in ENDED:
            return
        waiting = await self._batches.waiting_lines(batch.id)
        started, lines = time.monotonic(), len(waiting)
        for file_id in (info.get("output_file_id"), info.get("error_file_id")):
            if file_id:
                await self._read_answers(batch, str(file_id), waiting)
        log.info("%s: batch %s %s: %d of %d lines answered, recorded in %.2f s",
                 self.profile.name, info.get("id"), status, lines - len(waiting), lines,
                 time.monotonic() - started)  # fmt: skip
        reason = _why_not_run(status, info)
        # Lines that never ran were never billed. After an expiry they go in the next
        # batch; a batch the provider refused (validation) would be refused again, so its
        # jobs fail with the reason (`runner retry` after a fix); a cancelled batch's jobs
        # are cancelled, as asked (`runner cancel --state submitted`).
        state = {"failed": JobState.FAILED, "cancelled": JobState.CANCELLED}.get(
            status, JobState.PENDING
        )
        moved = await self._batches.close(batch.id, reason, state)
        if state is JobState.FAILED:
            self.report.failed += moved
        if moved:
            log.warning("%s: batch %s %s: %d jobs it did not run are now %s (%s)",
                        self.profile.name, info.get("id"), status, moved, state.value,
                        reason)  # fmt: skip
        await self._clean_up(batch, info)

    async def _provider_view(self, batch: BatchRecord) -> dict[str, Any] | None:
        """The provider's batch object; for a batch whose creation was never recorded, the
        one our tag finds, or None after putting its lines back (it was never created)."""
        if batch.provider_batch_id is not None:
            return dict(await self._client.get_batch(batch.provider_batch_id))
        since = batch.created_at.timestamp() - 300  # clocks differ a little
        found = await self._client.find_batch(batch.id, since)
        if found is not None:
            log.warning("%s: adopted batch %s, created by a run that ended before it could "
                        "record it", self.profile.name, found.get("id"))  # fmt: skip
            await self._batches.update(batch.id, provider_batch_id=str(found.get("id")))
            return dict(found)
        if self._now() - batch.created_at < timedelta(minutes=10) and batch.run_id == self._owner:
            return None  # our own, being created right now
        await self._batches.update(batch.id, status="lost")
        back = await self._batches.close(
            batch.id, "its batch was never created; sent again", JobState.PENDING
        )
        log.warning("%s: a batch of %d lines was never created at the provider; they go "
                    "back to pending", self.profile.name, back)  # fmt: skip
        if not self._keep_files:
            await self._client.delete_file(batch.input_file_id)
        return None

    async def _read_answers(
        self, batch: BatchRecord, file_id: str, waiting: dict[str, JobSpec]
    ) -> None:
        """Lines are read by one task and handled by a few others, so the download goes on
        while images are decoded, written (fsynced) and recorded; at most
        COLLECT_QUEUE_LINES + COLLECT_WORKERS lines (a few MB each) are held at once."""
        unknown = 0
        send, receive = anyio.create_memory_object_stream[bytes](COLLECT_QUEUE_LINES)

        async def handle(lines: MemoryObjectReceiveStream[bytes]) -> None:
            nonlocal unknown
            async with lines:
                async for line in lines:
                    # Decoding a line's images is CPU work: off the event loop.
                    now = self._now().timestamp()
                    answer = await run_cpu_work(len(line), line_answer, line, now)
                    # Taken from `waiting` before any await: a repeated custom_id handled
                    # by another task at the same time finds it gone.
                    spec = waiting.pop(answer.custom_id, None) if answer is not None else None
                    if answer is None or spec is None:
                        unknown += 1  # not JSON, not a waiting job of this batch, repeated
                    elif not answer.not_run:  # not run: `close` puts the job back
                        await self._record(batch, spec, answer)

        try:
            async with anyio.create_task_group() as workers:
                async with receive:
                    for _ in range(COLLECT_WORKERS):
                        workers.start_soon(handle, receive.clone())
                async with send:
                    async for line in self._client.lines(file_id):
                        await send.send(line)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        if unknown:
            log.warning("%s: batch %s: %d lines of file %s were not this batch's waiting jobs "
                        "(unknown or repeated custom_id, or not JSON); ignored",
                        self.profile.name, batch.provider_batch_id, unknown, file_id)  # fmt: skip

    async def _record(self, batch: BatchRecord, spec: JobSpec, answer: LineAnswer) -> bool:
        if answer.result is not None:
            result = answer.result
            cost = self._book.cost(spec, result.usage, None)
            cost = cost * BATCH_DISCOUNT if cost is not None else None
            try:
                written = await anyio.to_thread.run_sync(self._outputs.write, spec, result.images)
            except OutputError as exc:
                lost = AttemptRecord(Outcome.OUTPUT_ERROR, http_status=200,
                                     error_message=str(exc), request_id=result.request_id,
                                     usage=result.usage, cost_usd=cost)  # fmt: skip
                self.report.failed += 1
                return await self._batches.record_line(
                    batch, spec, self._owner, lost, state=JobState.FAILED,
                    reason=f"output not written: {exc}", kind=FailureKind.OUTPUT,
                )  # fmt: skip
            record = AttemptRecord(Outcome.SUCCEEDED, http_status=200,
                                   request_id=result.request_id, usage=result.usage,
                                   cost_usd=cost)  # fmt: skip
            done = await self._batches.record_line(
                batch, spec, self._owner, record, written, state=JobState.SUCCEEDED
            )
            if done:
                self.report.succeeded += 1
                self.report.spent_usd += cost or 0.0
                if cost is not None:  # the estimates learn, at live prices
                    self._book.observe(spec, cost / BATCH_DISCOUNT)
            return done
        error = answer.error
        assert error is not None  # a LineAnswer has a result, an error, or not_run
        record = _failed_record(error)
        if isinstance(error, ProviderStop):
            self._stop(error)
            return await self._batches.record_line(
                batch, spec, self._owner, record, state=JobState.PENDING, reason=error.describe()
            )
        if isinstance(error, PermanentJobError):
            self.report.failed += 1
            return await self._batches.record_line(
                batch, spec, self._owner, record, state=JobState.FAILED,
                reason=error.describe(), kind=FailureKind.REFUSED,
            )  # fmt: skip
        return await self._batches.record_line(  # retryable: in the next batch
            batch, spec, self._owner, record, state=JobState.PENDING,
            reason=error.describe(), max_attempts=self._max_attempts,
        )  # fmt: skip

    async def _clean_up(self, batch: BatchRecord, info: dict[str, Any]) -> None:
        """The batch's files at the provider go once read; the uploaded images once no
        open batch of this profile may still read them (`--keep-files` keeps all)."""
        if self._keep_files:
            return
        for file_id in (batch.input_file_id, info.get("output_file_id"), info.get("error_file_id")):
            if file_id:
                await self._quietly_delete(str(file_id))
        await self._batches.update(batch.id, files_deleted_at=self._now())
        still_open = [
            b for b in await self._batches.open_batches() if b.provider == self.profile.name
        ]
        if not still_open:
            uploads = await self._batches.all_uploads(self.profile.name)
            for file_id in uploads:
                await self._quietly_delete(file_id)
            await self._batches.forget_uploads(self.profile.name, uploads)

    async def _quietly_delete(self, file_id: str) -> None:
        try:
            await self._client.delete_file(file_id)
        except ProviderError as exc:  # housekeeping must never cost a result
            log.warning("%s: could not delete file %s at the provider: %s",
                        self.profile.name, file_id, exc.describe())  # fmt: skip

    # -- submit -------------------------------------------------------------------------
    async def submit(self) -> None:
        """Every pending job of this profile, in batches of `batch.max_lines` lines."""
        while not self.report.stops:
            lease_until = self._now() + timedelta(seconds=CLAIM_LEASE_S)
            jobs = await self._store.claim_many(
                self._manifest, self.profile.name, self._owner, lease_until,
                self.profile.batch_max_lines,
            )  # fmt: skip
            if not jobs:
                break
            try:
                await self._submit_jobs([job.spec for job in jobs])
            except ProviderStop as exc:
                self._stop(exc)
            except ProviderError as exc:  # a refused upload, a network failure
                self._hold("could not submit a batch", exc)
            finally:  # whatever was not submitted goes back
                for job in jobs:
                    if await self._store.holds(job.spec.key, self._owner):
                        await self._store.release(job.spec.key, self._owner)
            if len(jobs) < self.profile.batch_max_lines:
                break
        await self._count_open()

    async def _submit_jobs(self, specs: Sequence[JobSpec]) -> None:
        """Pre-flight and upload the jobs' inputs (the profile's `concurrency` at a time,
        each picture once), then send their lines in batches, in claim order."""
        within: list[JobSpec] = []
        for spec in specs:  # the budget is taken in order, before anything is uploaded
            if not self._budget.take(self._batch_estimate(spec)):
                cap = self._budget.cap
                message = (
                    f"--max-cost ${cap:g}: the lines submitted already are estimated at "
                    f"${self._budget.committed:.4f}; the rest wait for the next run"
                )
                self.report.stops.append(StopNotice("*", "limit", message, ExitCode.EARLY))
                break  # what was not submitted goes back to pending (see `submit`)
            within.append(spec)
        lines: dict[int, tuple[JobSpec, bytes]] = {}
        limiter = anyio.CapacityLimiter(max(1, self.profile.concurrency))
        uploading: dict[str, anyio.Lock] = {}  # one upload per picture, however many jobs

        async def prepare_one(index: int, spec: JobSpec) -> None:
            async with limiter:
                try:
                    limits = self._limits(spec.model)
                    request = await anyio.to_thread.run_sync(self._prepare, spec, limits)
                except InputError as exc:
                    await self._store.fail(spec.key, self._owner, str(exc), FailureKind.INPUT)
                    self.report.failed += 1
                    return
                try:
                    image_id, mask_id = await self._upload_inputs(request, uploading)
                except InputChanged as exc:  # read again to upload: not what was checked
                    await self._store.fail(spec.key, self._owner, str(exc), FailureKind.INPUT)
                    self.report.failed += 1
                    return
                lines[index] = (spec, edit_line(spec.key, request, image_id, mask_id))

        try:
            async with anyio.create_task_group() as uploads:
                for index, spec in enumerate(within):
                    uploads.start_soon(prepare_one, index, spec)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        for chunk in _split([lines[index] for index in sorted(lines)]):
            await self._send_batch(chunk)

    async def _upload_inputs(
        self, request: EditRequest, uploading: dict[str, anyio.Lock]
    ) -> tuple[str, str | None]:
        named = [("image", request.image), *([("mask", request.mask)] if request.mask else [])]
        ids = []
        for name, part in named:
            # A file left on disk by pre-flight was keyed by its digest: read only to upload.
            source = part.source
            digest = source.sha256 if source else hashlib.sha256(part.data).hexdigest()
            async with uploading.setdefault(digest, anyio.Lock()):  # another job's picture
                known = await self._batches.known_uploads(self.profile.name, [digest])
                file_id = known.get(digest)
                if file_id is None:
                    data = await anyio.to_thread.run_sync(part_bytes, name, part)
                    uploaded = await self._client.upload_image(data, part.filename)
                    file_id = str(uploaded["id"])
                    await self._batches.save_upload(
                        self.profile.name, digest, file_id, len(data),
                        _time(uploaded.get("expires_at")),
                    )  # fmt: skip
            ids.append(file_id)
        return ids[0], ids[1] if len(ids) > 1 else None

    async def _send_batch(self, chunk: Sequence[tuple[JobSpec, bytes]]) -> None:
        body = b"\n".join(line for _, line in chunk) + b"\n"
        batch_id = uuid.uuid4().hex
        uploaded = await self._client.upload(body, f"runner-{batch_id}.jsonl", "batch")
        batch = BatchRecord(
            id=batch_id, provider=self.profile.name, manifest=self._manifest,
            input_file_id=str(uploaded["id"]), lines=len(chunk), run_id=self._owner,
            created_at=self._now(),
        )  # fmt: skip
        estimates = {spec.key: self._batch_estimate(spec) for spec, _ in chunk}
        # On record before the provider hears of it: a crash from here on leaves the row
        # (status "creating") that the next run resolves by the tag, never a second batch.
        await self._batches.submit(batch, estimates, self._owner)
        created = await self._client.create_batch(
            batch.input_file_id, self.profile.batch_window, {"runner_batch": batch_id}
        )
        await self._batches.update(
            batch_id,
            provider_batch_id=str(created.get("id")),
            status=str(created.get("status") or "validating"),
            expires_at=_time(created.get("expires_at")),
        )
        self.report.submitted += len(chunk)
        log.info("%s: submitted %d jobs in batch %s", self.profile.name, len(chunk),
                 created.get("id"))  # fmt: skip

    # -- shared -------------------------------------------------------------------------
    def _batch_estimate(self, spec: JobSpec) -> float | None:
        estimate = self._book.estimate(spec)
        return estimate * BATCH_DISCOUNT if estimate is not None else None

    def _stop(self, exc: ProviderStop) -> None:
        notice = StopNotice(self.profile.name, exc.outcome, exc.describe(), exc.exit_code)
        if notice not in self.report.stops:
            self.report.stops.append(notice)

    def _hold(self, what: str, exc: ProviderError) -> None:
        """Stop this profile for this run with the work kept (exit 75, run again)."""
        message = f"{what}: {exc.describe()}"
        log.error("%s: %s", self.profile.name, message)
        self.report.stops.append(StopNotice(self.profile.name, "batch", message, ExitCode.EARLY))

    async def _count_open(self) -> None:
        mine = [
            b for b in await self._batches.open_batches(self._manifest)
            if b.provider == self.profile.name
        ]  # fmt: skip
        self.report.open_batches = len(mine)
        self.report.open_jobs = sum(b.lines for b in mine)


def _split(lines: Sequence[tuple[JobSpec, bytes]]) -> list[list[tuple[JobSpec, bytes]]]:
    """Chunks under the input file's byte limit (lines are already at most max_lines)."""
    chunks: list[list[tuple[JobSpec, bytes]]] = []
    size = 0
    for item in lines:
        if not chunks or size + len(item[1]) + 1 > MAX_INPUT_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += len(item[1]) + 1
    return chunks


def _failed_record(error: ProviderError) -> AttemptRecord:
    outcome = Outcome.PERMANENT if isinstance(error, PermanentJobError) else Outcome.RETRYABLE
    return AttemptRecord(
        outcome,
        http_status=error.status_code,
        error_code=error.provider_code,
        error_message=error.describe(),
        request_id=error.request_id,
        usage=error.usage,
        counted=not isinstance(error, ProviderStop),
    )


def _why_not_run(status: str, info: dict[str, Any]) -> str:
    if status == "failed":
        errors = (info.get("errors") or {}).get("data") or []
        first = errors[0].get("message") if errors and isinstance(errors[0], dict) else None
        return f"the provider refused its batch: {first or 'no reason given'}"
    if status == "cancelled":
        return "its batch was cancelled before running it"
    return f"its batch {status} before running it; sent again in the next batch"


def _time(epoch: Any) -> datetime | None:
    return datetime.fromtimestamp(float(epoch), UTC) if isinstance(epoch, int | float) else None


def waiting_message(reports: Sequence[BatchReport]) -> str | None:
    """`N jobs in M batches at OpenAI; run again to collect`, or None when none are open."""
    jobs = sum(r.open_jobs for r in reports)
    batches = sum(r.open_batches for r in reports)
    if not batches:
        return None
    return (
        f"{jobs} job{'s' if jobs != 1 else ''} in {batches} batch{'es' if batches != 1 else ''} "
        "at OpenAI; run again to collect"
    )
