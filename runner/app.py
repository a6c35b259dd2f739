"""Composition root: each use case wires manifest, store, providers and pool together.

The CLI calls these and renders what they return; nothing here prints.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx

from . import procs
from .config import DEFAULT_CONNECT_TIMEOUT_S, RunSettings
from .digests import Digester
from .errors import InputError, ManifestError, OutputError, StopNotice
from .images import ImageLimits, prepare_request
from .manifest import Manifest, ParsedManifest, ProviderProfile, parse_manifest
from .models import ExportRow, JobState, Summary
from .outputs import ensure_writable, sweep_temp_files
from .pool import Pool, PoolReport
from .pricing import estimate_openai_cost
from .providers.base import Provider
from .providers.openai import OpenAIProvider
from .ratelimit import Clock, ProviderGate, SystemClock
from .store.base import RunInfo, Store
from .store.engine import database_url, open_store, redact_url
from .store.tables import utcnow
from .store.threaded import open_threaded

log = logging.getLogger("runner")
_TO_DO = frozenset({JobState.PENDING.value, JobState.RUNNING.value})
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PAYMENT, EXIT_AUTH, EXIT_EARLY = 0, 1, 2, 3, 4, 75


@dataclass(frozen=True, slots=True)
class Options:
    db: str | None = None  # --db / RUNNER_DB: a path (relative to the cwd) or a URL
    settings: RunSettings = field(default_factory=RunSettings)
    clock: Clock | None = None  # tests inject a clock whose sleeps return at once
    wall_clock: Callable[[], datetime] = utcnow


@dataclass(frozen=True, slots=True)
class RunOutcome:
    exit_code: int
    summary: Summary
    report: PoolReport
    new_jobs: int
    stops: Sequence[StopNotice] = field(default_factory=tuple)


def resolve_db(parsed: ParsedManifest, override: str | None) -> str:
    if override:
        return database_url(override, Path.cwd())
    if parsed.database:
        return database_url(parsed.database, parsed.path.parent)
    return database_url(f"{parsed.path.stem}.db", parsed.path.parent)


def api_keys(parsed: ParsedManifest, needed: set[str] | None = None) -> dict[str, str]:
    """The key of each `needed` provider (default: all the jobs use), from the environment."""
    keys: dict[str, str] = {}
    for name in sorted(needed if needed is not None else {d.provider.name for d in parsed.drafts}):
        profile = parsed.providers[name]
        env = profile.api_key_env
        field_name = f"providers.{name}.api_key_env"
        if not env:
            raise ManifestError(
                "required: the name of the environment variable holding the API key",
                file=str(parsed.path),
                field=field_name,
            )
        value = os.environ.get(env, "").strip()
        if not value:
            raise ManifestError(
                f"environment variable {env} is not set; export {env}=<your key> and run again",
                file=str(parsed.path),
                field=field_name,
            )
        keys[name] = value
    return keys


@dataclass(frozen=True, slots=True)
class _Opened:
    manifest: Manifest
    store: Store
    new_jobs: int

    @property
    def id(self) -> str:
        return str(self.manifest.path)


@asynccontextmanager
async def _opened(parsed: ParsedManifest, options: Options) -> AsyncIterator[_Opened]:
    """Open the manifest's database, hash its inputs (cached there) and sync its jobs."""
    url = resolve_db(parsed, options.db)
    store = await open_threaded(lambda: open_store(url, options.wall_clock))
    try:
        digester = Digester(await store.load_digests())
        manifest = await anyio.to_thread.run_sync(parsed.resolve, digester)
        await store.save_digests(digester.fresh)
        new_jobs = await store.sync_manifest(str(manifest.path), manifest.jobs)
        yield _Opened(manifest, store, new_jobs)
    finally:
        await store.close()


async def _parse(path: Path) -> ParsedManifest:
    return await anyio.to_thread.run_sync(parse_manifest, path)


async def status(path: Path, options: Options) -> Summary:
    async with _opened(await _parse(path), options) as opened:
        return await opened.store.summary(opened.id)


async def export(path: Path, options: Options) -> Sequence[ExportRow]:
    async with _opened(await _parse(path), options) as opened:
        return await opened.store.export_rows(opened.id)


async def retry(path: Path, options: Options, key: str | None = None) -> int:
    async with _opened(await _parse(path), options) as opened:
        return await opened.store.retry_failed(opened.id, key)


@dataclass(frozen=True, slots=True)
class _Dialect:
    """What the app needs of one API dialect; a new dialect is one more entry below."""

    provider: Callable[[str, str, str, httpx.AsyncClient], Provider]
    limits: ImageLimits
    estimate: Callable[[str, Mapping[str, Any], str, bool], float | None]


_DIALECTS = {"openai": _Dialect(OpenAIProvider, OpenAIProvider.limits, estimate_openai_cost)}


def build_provider(profile: ProviderProfile, api_key: str, client: httpx.AsyncClient) -> Provider:
    return _DIALECTS[profile.dialect].provider(profile.name, profile.base_url, api_key, client)


def http_client(profile: ProviderProfile) -> httpx.AsyncClient:
    # Keep as many idle connections as workers: with httpx's default of 20, a pool of 32
    # workers would close and reopen a dozen connections on every round.
    return httpx.AsyncClient(
        timeout=httpx.Timeout(
            connect=DEFAULT_CONNECT_TIMEOUT_S, read=profile.timeout_s, write=120.0, pool=None
        ),
        limits=httpx.Limits(
            max_connections=profile.concurrency, max_keepalive_connections=profile.concurrency
        ),
        follow_redirects=False,  # a redirect means a wrong base_url, never a new target
    )


