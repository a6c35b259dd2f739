"""What every command shares: its options, and opening a manifest with its database."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import anyio.to_thread

from runner.errors import ManifestError, RunnerError, first_error
from runner.files import journal
from runner.manifest.digests import DigestEntry, Digester
from runner.manifest.expand import Draft, ParsedManifest, parse_manifest, text_digest
from runner.manifest.tables import carried_source
from runner.records import JobSpec, JobState, Manifest, ProgressReporter, RunLimits
from runner.settings import DEFAULT_GRACE_S, Clock, RunSettings, unknown_env
from runner.store.engine import database_exists, database_url, open_store
from runner.store.protocol import Store
from runner.store.sql import SqlStore
from runner.store.tables import utcnow
from runner.store.threaded import ThreadedStore, open_threaded

log = logging.getLogger("runner")


@dataclass(frozen=True, slots=True)
class Options:
    db: str | None = None  # --db / RUNNER_DB: a path (relative to the cwd) or a URL
    settings: RunSettings = field(default_factory=RunSettings)
    clock: Clock | None = None  # tests inject a clock whose sleeps return at once
    wall_clock: Callable[[], datetime] = utcnow
    # Limits from flags; each one set wins over the manifest's.
    limits: RunLimits = field(default_factory=RunLimits)
    grace_s: float = DEFAULT_GRACE_S  # after SIGINT/SIGTERM, how long requests out may take
    # --concurrency / RUNNER_CONCURRENCY: requests in flight per provider, over the manifest's
    concurrency: int | None = None
    reporter: ProgressReporter | None = None
    handle_signals: bool = False  # the CLI turns this on; library callers keep their own
    wait: bool = False  # run --wait: poll open batches until they end (or the deadline)
    keep_files: bool = False  # run --keep-files: leave batch inputs and files at the provider


def resolve_db(parsed: ParsedManifest, override: str | None) -> str:
    return database_url_for(parsed.path, parsed.database, override)


def database_url_for(manifest: Path, database: str | None, override: str | None) -> str:
    """--db (relative to the cwd), else the manifest's `database:` (relative to it), else
    `<manifest stem>.db` beside it."""
    if override:
        return database_url(override, Path.cwd())
    if database:
        return database_url(database, manifest.parent)
    return database_url(f"{manifest.stem}.db", manifest.parent)


@dataclass(frozen=True, slots=True)
class Opened:
    """A manifest synced to its database. Its jobs are there, not in `manifest.jobs`
    (empty): read them a page at a time (`pages`) or count them (`state_counts`)."""

    manifest: Manifest
    store: Store
    synced_new_jobs: int = 0
    # A sync still running behind the command (`opened(..., behind=True)`), else None.
    sync: SyncProgress | None = None

    @property
    def id(self) -> str:
        return str(self.manifest.path)

    @property
    def new_jobs(self) -> int:
        return self.sync.new_jobs if self.sync is not None else self.synced_new_jobs


HEAD_START_S = 3.0  # how long a sync behind a run waits for the run's first request


class SyncProgress:
    """How far a sync running behind a run has got: the run may claim the jobs at positions
    before `bound` (None: all, the sync is over). A sync that fails keeps its error here for
    the run to stop on, instead of cancelling a run with requests out."""

    def __init__(self) -> None:
        self.synced = 0  # positions written so far
        self.done = False
        self.error: BaseException | None = None
        self.new_jobs = 0
        self._changed = anyio.Event()
        self._sending = anyio.Event()

    @property
    def bound(self) -> int | None:
        # A failed sync leaves the rest of the list as the previous sync had it: not jobs.
        return None if self.done and self.error is None else self.synced

    def advance(self, synced: int, new_jobs: int) -> None:
        self.synced, self.new_jobs = synced, new_jobs
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        self.done, self.error = True, error
        self._wake()

    async def changed(self, since: int) -> None:
        """Until more than `since` positions are in, or the sync ends."""
        while not self.done and self.synced <= since:
            await self._changed.wait()

    def sending(self) -> None:
        """The run's first request is leaving, or it needs more of the manifest to find
        one: the sync reads on."""
        self._sending.set()

    @property
    def sent(self) -> bool:
        """Whether the head start is over (see `head_start`)."""
        return self._sending.is_set()

    async def head_start(self) -> None:
        """Wait (a few seconds at most) while the run sends its first request from the first
        chunk. Keying the next chunks holds the interpreter in a worker thread: on 2 cores,
        with 100,000 jobs, that took the first request from under a second after the first
        chunk to 2.6 s. Over once, whichever comes first."""
        with anyio.move_on_after(HEAD_START_S):
            await self._sending.wait()
        self._sending.set()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


async def open_database(url: str, options: Options) -> ThreadedStore:
    """The store at `url`; on SQLite, with a connection of its own for a job's verbs on
    this loop (store/threaded.py says why)."""
    clock = options.wall_clock

    async def per_job() -> SqlStore:
        return await open_store(url, clock, waits_on_loop=True)

    return await open_threaded(
        lambda: open_store(url, clock), per_job if url.startswith("sqlite") else None
    )


@asynccontextmanager
async def opened(
    parsed: ParsedManifest, options: Options, *, behind: bool = False
) -> AsyncIterator[Opened]:
    """Open the manifest's database, hash its inputs (cached there) and sync its jobs.
    `behind`: yield once the sync has started and keep syncing behind the caller (`run`,
    which sends while the rest of a long manifest is read); a sync the caller leaves
    unfinished (it stopped early) is cancelled between chunks."""
    url = resolve_db(parsed, options.db)
    store = await open_database(url, options)
    try:
        await record_late_completions(store, journal.home(parsed.output_dir, parsed.path))
        if not behind:
            synced = await sync_jobs(parsed, store)
            yield Opened(_settings_of(parsed, synced.duplicates), store, synced.new_jobs)
            return
        progress = SyncProgress()
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_sync_behind, parsed, store, progress)
                yield Opened(_settings_of(parsed, 0), store, sync=progress)
                tasks.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise first_error(group) from None
    finally:
        await store.close()


async def _sync_behind(parsed: ParsedManifest, store: Store, progress: SyncProgress) -> None:
    try:
        await sync_jobs(parsed, store, progress)
    except (RunnerError, OSError) as exc:
        progress.finish(exc)
    else:
        progress.finish()


def _settings_of(parsed: ParsedManifest, duplicates: int) -> Manifest:
    """The manifest's settings, its jobs left in the database."""
    return Manifest(
        parsed.path, parsed.providers, (), parsed.output_dir, parsed.database,
        parsed.limits, parsed.pricing, duplicates=duplicates,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Synced:
    new_jobs: int
    duplicates: int  # see Manifest.duplicates


async def sync_jobs(
    parsed: ParsedManifest, store: Store, progress: SyncProgress | None = None
) -> Synced:
    """Make the manifest's jobs and sync them to the database a chunk at a time: its
    tables are read, its inputs hashed (the database's digest cache asked per chunk) and
    its jobs written as it goes, so memory does not grow with its length. Its fingerprint
    is recorded only when every chunk is in: a sync cut short leaves none, and the next
    command reads the manifest again."""
    manifest = str(parsed.path)
    # Every store call here is shielded: a sync cancelled behind a run that stopped ends
    # the call it is in (a chunk's writes, at most) before the store is closed.
    with anyio.CancelScope(shield=True):
        await store.record_sync(manifest, None, 0)
        has_globs = any(d.glob is not None for d in parsed.entry_drafts)
        known_outputs = await store.output_paths() if has_globs else frozenset()
    resolver = parsed.resolver(known_outputs)
    chunks = resolver.draft_chunks()
    # Chunks are made (tables read, files hashed) in a worker thread while the previous
    # one is written on the database's: the two overlap.
    send, receive = anyio.create_memory_object_stream[_Chunk](1)

    def next_chunk() -> list[Draft] | None:
        return next(chunks, None)

    async def make() -> None:
        async with send:
            first_chunk = True
            while (drafts := await anyio.to_thread.run_sync(next_chunk)) is not None:
                if not first_chunk and progress is not None and not progress.sent:
                    # Keyed only once the first request has left (a manifest of one chunk
                    # never waits: its sync ends as soon as that chunk is written).
                    await progress.head_start()
                first_chunk = False
                paths = {str(p) for d in drafts for p in (d.image, d.mask) if p is not None}
                with anyio.CancelScope(shield=True):
                    known = await store.digests_for(paths)
                digester = Digester(known)
                keyed = await anyio.to_thread.run_sync(resolver.key_chunk, drafts, digester)
                bad = {spec.key: d.problem for d, spec, first in keyed if first and d.problem}
                await send.send(
                    _Chunk([spec for _, spec, first in keyed if first], digester.fresh, bad)
                )

    new_jobs = start = 0
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(make)
            async with receive:
                async for chunk in receive:
                    with anyio.CancelScope(shield=True):
                        await store.save_digests(chunk.digests)
                        new_jobs += await store.sync_manifest(
                            manifest, chunk.specs, start=start, final=False
                        )
                        failed = await store.reject_rows(chunk.bad_rows) if chunk.bad_rows else ()
                    for key in failed:
                        log.warning("%s; that row's job failed, nothing sent", chunk.bad_rows[key])
                    start += len(chunk.specs)
                    if progress is not None:
                        progress.advance(start, new_jobs)
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    with anyio.CancelScope(shield=True):
        await store.sync_manifest(manifest, [], start=resolver.jobs, final=True)
        await store.record_sync(manifest, parsed.fingerprint, resolver.duplicates)
    return Synced(new_jobs, resolver.duplicates)


@dataclass(frozen=True, slots=True)
class _Chunk:
    """A chunk of the manifest's jobs on their way to the database."""

    specs: list[JobSpec]  # new to this sync, each job once
    digests: list[DigestEntry]  # hashed now, for the cache
    bad_rows: dict[str, str]  # key -> problem: table rows that cannot be jobs


PAGE_JOBS = 4096  # jobs read from the database at a time


def _page_size() -> int:
    return PAGE_JOBS  # looked up when used: tests make pages small


ALL_STATES = frozenset(state.value for state in JobState)


async def pages(
    store: Store,
    manifest: str,
    states: Collection[str],
    positions: tuple[int, int | None] = (0, None),
) -> AsyncIterator[list[JobSpec]]:
    """The manifest's jobs in `states` (at `positions`: from, before), in manifest order,
    a page at a time (no states: none, nothing read)."""
    after, before = positions[0] - 1, positions[1]
    while states and (
        page := await store.specs_page(manifest, states, after, _page_size(), before)
    ):
        yield [spec for _position, spec in page]
        after = page[-1][0]


@asynccontextmanager
async def open_manifest(
    path: Path, options: Options, *, behind: bool = False
) -> AsyncIterator[tuple[ParsedManifest, Opened]]:
    """The manifest and its database, synced: from the database alone when nothing that
    decides the job list has changed since the last sync (`from_database`), else read,
    hashed and synced (`opened`; `behind`: while the caller goes on, except for batch
    mode, whose lanes take jobs by their own claims)."""
    async with _from_database(path, options) as quick:
        if quick is not None:
            yield quick
            return
    parsed = await parse(path)
    behind = behind and not any(p.batched for p in parsed.providers.values())
    async with opened(parsed, options, behind=behind) as session:
        yield parsed, session


@dataclass(frozen=True, slots=True)
class SyncedView:
    """A manifest's database while the manifest is as it was at its last sync."""

    parsed: ParsedManifest  # its settings only: no jobs expanded (`expand=False`)
    store: ThreadedStore
    duplicates: int  # see Manifest.duplicates

    @property
    def id(self) -> str:
        return str(self.parsed.path)


@asynccontextmanager
async def synced_view(
    path: Path, options: Options, *, check_inputs: bool
) -> AsyncIterator[SyncedView | None]:
    """The database, when the manifest's text and tables are as at its last sync (see
    `ParsedManifest.fingerprint`) and no paid reply waits to be recorded; with `check_inputs`, also
    every input file still has the size and mtime its digest was taken at, so every job key
    is unchanged. Then the database's job list is the manifest's, and a table of 100,000
    rows is not read again. None (nothing written) when any of that does not hold."""
    text = await anyio.to_thread.run_sync(text_digest, path)
    try:
        light = await anyio.to_thread.run_sync(lambda: parse_manifest(path, expand=False))
    except ManifestError:
        light = None  # the full reading says what is wrong, in full
    light = light.fingerprinted(text) if light is not None else None
    if light is None or light.fingerprint is None:
        yield None
        return
    url = resolve_db(light, options.db)
    home = journal.home(light.output_dir, light.path)
    late = await anyio.to_thread.run_sync(journal.pending_files, home)
    if late or not database_exists(url):
        yield None
        return
    store = await open_database(url, options)
    try:
        synced = await store.last_sync(str(light.path))
        same = synced is not None and synced[0] == light.fingerprint
        if same and check_inputs:
            stats = await store.input_stats(str(light.path))
            same = await anyio.to_thread.run_sync(_inputs_unchanged, stats)
        if not same or synced is None:
            yield None
            return
        _warn_unknown_env(light)
        yield SyncedView(light, store, synced[1])
    finally:
        await store.close()


@asynccontextmanager
async def _from_database(
    path: Path, options: Options
) -> AsyncIterator[tuple[ParsedManifest, Opened] | None]:
    """The manifest with its jobs as the database has them (see `synced_view`)."""
    async with synced_view(path, options, check_inputs=True) as view:
        if view is None:
            yield None
            return
        yield view.parsed, Opened(_settings_of(view.parsed, view.duplicates), view.store)


def _inputs_unchanged(stats: Sequence[tuple[str, int | None, int | None]]) -> bool:
    """Whether every input file is as its cached digest was taken (size, mtime)."""
    for path, size, mtime_ns in stats:
        if size is None and carried_source(path) is not None:
            continue  # bytes a table carries: the table's size and mtime are in the fingerprint
        if size is None or mtime_ns is None:
            return False
        try:
            info = os.stat(path)  # noqa: PTH116 - a Path per file was a third of this
        except OSError:
            return False
        if info.st_size != size or info.st_mtime_ns != mtime_ns:
            return False
    return True


async def record_late_completions(store: Store, journal_home: Path) -> int:
    """Record the paid replies an earlier run wrote to files while the database took no
    writes (see `journal`), before anything could send their jobs again."""
    recorded = 0
    for path in await anyio.to_thread.run_sync(journal.pending_files, journal_home):
        for entry in await anyio.to_thread.run_sync(journal.read, path):
            recorded += await store.record_late(
                entry.key, entry.attempt_id, entry.record, entry.outputs
            )
        path.unlink(missing_ok=True)
    if recorded:
        log.warning("recorded %d replies an earlier run could not write to the database", recorded)
    return recorded


async def parse(path: Path) -> ParsedManifest:
    # Taken before the manifest is read: if it changes meanwhile, the next look sees a
    # different fingerprint and reads it again, never the other way round.
    text = await anyio.to_thread.run_sync(text_digest, path)
    parsed = await anyio.to_thread.run_sync(parse_manifest, path)
    _warn_unknown_env(parsed)
    return parsed.fingerprinted(text)


_warned_env: set[str] = set()  # once per process, however many commands a test runs


def _warn_unknown_env(parsed: ParsedManifest) -> None:
    """A RUNNER_* variable the runner does not read is most likely a typo (or a name from
    an older release) that the user believes is in force: say so, once."""
    keys = {
        name
        for profile in parsed.providers.values()
        for name in (profile.api_key_env, profile.wallet_key_env)
        if name
    }
    for name, close in unknown_env(os.environ, keys):
        if name not in _warned_env:
            _warned_env.add(name)
            hint = f" (did you mean {close}?)" if close else ""
            log.warning("%s is set but the runner reads no such variable%s; ignored", name, hint)
