"""Validate's per-job work, a chunk of jobs at a time, spread over this machine's cores.

At 100,000 jobs `validate` is CPU-bound Python: each input read, hashed, keyed and opened
with Pillow, about 0.1 ms a job on a quick core. That part depends on its chunk alone, so
on Linux it runs in forked worker processes, while this process reads the manifest's rows
and does what must see every job in order (repeats, output names; `Resolver.admit`).
Forked, the workers inherit the checks as they are (model lists, price books, limits):
nothing but the chunk's rows and the verdicts crosses a pipe. Where there is no fork, or
for a manifest of one chunk, the work runs here, the same function either way.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from runner.errors import OutputError
from runner.files.outputs import FolderCache, folders_cached
from runner.manifest.digests import Digester
from runner.manifest.expand import Draft, specs_of
from runner.manifest.output_rules import OutputNames, OutputPlan
from runner.records import JobSpec, JobState, OutputPlace
from runner.store.engine import peek_digests, peek_job_states

# What validate keeps of a chunk's small inputs between hashing and checking them.
PREREAD_BYTES = 64 * 1024 * 1024
# Jobs per chunk of work: smaller than a sync's chunks, so that the workers start sooner
# and finish together (the last chunk is the only one a core waits on).
WORK_CHUNK_JOBS = 1024
# Jobs `run` would not send again: they are finished, or set aside by hand.
NOT_SENT_AGAIN = frozenset({JobState.SUCCEEDED.value, JobState.CANCELLED.value})
_MAX_WORKERS = 8

V = TypeVar("V")  # what checking one job found (validate's JobCheck); it crosses a pipe


@dataclass(frozen=True, slots=True)
class ChunkVerdict(Generic[V]):
    """A chunk's keys and checks, per draft in order."""

    keys: list[tuple[str, str | None, str | None]]  # job key, image sha256, mask sha256
    states: dict[str, str]  # the database's state of those keys it has
    # None where the draft was not checked: done, a bad row, or a repeat within the chunk.
    checks: list[V | None]
    # None for a bad row, a repeat within the chunk, or names that are unusable (the output
    # check, which sees every job, makes it again to say why).
    plans: list[OutputPlan | None]

    def specs(self, drafts: Sequence[Draft], output_dir: OutputPlace) -> list[JobSpec]:
        return [d.keyed(*k, output_dir) for d, k in zip(drafts, self.keys, strict=True)]


@dataclass(frozen=True, slots=True)
class ChunkChecker(Generic[V]):
    """Keys and checks one chunk of drafts against a SQLite database it only reads (the
    digest cache, the jobs done): `check(spec, files read while hashing)`."""

    url: str
    output_dir: OutputPlace
    check: Callable[[JobSpec, Mapping[Path, bytes]], V]
    # Kept from chunk to chunk in each process (a forked worker has its own copy).
    folders: FolderCache = field(default_factory=FolderCache)

    def __call__(self, drafts: Sequence[Draft]) -> ChunkVerdict[V]:
        paths = {str(p) for d in drafts for p in (d.image, d.mask) if p is not None}
        # Small files are kept as they are hashed, for the checks to use.
        digester = Digester(peek_digests(self.url, paths), keep_bytes=PREREAD_BYTES)
        specs = specs_of(drafts, digester, self.output_dir)
        states = peek_job_states(self.url, list({spec.key: None for spec in specs}))
        names = OutputNames(self.output_dir)
        seen: set[str] = set()
        checks: list[V | None] = []
        plans: list[OutputPlan | None] = []
        with folders_cached(self.folders):
            for draft, spec in zip(drafts, specs, strict=True):
                again = spec.key in seen or draft.problem is not None
                seen.add(spec.key)
                plans.append(None if again else _plan(names, spec))
                skip = again or states.get(spec.key) in NOT_SENT_AGAIN
                checks.append(None if skip else self.check(spec, digester.read))
        keys = [(spec.key, spec.image_sha256, spec.mask_sha256) for spec in specs]
        return ChunkVerdict(keys, states, checks, plans)


def _plan(names: OutputNames, spec: JobSpec) -> OutputPlan | None:
    try:
        return names.plan(spec)
    except OutputError:
        return None


def checked_chunks(
    checker: ChunkChecker[V], chunks: Iterable[list[Draft]]
) -> Iterator[tuple[list[Draft], ChunkVerdict[V]]]:
    """Each chunk with its verdict, in order. From the second chunk on, the work goes to
    worker processes where they can be forked; if one dies (out of memory, killed), what
    is left is done here."""
    chunks = iter(chunks)
    head = [chunk for chunk in (next(chunks, None), next(chunks, None)) if chunk is not None]
    workers = _workers()
    if len(head) < 2 or workers < 2:
        for drafts in (*head, *chunks):
            yield drafts, checker(drafts)
        return
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_become_worker,
        initargs=(checker,),  # inherited through fork, never pickled
    )
    pending: deque[tuple[list[Draft], Future[ChunkVerdict[V]]]] = deque()
    try:
        for drafts in itertools.chain(head, chunks):
            pending.append((drafts, _submit(pool, checker, drafts)))
            # Two chunks per worker in flight: one being checked, one waiting, the rest
            # still unread in the table (memory stays that of a few chunks).
            if len(pending) > 2 * workers:
                yield _settle(checker, *pending.popleft())
        while pending:
            yield _settle(checker, *pending.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _submit(
    pool: ProcessPoolExecutor, checker: ChunkChecker[V], drafts: list[Draft]
) -> Future[ChunkVerdict[V]]:
    try:
        return pool.submit(_check_chunk, drafts)
    except BrokenProcessPool:  # a worker died: the rest is done here, in order
        done: Future[ChunkVerdict[V]] = Future()
        done.set_result(checker(drafts))
        return done


def _settle(
    checker: ChunkChecker[V], drafts: list[Draft], future: Future[ChunkVerdict[V]]
) -> tuple[list[Draft], ChunkVerdict[V]]:
    try:
        return drafts, future.result()
    except BrokenProcessPool:  # a worker died: its chunk is done here
        return drafts, checker(drafts)


def _workers() -> int:
    """Worker processes to fork: one per core this process may use, where fork is safe
    (Linux; macOS's system libraries are not fork-safe, and Windows has no fork)."""
    if not sys.platform.startswith("linux"):
        return 0
    return min(len(os.sched_getaffinity(0)), _MAX_WORKERS)


_checker: ChunkChecker[Any] | None = None  # in a worker: the checker it was forked with


def _become_worker(checker: ChunkChecker[Any]) -> None:
    global _checker
    _checker = checker
    # Ctrl-C is the parent's to handle (it stops the pool); the parent's event loop wake-up
    # pipe is not this process's to write to.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.set_wakeup_fd(-1)


def _check_chunk(drafts: Sequence[Draft]) -> ChunkVerdict[Any]:
    assert _checker is not None, "called outside a worker"
    return _checker(drafts)
