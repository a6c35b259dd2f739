"""`runner run`: from a manifest to a finished (or cleanly stopped) run.

Order matters: everything that can be refused (manifest, limits, credentials, prices under
a budget) is refused before the run is recorded or anything is sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import anyio
import anyio.abc

from runner.app.batch_mode import (
    BATCH_DISCOUNT,
    BatchBudget,
    BatchLane,
    BatchReport,
    waiting_message,
)
from runner.app.context import Options, SyncProgress, open_manifest, pages, resolve_db
from runner.dialects import dialect_named
from runner.dialects.factory import (
    Credential,
    credentials,
    http_client,
)
from runner.dialects.openai.batch import OpenAIBatchClient
from runner.engine.budget import LimitGuard, ResolvedLimits
from runner.engine.pacing import ProviderGate
from runner.engine.pool import Pool, PoolReport, Unrecorded
from runner.engine.ports import Lane, Provider
from runner.engine.pricing import PriceBook
from runner.errors import ExitCode, ManifestError, OutputError, StopNotice, StoreError
from runner.files import journal, procs
from runner.files.local import Outputs, local_files
from runner.files.outputs import sweep_temp_files
from runner.files.preflight import prepare_request
from runner.manifest.durations import format_duration, parse_deadline
from runner.manifest.expand import ParsedManifest
from runner.records import (
    JobSpec,
    JobState,
    Manifest,
    ProgressReporter,
    ProviderProfile,
    RunLimits,
    Snapshot,
    Summary,
    Totals,
)
from runner.settings import SystemClock
from runner.signals import ROUTER
from runner.store.engine import redact_url
from runner.store.protocol import RunInfo, Store
from runner.store.threaded import ThreadedStore

log = logging.getLogger("runner")
TO_DO = frozenset({JobState.PENDING.value, JobState.RUNNING.value})
PROGRESS_TICK_S = 1.0
# run --wait: how long between looks at open batches, doubling up to the most.
BATCH_POLL_FIRST_S = 30.0
BATCH_POLL_MAX_S = 600.0


@dataclass(frozen=True, slots=True)
class RunOutcome:
    exit_code: ExitCode
    summary: Summary
    report: PoolReport
    new_jobs: int
    stops: Sequence[StopNotice] = field(default_factory=tuple)
    elapsed_s: float = 0.0  # from the first request to the last record


def resolve_limits(parsed: ParsedManifest, flags: RunLimits, now: datetime) -> ResolvedLimits:
    """Flags win over the manifest's `limits:`, one key at a time."""
    deadline_text = flags.deadline or parsed.limits.deadline
    deadline = None
    if deadline_text:
        try:
            deadline = parse_deadline(deadline_text, now.astimezone())
        except ValueError as exc:
            field_name = "--deadline" if flags.deadline else "limits.deadline"
            raise ManifestError(str(exc), file=str(parsed.path), field=field_name) from None
    return ResolvedLimits(
        deadline=deadline,
        max_jobs=flags.max_jobs or parsed.limits.max_jobs,
        max_cost_usd=flags.max_cost_usd or parsed.limits.max_cost_usd,
    )


