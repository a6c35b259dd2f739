"""The sending half of `runner run`: providers and their clients, prices, the pool and its
lanes, batch mode's lanes, progress and signals while requests are out.

Imported by `run_jobs.run` only when there is something to send or collect: a re-run of a
finished manifest (cron, every few minutes) loads no HTTP client, image library or retry
machinery.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
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
from runner.app.context import Options, SyncProgress, pages
from runner.app.run_jobs import TO_DO, JobCounts, reclaim_dead_runs, stop_text
from runner.dialects import dialect_named
from runner.dialects.factory import (
    Credential,
    http_client,
)
from runner.dialects.openai.batch import OpenAIBatchClient
from runner.engine.budget import LimitGuard, ResolvedLimits
from runner.engine.pacing import ProviderGate
from runner.engine.pool import Pool, Unrecorded
from runner.engine.ports import Lane, Provider
from runner.engine.pricing import PriceBook
from runner.engine.report import PoolReport
from runner.errors import ExitCode, ManifestError, StopNotice
from runner.files import journal
from runner.files.local import Outputs, local_files
from runner.files.preflight import prepare_request
from runner.manifest.durations import format_duration
from runner.records import (
    JobSpec,
    JobState,
    Manifest,
    ProgressReporter,
    ProviderProfile,
    Snapshot,
)
from runner.settings import SystemClock
from runner.signals import ROUTER
from runner.store.protocol import Store
from runner.store.threaded import ThreadedStore

log = logging.getLogger("runner")
PROGRESS_TICK_S = 1.0
# run --wait: how long between looks at open batches, doubling up to the most.
BATCH_POLL_FIRST_S = 30.0
BATCH_POLL_MAX_S = 600.0


@dataclass(slots=True)
class Work:
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
                reclaim_dead=lambda: reclaim_dead_runs(self.store),
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
            shown = [stop_text(s) for s in report.stops if s.kind != "signal"]
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
        self, work: Work, lanes: Sequence[BatchLane], books: Mapping[str, PriceBook]
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
