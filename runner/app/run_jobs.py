"""`runner run`: from a manifest to a finished (or cleanly stopped) run.

Order matters: everything that can be refused (manifest, limits, credentials, prices under
a budget) is refused before the run is recorded or anything is sent.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import anyio
import anyio.abc

from runner.app.context import Options, SyncProgress, open_manifest, resolve_db
from runner.dialects.factory import (
    credentials,
)
from runner.engine.budget import ResolvedLimits
from runner.engine.report import PoolReport
from runner.errors import ExitCode, ManifestError, OutputError, StopNotice, StoreError
from runner.files import procs
from runner.files.local import Outputs
from runner.files.outputs import sweep_temp_files
from runner.manifest.durations import parse_deadline
from runner.manifest.expand import ParsedManifest
from runner.records import (
    JobState,
    RunLimits,
    Summary,
    Totals,
)
from runner.store.engine import redact_url
from runner.store.protocol import RunInfo, Store

log = logging.getLogger("runner")
TO_DO = frozenset({JobState.PENDING.value, JobState.RUNNING.value})


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
        await reclaim_dead_runs(store)
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
        work = None
        if creds or streaming:  # something to send or collect (no key: nothing to do)
            # The sending half (HTTP clients, images, the pool) is loaded only now: a re-run
            # of a finished manifest, every few minutes from cron, needs none of it.
            from runner.app.sending import Work

            work = Work(
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
            report = await work.run() if work is not None else PoolReport()
            found_late = work.late_error if work is not None else None
            if late := (feed.error if feed is not None else None) or found_late:
                raise late  # a bad row, found while earlier rows were sent: exit 2 now
            exit_code = await _final_exit_code(store, str(manifest.path), report)
            stop_reason = "; ".join(stop_text(s) for s in report.stops) or None
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


def stop_text(stop: StopNotice) -> str:
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


async def reclaim_dead_runs(store: Store) -> int:
    """Runs on this host whose process is gone: their jobs go back to pending at once,
    instead of after their leases expire. Returns how many jobs came back."""
    runs = await store.unfinished_runs(procs.hostname())
    dead = [r.id for r in runs if not procs.same_process_alive(r.pid, r.process_tag)]
    return await store.reclaim_dead_runs(dead)


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