async def run(path: os.PathLike[str] | str, options: Options) -> RunOutcome:
    async with open_manifest(Path(path), options, behind=True) as (parsed, session):
        outputs = Outputs()
        try:
            await anyio.to_thread.run_sync(outputs.ensure_writable, parsed.output_dir)
        except OutputError as exc:
            raise ManifestError(str(exc), file=str(parsed.path), field="output_dir") from exc
        limits = resolve_limits(parsed, options.limits, options.wall_clock())
        manifest, store = session.manifest, session.store
        feed = session.sync
        if feed is not None:
            await _until_work_or_synced(store, session.id, feed)
        # What the run starts with: the jobs the sync has written (all, once it is over).
        streaming = feed is not None and not feed.done
        counted = feed.synced if feed is not None and streaming else None
        counts = JobCounts(await store.state_counts(session.id, (0, counted)))
        # Only providers with work left need a key: a finished manifest re-runs keyless.
        # Jobs in open batches are work left: their batches are collected with the key.
        # While the rest of the manifest is still being read, its jobs may need any of them.
        wanted = counts.providers(TO_DO | {JobState.SUBMITTED.value})
        creds = credentials(parsed, parsed.provider_names if streaming else wanted)
        # Temp files of dead runs are swept by a run with work to do (an object store has
        # none): a finished manifest's re-run does not list a folder of 100,000 outputs.
        if isinstance(manifest.output_dir, Path) and (creds or streaming):
            await anyio.to_thread.run_sync(sweep_temp_files, manifest.output_dir)
        await _reclaim_dead_runs(store)
        in_batches = counts.count({JobState.SUBMITTED.value})
        log.info(
            "%s: %d jobs (%d new), %d to send%s%s; database %s",
            manifest.path.name,
            counts.count(),
            session.new_jobs,
            counts.count(TO_DO),
            f", {in_batches} in open batches" if in_batches else "",
            " so far (the rest of the manifest is read while these are sent)" if streaming else "",
            redact_url(resolve_db(parsed, options.db)),
        )
        run_info = RunInfo(
            uuid.uuid4().hex, str(manifest.path), procs.hostname(), os.getpid(), procs.process_tag()
        )
        done_before = counts.count({JobState.SUCCEEDED.value, JobState.FAILED.value})
        db_folder = _database_folder(resolve_db(parsed, options.db))
        work = _Work(
            manifest,
            store,
            creds,
            counts,
            run_info.id,
            options,
            limits,
            done_before,
            outputs,
            db_folder,
            feed if streaming else None,
            counted,
        )
        await store.start_run(run_info)
        # A 402 or a refused key from an earlier run stopped these providers for every
        # runner; starting a run (after a top-up, a new key) is how they are tried again.
        await store.clear_provider_stops(creds)
        exit_code: ExitCode = ExitCode.FAILED
        stop_reason: str | None = "interrupted"
        started = time.monotonic()
        try:
            report = await work.run()
            if late := (feed.error if feed is not None else None) or work.late_error:
                raise late  # a bad row, found while earlier rows were sent: exit 2 now
            exit_code = await _final_exit_code(store, str(manifest.path), report)
            stop_reason = "; ".join(_stop_text(s) for s in report.stops) or None
        finally:
            with anyio.CancelScope(shield=True):
                await _end_run(store, run_info.id, exit_code, stop_reason)
        summary = await _summary_if_readable(store, str(manifest.path))
        elapsed = time.monotonic() - started
        return RunOutcome(
            exit_code, summary, report, session.new_jobs, tuple(report.stops), elapsed
        )


async def _until_work_or_synced(store: Store, manifest: str, feed: SyncProgress) -> None:
    """Wait for the sync running behind the run until the jobs it has written include
    work to do (then sending starts, the rest is read meanwhile) or it is over. A manifest
    error found by then is told before anything is sent."""
    while not feed.done:
        synced = feed.synced
        if synced and JobCounts(await store.state_counts(manifest, (0, synced))).count(TO_DO):
            return
        if synced:
            feed.sending()  # no work in what is written: the sync must read on to find some
        await feed.changed(synced)
    if feed.error is not None:
        raise feed.error


def _stop_text(stop: StopNotice) -> str:
    """`venice: payment required …`; a stop of the whole run (a limit, a signal) as is."""
    return stop.message if stop.provider == "*" else f"{stop.provider}: {stop.message}"


async def _final_exit_code(store: Store, manifest: str, report: PoolReport) -> ExitCode:
    try:
        counts = await store.state_counts(manifest)
    except StoreError:
        return ExitCode.EARLY  # a database that fails to read after a stop: run again later
    return exit_code_for(report, {state for (_provider, state), n in counts.items() if n})