async def run(path: Path, options: Options) -> RunOutcome:
    parsed = await _parse(path)
    try:
        ensure_writable(parsed.output_dir)
    except OutputError as exc:
        raise ManifestError(str(exc), file=str(parsed.path), field="output_dir") from exc
    async with _opened(parsed, options) as opened:
        manifest, store = opened.manifest, opened.store
        states = await store.job_states(opened.id)
        # Only providers with work left need a key: a finished manifest re-runs keyless.
        keys = api_keys(parsed, {s.provider for s in manifest.jobs if states[s.key] in _TO_DO})
        await anyio.to_thread.run_sync(sweep_temp_files, manifest.output_dir)
        await _reclaim_dead_runs(store)
        log.info(
            "%s: %d jobs (%d new), %d to send; database %s",
            manifest.path.name,
            len(manifest.jobs),
            opened.new_jobs,
            sum(1 for state in states.values() if state in _TO_DO),
            redact_url(resolve_db(parsed, options.db)),
        )
        run_info = RunInfo(
            uuid.uuid4().hex, str(manifest.path), procs.hostname(), os.getpid(), procs.process_tag()
        )
        await store.start_run(run_info)
        exit_code: int = EXIT_FAILED
        stop_reason: str | None = "interrupted"
        try:
            report = await _work(manifest, store, keys, run_info.id, options)
            states = await store.job_states(str(manifest.path))
            exit_code = exit_code_for(report, states)
            stop_reason = "; ".join(f"{s.provider}: {s.message}" for s in report.stops) or None
        finally:
            with anyio.CancelScope(shield=True):
                await store.end_run(run_info.id, exit_code, stop_reason)
        summary = await store.summary(str(manifest.path))
        return RunOutcome(exit_code, summary, report, opened.new_jobs, tuple(report.stops))


async def _reclaim_dead_runs(store: Store) -> None:
    runs = await store.unfinished_runs(procs.hostname())
    dead = [r.id for r in runs if not procs.same_process_alive(r.pid, r.process_tag)]
    await store.reclaim_dead_runs(dead)


async def _work(
    manifest: Manifest, store: Store, keys: Mapping[str, str], owner: str, options: Options
) -> PoolReport:
    clock = options.clock or SystemClock()
    profiles = {name: manifest.providers[name] for name in keys}
    async with AsyncExitStack() as stack:
        providers: dict[str, Provider] = {}
        for name, profile in profiles.items():
            client = await stack.enter_async_context(http_client(profile))
            providers[name] = build_provider(profile, keys[name], client)
        pool = Pool(
            store,
            providers,
            manifest=str(manifest.path),
            owner=owner,
            settings=options.settings,
            concurrency={name: p.concurrency for name, p in profiles.items()},
            gates={
                name: ProviderGate(name, clock, p.requests_per_minute)
                for name, p in profiles.items()
            },
            clock=clock,
            wall_clock=options.wall_clock,
        )
        return await pool.run()


def exit_code_for(report: PoolReport, states: Mapping[str, str]) -> int:
    """Credentials before money (fixing a key comes first), then an outage (work left),
    then failures, then success."""
    kinds = {stop.kind for stop in report.stops}
    if "auth" in kinds:
        return EXIT_AUTH
    if "payment" in kinds:
        return EXIT_PAYMENT
    if kinds & {"outage", "disk"}:
        return EXIT_EARLY
    values = set(states.values())
    if JobState.FAILED in values or "output" in kinds:
        return EXIT_FAILED
    if values <= {JobState.SUCCEEDED, JobState.CANCELLED}:
        return EXIT_OK
    return EXIT_EARLY


@dataclass(frozen=True, slots=True)
class JobCheck:
    entry: int
    image: str
    problem: str | None
    estimated_cost_usd: float | None


@dataclass(frozen=True, slots=True)
class Validation:
    manifest: Manifest
    checks: Sequence[JobCheck]

    @property
    def bad(self) -> list[JobCheck]:
        return [c for c in self.checks if c.problem]

    @property
    def estimated_cost_usd(self) -> float:
        """For the jobs that would be sent; a model without a price adds nothing."""
        return sum(c.estimated_cost_usd or 0.0 for c in self.checks if not c.problem)

    @property
    def unpriced(self) -> int:
        return sum(1 for c in self.checks if not c.problem and c.estimated_cost_usd is None)


async def validate(path: Path) -> Validation:
    """Everything `run` checks before sending, for every job; nothing is sent or stored."""
    parsed = await _parse(path)
    api_keys(parsed)
    manifest = await anyio.to_thread.run_sync(parsed.resolve)

    def check_all() -> list[JobCheck]:
        checks = []
        for spec in manifest.jobs:
            dialect = _DIALECTS[manifest.providers[spec.provider].dialect]
            try:
                prepare_request(spec, dialect.limits)
                problem = None
            except InputError as exc:
                problem = str(exc)
            estimate = dialect.estimate(spec.model, spec.params, spec.prompt, spec.mask is not None)
            checks.append(JobCheck(spec.entry, str(spec.image), problem, estimate))
        return checks

    return Validation(manifest, await anyio.to_thread.run_sync(check_all))
