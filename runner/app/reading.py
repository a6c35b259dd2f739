"""Reading a manifest's state: `runner status` and `runner jobs`, and finding a job by key.

Kept apart from the commands that send, write pictures or tables: these answer from the
database alone, and do not import the HTTP clients, Pillow or pyarrow to do so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio.to_thread

from runner.app.context import (
    ALL_STATES,
    Opened,
    Options,
    opened,
    pages,
    parse,
    resolve_db,
    synced_view,
)
from runner.errors import ManifestError
from runner.files import procs
from runner.records import ExportRow, JobState, Summary, Totals, short_key
from runner.store.engine import database_exists
from runner.store.protocol import Store
from runner.store.threaded import ThreadedStore


async def status(path: Path, options: Options) -> Summary:
    """The manifest's jobs per state, spend, and its last run: whether that run ended, is
    running now, or died (its process is gone). A manifest that was never run has no
    database, and asking for its status does not make one."""
    quick = await _status_from_database(path, options)
    if quick is not None:
        return quick
    parsed = await parse(path)
    url = resolve_db(parsed, options.db)
    if not database_exists(url):
        manifest = await anyio.to_thread.run_sync(parsed.resolve)
        counts = {state.value: 0 for state in JobState}
        counts[JobState.PENDING.value] = len(manifest.jobs)
        return Summary(counts=counts, totals=Totals(), never_run=True)
    async with opened(parsed, options) as session:
        summary = await session.store.summary(session.id)
        summary = replace(summary, duplicates=session.manifest.duplicates)
        if isinstance(session.store, ThreadedStore):
            batches = await session.store.batches.open_batches(session.id)
            summary = replace(summary, batches=[b.shown() for b in batches])
    return _with_run_states(summary)


async def _status_from_database(path: Path, options: Options) -> Summary | None:
    """The status without re-reading the manifest's jobs (see `synced_view`)."""
    async with synced_view(path, options, check_inputs=False) as view:
        if view is None:
            return None
        summary = await view.store.summary(view.id)
        batches = await view.store.batches.open_batches(view.id)
    summary = replace(summary, duplicates=view.duplicates, batches=[b.shown() for b in batches])
    return _with_run_states(summary)


def _with_run_states(summary: Summary) -> Summary:
    fleet = [_on_this_host(entry) for entry in summary.fleet]
    if summary.last_run is None:
        return replace(summary, fleet=fleet)
    last_run = {**summary.last_run, "state": _run_state(summary.last_run)}
    return replace(summary, last_run=last_run, fleet=fleet)