async def _end_run(store: Store, run_id: str, exit_code: int, stop_reason: str | None) -> None:
    """Close the run's record; a database that takes no writes keeps it open, and the next
    run on this host, finding our process gone, closes it and takes back our jobs."""
    try:
        await store.end_run(run_id, exit_code, stop_reason)
    except StoreError as exc:
        log.error("could not record the end of this run: %s", exc)


async def _summary_if_readable(store: Store, manifest: str) -> Summary:
    try:
        return await store.summary(manifest)
    except StoreError as exc:
        log.error("could not read the totals: %s", exc)
        return Summary(counts={}, totals=Totals())


def _database_folder(url: str) -> Path | None:
    """Where a SQLite database's file lives (its disk must not fill up); None for a server."""
    if not url.startswith("sqlite") or ":///" not in url:
        return None
    return Path(url.split(":///", 1)[1]).parent


async def _reclaim_dead_runs(store: Store) -> int:
    """Runs on this host whose process is gone: their jobs go back to pending at once,
    instead of after their leases expire. Returns how many jobs came back."""
    runs = await store.unfinished_runs(procs.hostname())
    dead = [r.id for r in runs if not procs.same_process_alive(r.pid, r.process_tag)]
    return await store.reclaim_dead_runs(dead)


@dataclass(slots=True)
class _Work:
    manifest: Manifest
    store: Store
    creds: Mapping[str, Credential]
    counts: JobCounts  # the manifest's jobs per provider and state as the run starts
    owner: str
    options: Options
    limits: ResolvedLimits
    done_before: int
    outputs: Outputs
    db_folder: Path | None = None
    feed: SyncProgress | None = None  # the manifest's sync, still running behind the run
    counted_below: int | None = None  # `counts` are of the jobs before this position
    # What is left, priced (`_price_jobs`): live jobs, and jobs for (or in) batches.
    live_estimate: _EstimateOfWhatIsLeft | None = None
    batch_estimate: _EstimateOfWhatIsLeft | None = None
    late_error: ManifestError | None = None  # a job found unpriceable after sending began

    @property
    def to_do(self) -> int:
        return self.counts.count(TO_DO)

    async def run(self) -> PoolReport:
        options = self.options
        clock = options.clock or SystemClock()
        profiles = {
            name: _with_concurrency(self.manifest.providers[name], options.concurrency)
            for name in self.creds
        }
        async with AsyncExitStack() as stack:
            providers: dict[str, Provider] = {}
            books: dict[str, PriceBook] = {}
            for name, profile in profiles.items():
                dialect = dialect_named(profile.dialect)
                client = await stack.enter_async_context(http_client(profile))
                catalogue = await dialect.load_catalogue(
                    profile, client, self.store, options.wall_clock()
                )
                providers[name] = dialect.build(
                    profile, self.creds[name], client, catalogue, _epoch(options)
                )
                books[name] = dialect.price_book(self.manifest.pricing.get(name, {}), catalogue)
            await self._learn_from_earlier_runs(books)
            batched = {name: p for name, p in profiles.items() if p.batched}
            await self._price_jobs(books, batched, (0, self.counted_below))
            batch_reports = await self._run_batches(batched, providers, books, stack)
            profiles = {name: p for name, p in profiles.items() if not p.batched}
            lanes = {
                name: Lane(
                    providers[name],
                    ProviderGate(
                        name,
                        clock,
                        p.requests_per_minute,
                        p.breaker_failures,
                        options.settings.breaker_window_s,
                    ),
                    p.concurrency,
                    books[name],
                )
                for name, p in profiles.items()
            }
            folders = [("database folder", self.db_folder)] if self.db_folder else []
            pool = Pool(
                self.store,
                lanes,
                manifest=str(self.manifest.path),
                owner=self.owner,
                settings=options.settings,
                files=local_files(folders, self.outputs),
                clock=clock,
                wall_clock=options.wall_clock,
                limits=LimitGuard(self.limits, options.wall_clock) if self.limits.any else None,
                reclaim_dead=lambda: _reclaim_dead_runs(self.store),
                keep_unrecorded=self._keep_unrecorded,
                feed=self.feed,
            )
            more_coming = self.feed is not None
            if (self.counts.count(TO_DO, profiles) or more_coming) and self.live_estimate:
                report = await self._drive(pool, self.live_estimate, books)
            else:
                report = PoolReport()
            return _with_batches(report, batch_reports)

    async def _run_batches(
        self,
        profiles: Mapping[str, ProviderProfile],
        providers: Mapping[str, Provider],
        books: Mapping[str, PriceBook],
        stack: AsyncExitStack,
    ) -> list[BatchReport]:
        """Collect, then submit, for each `mode: batch` profile; with --wait, again and
        again (backing off) until no batch is open or the deadline comes."""
        if not profiles:
            return []
        if not isinstance(self.store, ThreadedStore):
            raise ManifestError("mode: batch needs a database (SQLite or PostgreSQL)")
        lanes = []
        budget = BatchBudget(self.limits.max_cost_usd)  # shared by the batch profiles
        for name, profile in profiles.items():
            key = self.creds[name].api_key
            if key is None:
                raise ManifestError(f"providers.{name}: mode: batch needs an API key")
            client = await stack.enter_async_context(http_client(profile))
            lanes.append(
                BatchLane(
                    profile,
                    OpenAIBatchClient(profile.base_url, key, client, _epoch(self.options)),
                    self.store,
                    manifest=str(self.manifest.path),
                    owner=self.owner,
                    outputs=self.outputs,
                    prepare=prepare_request,
                    limits=providers[name].limits_for,
                    book=books[name],
                    now=self.options.wall_clock,
                    keep_files=self.options.keep_files,
                    budget=budget,
                    max_attempts=self.options.settings.retry.max_attempts,
                )
            )
        clock = self.options.clock or SystemClock()
        pause = BATCH_POLL_FIRST_S
        # With no live work, the progress display is the batch lanes': at batch prices.
        live_work = bool(self.counts.providers(TO_DO) - set(profiles))
        progress = None if live_work else _BatchProgress(self, lanes, books)
        while True:
            for lane in lanes:
                await lane.collect()
                if progress is not None:
                    progress.show()
                if not lane.report.stops:
                    await lane.submit()
                if progress is not None:
                    progress.show()
            open_now = sum(lane.report.open_batches for lane in lanes)
            stopped = any(lane.report.stops for lane in lanes)
            if not self.options.wait or not open_now or stopped or self._past_deadline():
                if progress is not None:
                    progress.finish()
                return [lane.report for lane in lanes]
            log.info("%s; next look in %s", waiting_message([lane.report for lane in lanes]),
                     format_duration(pause))  # fmt: skip
            await clock.sleep(pause)
            pause = min(pause * 2, BATCH_POLL_MAX_S)

    async def _follow_sync(
        self, feed: SyncProgress, pool: Pool, books: Mapping[str, PriceBook]
    ) -> None:
        """While the manifest's sync runs behind the pool: price each part it writes and
        count it in (progress, exit code); a manifest error stops the intake (requests out
        finish), and the run then exits 2 with it."""
        manifest = str(self.manifest.path)
        priced = self.counted_below or 0
        while True:
            await feed.changed(priced)
            if feed.error is not None:
                pool.close_intake("manifest", str(feed.error))
                return
            upto = feed.bound
            with anyio.CancelScope(shield=True):  # no store call left running at the end
                try:
                    await self._price_jobs(books, (), (priced, upto))
                except ManifestError as exc:
                    self.late_error = exc
                    pool.close_intake("manifest", str(exc))
                    return
                more = JobCounts(await self.store.state_counts(manifest, (priced, upto)))
            self.counts = self.counts.plus(more)
            self.done_before += more.count({JobState.SUCCEEDED.value, JobState.FAILED.value})
            if upto is None:
                return
            priced = upto

    def _past_deadline(self) -> bool:
        deadline = self.limits.deadline
        return deadline is not None and self.options.wall_clock() >= deadline

    async def _keep_unrecorded(self, items: Sequence[Unrecorded]) -> None:
        entries = [
            journal.LateRecord(item.spec.key, item.ticket.id, item.record, item.outputs)
            for item in items
        ]
        folder = journal.home(self.manifest.output_dir, self.manifest.path)
        await anyio.to_thread.run_sync(journal.keep, folder, self.owner, entries)

    async def _learn_from_earlier_runs(self, books: Mapping[str, PriceBook]) -> None:
        """What earlier runs' replies cost, against their estimates: this run's budget and
        ETA start from measured figures, not only from typical token counts."""
        if not self.counts.count({JobState.SUCCEEDED.value}, books):
            return
        if not self.to_do and self.feed is None:  # nothing to send: no budget, no ETA
            return
        costs = await self.store.succeeded_costs(str(self.manifest.path))
        if not costs:
            return
        async for specs in pages(self.store, str(self.manifest.path), {JobState.SUCCEEDED.value}):
            for spec in specs:
                book = books.get(spec.provider)
                if book is not None and (cost := costs.get(spec.key)) is not None:
                    book.observe(spec, cost)

    async def _price_jobs(
        self,
        books: Mapping[str, PriceBook],
        batched: Collection[str],
        positions: tuple[int, int | None] = (0, None),
    ) -> None:
        """Store each job's price, a page at a time; under a budget, refuse jobs nobody can
        price. Sums what is left, for the progress display's estimate: live jobs, and jobs
        for batches (with those already in open batches). `positions`: those jobs only
        (the part of the manifest synced so far, or a part synced since)."""
        if self.live_estimate is None:
            self.live_estimate = _EstimateOfWhatIsLeft(books)
        if self.batch_estimate is None:
            self.batch_estimate = _EstimateOfWhatIsLeft(books)
        live, batch = self.live_estimate, self.batch_estimate
        manifest = str(self.manifest.path)
        # `counts` are of the first part: nothing to do there, no page of it to read (at
        # 100,000 finished jobs, a walk over every one to find none).
        nothing_to_do = positions == (0, self.counted_below) and not self.to_do
        async for specs in pages(self.store, manifest, () if nothing_to_do else TO_DO, positions):
            prices: dict[str, str] = {}
            for spec in specs:
                book = books.get(spec.provider)
                if book is None:  # a provider with no key: its jobs are not sent
                    continue
                (batch if spec.provider in batched else live).add(spec)
                described = book.describe(spec)
                if described is not None:
                    prices[spec.key] = json.dumps(described, sort_keys=True)
                if self.limits.max_cost_usd is not None and described is None:
                    raise ManifestError(
                        f"no price known for model {spec.model!r} on {spec.provider}, so "
                        f"a --max-cost budget cannot be kept; add it under "
                        f"pricing.{spec.provider}",
                        file=manifest,
                        job=spec.entry,
                        field="model",
                    )
            await self.store.set_prices(prices)
        if batched and self.counts.count({JobState.SUBMITTED.value}, batched):
            async for specs in pages(self.store, manifest, {JobState.SUBMITTED.value}):
                for spec in specs:
                    if spec.provider in batched:
                        batch.add(spec)

    async def _drive(
        self, pool: Pool, estimate_left: _EstimateOfWhatIsLeft, books: Mapping[str, PriceBook]
    ) -> PoolReport:
        reporter = self.options.reporter
        started = time.monotonic()

        def snapshot() -> Snapshot:
            report = pool.report
            left = self.to_do - report.succeeded - report.failed
            per_job = estimate_left.per_job()
            estimated = report.spent_usd + per_job * max(0, left) if per_job is not None else None
            # A signal was announced when it came; other stops show until the run ends.
            shown = [_stop_text(s) for s in report.stops if s.kind != "signal"]
            paused = "; ".join(shown) or None
            return Snapshot(
                total=self.to_do + self.done_before,
                succeeded=report.succeeded,
                failed=report.failed,
                in_flight=report.in_flight,
                retries_waiting=report.retries_waiting,
                spent_usd=report.spent_usd,
                estimated_total_usd=estimated,
                elapsed_s=time.monotonic() - started,
                paused=paused,
                done_before=self.done_before,
            )

        # From here the pool may send: a signal is the run's to handle, not a reason to exit.
        signals = ROUTER.sending() if self.options.handle_signals else _no_signals()
        async with anyio.create_task_group() as helpers:
            if reporter is not None:
                reporter.start(self.to_do + self.done_before)
                helpers.start_soon(_report_progress, reporter, snapshot)
            if self.feed is not None:
                helpers.start_soon(self._follow_sync, self.feed, pool, books)
            async with signals as received:
                if received is not None:
                    helpers.start_soon(_stop_on_signals, pool, self.options.grace_s, received)
                report = await pool.run()
            helpers.cancel_scope.cancel()
        if reporter is not None:
            reporter.finish(snapshot(), "stopped" if report.stops else "completed")
        return report


