"""Composition root: each use case wires manifest, store, providers and pool together.

The CLI calls these and renders what they return; nothing here prints. `runner run` itself
lives in `running`; what every command shares, in `session`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Collection, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import anyio.to_thread

from runner.app import checking
from runner.app.batch_mode import BATCH_DISCOUNT
from runner.app.checking import NOT_SENT_AGAIN, ChunkChecker, checked_chunks
from runner.app.context import (
    Options,
    opened,
    parse,
    resolve_db,
    synced_view,
)
from runner.app.reading import JobFilter, jobs, one_job, status
from runner.app.run_jobs import (
    RunOutcome,
    exit_code_for,
    run,
)
from runner.dialects import ModelList, dialect_named
from runner.dialects.factory import (
    Credential,
    credentials,
    http_client,
)
from runner.dialects.openai.batch import OpenAIBatchClient
from runner.errors import InputError
from runner.files.html_report import (
    REPORT_MAX_JOBS,
    ProgressCallback,
    ReportJob,
    ReportStats,
    ReportTotals,
    default_output,
    manifest_folder,
    sample_for_report,
    write_report,
)
from runner.files.object_store import ObjectOutputs
from runner.files.preflight import prepare_request
from runner.manifest import expand
from runner.manifest.expand import ParsedManifest
from runner.records import (
    ExportRow,
    JobSpec,
    JobState,
    output_place,
)
from runner.store.engine import peek_output_paths
from runner.store.protocol import Store
from runner.store.tables import utcnow
from runner.store.threaded import ThreadedStore

__all__ = [
    "JobFilter",
    "Options",
    "RunOutcome",
    "exit_code_for",
    "jobs",
    "run",
    "status",
]
log = logging.getLogger("runner")


async def export(path: Path, options: Options) -> Sequence[ExportRow]:
    async with synced_view(path, options, check_inputs=False) as view:
        if view is not None:
            return await view.store.export_rows(view.id)
    async with opened(await parse(path), options) as session:
        return await session.store.export_rows(session.id)


async def export_dataset(path: Path, options: Options, fmt: str, target: Path) -> int:
    """`export --format parquet|imagefolder` (see table_export.py); returns rows / images."""
    from runner.app import table_export

    parsed = await parse(path)

    async def write(source: table_export.ExportSource) -> int:
        if fmt == "imagefolder":
            read = ObjectOutputs().read
            return await anyio.to_thread.run_sync(
                table_export.write_imagefolder, target, source.pages(), read
            )
        return await anyio.to_thread.run_sync(table_export.write_parquet, target, parsed, source)

    # Synced again only when something changed: the job list is the database's as it is
    # (a table of 100,000 rows is then read once, for its columns, not twice).
    async with synced_view(path, options, check_inputs=True) as view:
        if view is not None:
            return await write(table_export.ExportSource(view.store, view.id))
    async with opened(parsed, options) as session:
        return await write(table_export.ExportSource(session.store, session.id))


async def retry(path: Path, options: Options, key: str | None = None) -> int:
    async with opened(await parse(path), options) as session:
        full_key = await one_job(session, key) if key is not None else None
        return await session.store.retry(session.id, full_key)


async def cancel(
    path: Path, options: Options, key: str | None, states: Collection[JobState]
) -> int:
    """Cancelled jobs are never sent; `runner retry --job KEY` brings one back. Submitted
    jobs (batch mode) are cancelled at the provider, batch by batch: lines that finished
    first are still collected (and paid for), the rest end cancelled when collected."""
    parsed = await parse(path)
    async with opened(parsed, options) as session:
        full_key = await one_job(session, key) if key is not None else None
        count = 0
        if JobState.SUBMITTED in states and isinstance(session.store, ThreadedStore):
            count += await _cancel_batches(parsed, session.store, session.id)
        others = [s for s in states if s is not JobState.SUBMITTED]
        if others:
            count += await session.store.cancel(session.id, full_key, others)
        return count


async def _cancel_batches(parsed: ParsedManifest, store: ThreadedStore, manifest: str) -> int:
    batches = [b for b in await store.batches.open_batches(manifest) if b.provider_batch_id]
    if not batches:
        return 0
    creds = credentials(parsed, {b.provider for b in batches})
    cancelled = 0
    for batch in batches:
        profile = parsed.providers[batch.provider]
        key = creds[batch.provider].api_key
        assert batch.provider_batch_id is not None and key is not None  # filtered above
        async with http_client(profile) as client:
            api = OpenAIBatchClient(profile.base_url, key, client)
            answer = await api.cancel_batch(batch.provider_batch_id)
        await store.batches.update(batch.id, status=str(answer.get("status") or "cancelling"))
        cancelled += len(await store.batches.waiting_lines(batch.id))
    return cancelled


async def report(
    path: Path,
    options: Options,
    output: Path | None = None,
    on_progress: ProgressCallback | None = None,
    limit: int | None = REPORT_MAX_JOBS,
) -> ReportStats:
    """The batch's HTML report at `output` (default: report.html beside the manifest).

    `on_progress(done, total)` is called from a worker thread while thumbnails are made.
    With more than `limit` jobs (None: no limit) the page shows a sample, and says so.
    """
    async with opened(await parse(path), options) as session:
        rows = await session.store.export_rows(session.id)
        summary = await session.store.summary(session.id)
    report_jobs = [
        ReportJob(
            key=row.key,
            image=Path(row.image),
            mask=Path(row.mask) if row.mask else None,
            prompt=row.prompt,
            provider=row.provider,
            model=row.model,
            state=row.status,
            attempts=row.attempts,
            cost_usd=row.usage.cost_usd,
            error=row.error,
            outputs=tuple(output_place(p) for p in row.outputs),
        )
        for row in rows
    ]
    report_jobs, sampled = sample_for_report(report_jobs, limit)
    generated_at = options.wall_clock()
    target = output if output is not None else default_output(path)
    workers = max(1, os.cpu_count() or 1)  # decoding the images is most of the time

    def build() -> ReportStats:
        totals = ReportTotals(
            counts=summary.counts,
            cost_usd=summary.totals.cost_usd,
            manifest=str(path),
            generated_at=generated_at,
            folder=manifest_folder(path),  # touches the disk: here, not on the event loop
            sampled=sampled,
        )
        return write_report(
            report_jobs,
            totals,
            target,
            workers=workers,
            on_progress=on_progress,
            read_object=ObjectOutputs().read,
        )

    return await anyio.to_thread.run_sync(build)


@dataclass(frozen=True, slots=True)
class ModelRow:
    provider: str
    dialect: str
    model: str
    limits: str
    price: str


async def models(path: Path, options: Options) -> tuple[list[ModelRow], list[str]]:
    """Each provider profile's edit models with their limits and prices, and a note per
    profile whose list could not be had."""
    parsed = await parse(path)
    rows: list[ModelRow] = []
    notes: list[str] = []
    async with opened(parsed, options) as session:
        catalogues = await _catalogues(parsed, session.store, options.wall_clock())
    for name, profile in parsed.providers.items():
        found = dialect_named(profile.dialect).model_rows(catalogues.get(name))
        if found is None:
            notes.append(f"{name}: model list unavailable; built-in prices apply")
            continue
        rows.extend(ModelRow(name, profile.dialect, *row) for row in found)
    return rows, notes


@dataclass(frozen=True, slots=True)
class JobCheck:
    entry: int
    image: str
    problem: str | None
    estimated_cost_usd: float | None


@dataclass(slots=True)
class Validation:
    """What `validate` found, tallied as the manifest is read a chunk at a time: the jobs
    that would fail are kept, the others only counted."""

    path: Path
    jobs: int = 0  # distinct jobs in the manifest
    left: int = 0  # of them, left to send (done ones are not checked again)
    done: int = 0  # jobs the database already has as succeeded or cancelled
    bad: list[JobCheck] = field(default_factory=list)  # left to send, but would fail
    estimated_cost_usd: float = 0.0  # of the good ones left; a model without a price adds 0
    unpriced: int = 0  # good ones left whose model has no known price
    notes: Sequence[str] = ()

    def add(self, check: JobCheck) -> None:
        self.left += 1
        if check.problem:
            self.bad.append(check)
        elif check.estimated_cost_usd is None:
            self.unpriced += 1
        else:
            self.estimated_cost_usd += check.estimated_cost_usd


async def validate(path: Path, options: Options | None = None) -> Validation:
    """Everything `run` checks before sending, for every job it would send; nothing is
    sent or stored, and no key is needed (Venice's public model list is fetched, as `run`
    would). The database, where there is one, is only read: what it has as done is not
    checked or counted again."""
    options = options or Options()
    parsed = await parse(path)
    creds, notes = _checking_credentials(parsed, parsed.provider_names)
    url = resolve_db(parsed, options.db)
    has_globs = any(d.glob is not None for d in parsed.entry_drafts)
    known_outputs = await anyio.to_thread.run_sync(peek_output_paths, url) if has_globs else None
    catalogues = await _catalogues(parsed, None, utcnow())
    async with AsyncExitStack() as stack:  # the checkers need a client, never use it
        checkers = {
            name: dialect_named(profile.dialect).build(
                profile,
                creds[name],
                await stack.enter_async_context(http_client(profile)),
                catalogues.get(name),
            )
            for name, profile in parsed.providers.items()
            if name in creds
        }
    books = {
        name: dialect_named(profile.dialect).price_book(
            parsed.pricing.get(name, {}), catalogues.get(name)
        )
        for name, profile in parsed.providers.items()
    }
    found = Validation(parsed.path, notes=notes)

    def check(spec: JobSpec, preread: Mapping[Path, bytes]) -> tuple[str | None, float | None]:
        """(what is wrong, its estimated cost): what crosses back from a worker; the job's
        place and image are known where the verdict arrives."""
        checker = checkers[spec.provider]
        try:
            limits = checker.limits_for(spec.model)
            # Its digests were taken a moment ago, from these files: not hashed again here
            # (a send hashes again, to catch a file changed since it was queued).
            request = prepare_request(spec, limits, decode=False, rehash=False, preread=preread)
            checker.check_request(request)
            problem = None
        except InputError as exc:
            problem = str(exc)
        estimate = books[spec.provider].estimate(spec)
        if estimate is not None and parsed.providers[spec.provider].batched:
            estimate *= BATCH_DISCOUNT  # mode: batch is billed at the batch price
        return problem, estimate

    def check_all() -> None:
        # A chunk at a time, the database only read (digests cached by `run`, jobs done);
        # each chunk's files are checked in worker processes where there are cores to spare.
        resolver = parsed.resolver(known_outputs or frozenset())
        checker = ChunkChecker(url, parsed.output_dir, check)
        chunks = resolver.draft_chunks(min(expand.CHUNK_JOBS, checking.WORK_CHUNK_JOBS))
        # Closed as it ends, error or not: its workers stop then, not when the error is.
        with contextlib.closing(checked_chunks(checker, chunks)) as verdicts:
            for drafts, verdict in verdicts:
                if stop.is_set():  # the command is gone (see below)
                    return
                specs = verdict.specs(drafts, parsed.output_dir)
                keyed = resolver.admit(drafts, specs, verdict.plans)
                for (draft, spec, first), job in zip(keyed, verdict.checks, strict=True):
                    if not first:
                        continue
                    found.jobs += 1
                    if verdict.states.get(spec.key) in NOT_SENT_AGAIN:
                        found.done += 1
                    elif draft.problem is not None:  # an unusable table row: no image to name
                        found.add(JobCheck(spec.entry, "", draft.problem, None))
                    elif job is not None:
                        found.add(JobCheck(spec.entry, str(spec.image), *job))

    # A signal ends the command (exit 75) by tearing down its event loop: the thread is
    # abandoned then, and stops at its next chunk instead of checking the rest unseen.
    stop = threading.Event()
    try:
        await anyio.to_thread.run_sync(check_all, abandon_on_cancel=True)
    finally:
        stop.set()
    return found


def _checking_credentials(
    parsed: ParsedManifest, names: set[str]
) -> tuple[dict[str, Credential], list[str]]:
    """Credentials for checking only: an unset variable is a note, not an error (checks
    send nothing), while a key that is set but malformed is refused as `run` would."""
    found: dict[str, Credential] = {}
    notes: list[str] = []
    for name in sorted(names):
        profile = parsed.providers[name]
        env = profile.secret_env
        if env and not os.environ.get(env, "").strip():
            # A placeholder of the right kind: no request is ever made with it.
            found[name] = Credential(api_key="" if profile.auth != "x402" else None)
            notes.append(f"{name}: {env} is not set; `runner run` will need it")
        else:
            found.update(credentials(parsed, {name}))
    return found, notes


async def _catalogues(
    parsed: ParsedManifest, store: Store | None, now: datetime
) -> dict[str, ModelList]:
    """Each profile's model list, where its dialect has one (`store`: the database's
    day-old copy may do)."""
    found: dict[str, ModelList] = {}
    for name, profile in parsed.providers.items():
        if not dialect_named(profile.dialect).has_catalogue:
            continue
        async with http_client(profile) as client:
            catalogue = await dialect_named(profile.dialect).load_catalogue(
                profile, client, store, now
            )
        if catalogue is not None:
            found[name] = catalogue
    return found