def _on_this_host(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    """A runner of this host whose process is gone is dead, whatever its last heartbeat
    says (the next run here takes its jobs back at once)."""
    mine = entry["host"] == procs.hostname() and entry["state"] in ("live", "silent")
    return {**entry, "state": "dead"} if mine and not procs.pid_alive(entry["pid"]) else entry


def _run_state(run: Mapping[str, Any]) -> str:
    """`ended`, `running` (its process is alive), `dead` (gone without recording its end),
    or `elsewhere` (running or not, on another host: its lease will tell)."""
    if run.get("ended_at"):
        return "ended"
    if run.get("host") != procs.hostname():
        return "elsewhere"
    alive = procs.same_process_alive(int(run.get("pid") or 0), str(run.get("process_tag")))
    return "running" if alive else "dead"


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs `runner jobs` lists: all of these that are set must hold."""

    state: str | None = None
    key: str | None = None  # a key prefix; must name exactly one job
    search: str | None = None  # in the prompt, the input paths, the error or the outputs


async def jobs(path: Path, options: Options, chosen: JobFilter | None = None) -> list[ExportRow]:
    """The manifest's jobs in manifest order, filtered."""
    found: list[ExportRow] = []
    await list_jobs(path, options, chosen or JobFilter(), found.extend)
    return found


async def list_jobs(
    path: Path,
    options: Options,
    chosen: JobFilter,
    show: Callable[[Sequence[ExportRow]], object],
    limit: int | None = None,
) -> int:
    """Hand the manifest's jobs that `chosen` picks to `show`, a page at a time in manifest
    order (at most `limit` of them), and return how many it picks in all. A long listing
    starts at once and holds one page in memory: at 100,000 jobs the first lines are out in
    well under a second, and `-n 20` reads 20 jobs."""
    async with synced_view(path, options, check_inputs=False) as view:
        if view is not None:
            return await _list(view.store, view.id, chosen, show, limit, str(path))
    async with opened(await parse(path), options) as session:
        return await _list(session.store, session.id, chosen, show, limit, str(path))


async def _list(
    store: Store,
    manifest: str,
    chosen: JobFilter,
    show: Callable[[Sequence[ExportRow]], object],
    limit: int | None,
    where: str,
) -> int:
    needle = chosen.search.casefold() if chosen.search else None

    def picked(row: ExportRow) -> bool:
        return (chosen.state is None or row.status == chosen.state) and (
            needle is None or needle in _searchable(row)
        )

    if chosen.key is not None:  # one job, which the prefix must name among all of them
        rows = await _by_key(store, manifest, chosen.key)
        key = _one_key(rows, chosen.key, where)
        one = [row for row in rows if row.key == key and picked(row)]
        show(one[:limit])
        return len(one)
    states = ALL_STATES if chosen.state is None else frozenset({chosen.state})
    matched, after = 0, -1
    while page := await store.export_page(manifest, states, after, _LIST_PAGE):
        after = page[-1][0]
        rows = [row for _, row in page if needle is None or picked(row)]
        room = len(rows) if limit is None else max(0, limit - matched)
        if room:
            show(rows[:room])
        matched += len(rows)
        if limit is not None and matched >= limit and needle is None:
            # The rest is counted, not read.
            counts = await store.state_counts(manifest)
            return sum(n for (_, state), n in counts.items() if state in states)
    return matched


async def _by_key(store: Store, manifest: str, prefix: str) -> Sequence[ExportRow]:
    """The jobs whose key starts with `prefix`, read in full (few: a prefix names one)."""
    wanted = prefix.strip().lower()
    keys = [key for key in await store.job_states(manifest) if key.startswith(wanted)]
    if len(keys) > _FEW_JOBS:  # most of them: one pass over all is quicker (and in order)
        return await store.export_rows(manifest)
    return await store.export_rows(manifest, keys)


_LIST_PAGE = 1_000  # jobs listed at a time: the first page is out in a fraction of a second
_FEW_JOBS = 2_000  # read by key (one bound parameter each: SQLite takes 32,766 at most)


def _searchable(row: ExportRow) -> str:
    return "\n".join(
        [row.prompt, row.image, row.mask or "", row.error or "", *row.outputs]
    ).casefold()


def _one_key(rows: Sequence[ExportRow], prefix: str, where: str) -> str:
    """`one_job` over export rows (the manifest's jobs as the database lists them)."""
    return _one_of([(row.key, Path(row.image).name) for row in rows], prefix, where)


async def one_job(session: Opened, prefix: str) -> str:
    """The key of the one job of the manifest whose key starts with `prefix` (exit 2 when
    none does, or several: then they are listed, so the user can give more characters).
    The jobs are read from the database a page at a time."""
    wanted = prefix.strip().lower()
    found = [
        (spec.key, spec.image.name)
        async for specs in pages(session.store, session.id, ALL_STATES)
        for spec in specs
        if wanted and spec.key.startswith(wanted)
    ]
    return _one_of(found, prefix, session.id)


def _one_of(jobs: Sequence[tuple[str, str]], prefix: str, where: str) -> str:
    wanted = prefix.strip().lower()
    matches = [(key, name) for key, name in jobs if key.startswith(wanted)]
    if not wanted or not matches:
        raise ManifestError(f"no job has a key starting with {prefix!r}", file=where, field="--job")
    if len(matches) > 1:
        listed = ", ".join(f"{short_key(key)} ({name})" for key, name in matches[:10])
        more = f" and {len(matches) - 10} more" if len(matches) > 10 else ""
        raise ManifestError(
            f"{prefix!r} is the start of {len(matches)} jobs' keys: {listed}{more}; give more "
            "of the key",
            file=where,
            field="--job",
        )
    return matches[0][0]