class _EstimateOfWhatIsLeft:
    """The mean estimate of this run's jobs, as the price books learn (per model, from
    each reply). Static estimates are summed once per provider and model as the jobs are
    priced (`add`), so a progress tick costs one multiplication per model, not one
    estimate per job."""

    def __init__(self, books: Mapping[str, PriceBook]) -> None:
        self._books = books
        self._static: dict[tuple[str, str], float] = {}
        self._priced = 0

    def add(self, spec: JobSpec) -> None:
        static = self._books[spec.provider].static_estimate(spec)
        if static is not None:
            group = (spec.provider, spec.model)
            self._static[group] = self._static.get(group, 0.0) + static
            self._priced += 1

    def per_job(self) -> float | None:
        if not self._priced:
            return None
        learned = sum(
            total * self._books[provider].ratio(model)
            for (provider, model), total in self._static.items()
        )
        return learned / self._priced


@dataclass(frozen=True, slots=True)
class JobCounts:
    """A manifest's jobs per (provider, state), from one query: what a run needs to know
    of 100,000 jobs before it starts, without holding them."""

    by: Mapping[tuple[str, str], int]

    def count(
        self, states: Collection[str] | None = None, providers: Collection[str] | None = None
    ) -> int:
        return sum(
            n
            for (provider, state), n in self.by.items()
            if (states is None or state in states) and (providers is None or provider in providers)
        )

    def plus(self, other: JobCounts) -> JobCounts:
        summed = dict(self.by)
        for group, n in other.by.items():
            summed[group] = summed.get(group, 0) + n
        return JobCounts(summed)

    def providers(self, states: Collection[str]) -> set[str]:
        return {provider for (provider, state), n in self.by.items() if state in states and n}


def _with_concurrency(profile: ProviderProfile, flag: int | None) -> ProviderProfile:
    """The flag (or its environment variable) wins over the manifest's `concurrency`."""
    return profile if flag is None else replace(profile, concurrency=flag)


def _epoch(options: Options) -> Callable[[], float]:
    return lambda: options.wall_clock().timestamp()


async def _report_progress(reporter: ProgressReporter, snapshot: Callable[[], Snapshot]) -> None:
    while True:
        reporter.update(snapshot())
        await anyio.sleep(PROGRESS_TICK_S)


async def _stop_on_signals(pool: Pool, grace_s: float, received: asyncio.Queue[int]) -> None:
    """First SIGINT/SIGTERM: take no new job, let requests out finish for `grace_s`, then
    abandon them (their jobs go back to pending). A second signal abandons them at once;
    later ones change nothing (the process never dies under a request that may be paid)."""
    number = await received.get()
    name = signal.Signals(number).name
    in_flight = pool.report.in_flight
    # Said once, here; the stop itself is recorded in a few words, which is what the end of
    # the run and `runner status` show afterwards.
    pool.halt("signal", f"interrupted by {name}")
    again = "Ctrl-C again" if number == signal.SIGINT else f"send {name} again"
    if in_flight:
        log.warning(
            "%s: finishing %d request%s already sent, up to %s; %s to stop now",
            name, in_flight, "" if in_flight == 1 else "s", format_duration(grace_s), again,
        )  # fmt: skip
    else:
        log.warning("%s: stopping (no request is out)", name)
    with anyio.move_on_after(grace_s):
        await received.get()
    pool.cancel_in_flight()
    await received.get()
    log.warning("already stopping: requests out are being recorded, then the run exits")
    while True:
        await received.get()


@asynccontextmanager
async def _no_signals() -> AsyncIterator[None]:
    yield None


class _BatchProgress:
    """The progress display for a run whose work all goes through batches: jobs collected,
    spend, and the estimate of the whole at batch prices (half the live ones)."""

    def __init__(
        self, work: _Work, lanes: Sequence[BatchLane], books: Mapping[str, PriceBook]
    ) -> None:
        self._work, self._lanes = work, lanes
        self._reporter = work.options.reporter
        # To send, and to collect.
        self._jobs = work.to_do + work.counts.count({JobState.SUBMITTED.value})
        self._per_job = work.batch_estimate or _EstimateOfWhatIsLeft(books)
        self._started = time.monotonic()
        if self._reporter is not None:
            self._reporter.start(self._jobs + work.done_before)

    def snapshot(self) -> Snapshot:
        reports = [lane.report for lane in self._lanes]
        succeeded = sum(r.succeeded for r in reports)
        failed = sum(r.failed for r in reports)
        spent = sum(r.spent_usd for r in reports)
        per_job = self._per_job.per_job()
        left = max(0, self._jobs - succeeded - failed)
        estimate: float | None = spent
        if left:
            estimate = spent + per_job * BATCH_DISCOUNT * left if per_job is not None else None
        return Snapshot(
            total=self._jobs + self._work.done_before,
            succeeded=succeeded,
            failed=failed,
            in_flight=sum(r.open_jobs for r in reports),
            retries_waiting=0,
            spent_usd=spent,
            estimated_total_usd=estimate,
            elapsed_s=time.monotonic() - self._started,
            paused=waiting_message(reports),
            done_before=self._work.done_before,
        )

    def show(self) -> None:
        if self._reporter is not None:
            self._reporter.update(self.snapshot())

    def finish(self) -> None:
        if self._reporter is not None:
            snapshot = self.snapshot()
            self._reporter.finish(snapshot, "stopped" if snapshot.paused else "completed")


def _with_batches(report: PoolReport, batches: Sequence[BatchReport]) -> PoolReport:
    """The pool's report with the batch lanes' results in it; open batches are a stop with
    work left (exit 75: run again to collect)."""
    for batch in batches:
        report.succeeded += batch.succeeded
        report.failed += batch.failed
        report.spent_usd += batch.spent_usd
        report.stops.extend(batch.stops)
    message = waiting_message(batches)
    if message is not None:
        report.stops.append(StopNotice("*", "batches", message, ExitCode.EARLY))
    return report


def exit_code_for(report: PoolReport, states: Collection[str]) -> ExitCode:
    """Credentials before money (fixing a key comes first), then a stop with work left
    (outage, disk, limit, signal), then failures, then success."""
    kinds = {stop.kind for stop in report.stops}
    if "auth" in kinds:
        return ExitCode.AUTH
    if "payment" in kinds:
        return ExitCode.PAYMENT
    if any(stop.exit_code == ExitCode.EARLY for stop in report.stops):
        return ExitCode.EARLY
    values = set(states)  # the states the manifest's jobs are in
    if JobState.FAILED in values or "output" in kinds:
        return ExitCode.FAILED
    if values <= {JobState.SUCCEEDED, JobState.CANCELLED}:
        return ExitCode.OK
    return ExitCode.EARLY
