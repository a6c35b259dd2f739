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

import contextlib
import gc
import itertools
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import warnings
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
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
_PARENTS_SIGNALS = {signal.SIGINT, signal.SIGTERM}  # handled by the parent (runner.signals)
_GC_EVERY = 50_000  # allocations between collections while checking (see _fewer_collections)

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
) -> Generator[tuple[list[Draft], ChunkVerdict[V]], None, None]:
    """Each chunk with its verdict, in order. From the second chunk on, the work goes to
    worker processes where they can be forked; a chunk whose worker died (out of memory,
    killed) is checked here, and so is what is left once none is alive."""
    with _fewer_collections():
        yield from _checked(checker, iter(chunks))


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Python's cyclic garbage collector, run every 50,000 allocations instead of 700
    while a manifest is checked (in this process and in the workers it forks): a job makes
    dozens of short-lived objects, and no cycles, and the collections were 6 % of the
    time of validate at 100,000 jobs."""
    threshold = gc.get_threshold()
    gc.set_threshold(_GC_EVERY, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)


def _checked(
    checker: ChunkChecker[V], chunks: Iterator[list[Draft]]
) -> Iterator[tuple[list[Draft], ChunkVerdict[V]]]:
    head = [chunk for chunk in (next(chunks, None), next(chunks, None)) if chunk is not None]
    count = _workers()
    if len(head) < 2 or count < 2:
        for drafts in (*head, *chunks):
            yield drafts, checker(drafts)
        return
    context = multiprocessing.get_context("fork")
    workers = [_Worker(context, checker) for _ in range(count)]
    pending: deque[_Pending[V]] = deque()  # in manifest order
    try:
        for drafts in itertools.chain(head, chunks):
            while not (idle := [w for w in workers if w.alive and w.chunk is None]):
                if not any(w.alive for w in workers):
                    break
                _collect(checker, workers)
            entry = _Pending[V](drafts)
            if idle:
                idle[0].give(entry, checker)
            else:
                entry.verdict = checker(drafts)  # no worker left
            pending.append(entry)
            while pending and (verdict := pending[0].verdict) is not None:
                yield pending.popleft().drafts, verdict
        while pending:
            if (verdict := pending[0].verdict) is None:
                _collect(checker, workers)
            else:
                yield pending.popleft().drafts, verdict
    finally:
        for worker in workers:
            worker.stop()


@dataclass(slots=True)
class _Pending(Generic[V]):
    """A chunk, and its verdict once it is back."""

    drafts: list[Draft]
    verdict: ChunkVerdict[V] | None = None


class _Worker:
    """One forked worker process, with a pipe of its own (no lock shared between workers,
    so one killed mid-message takes nothing of the others' with it) and one chunk at a
    time (neither side ever blocks writing while the other does)."""

    def __init__(self, context: Any, checker: ChunkChecker[Any]) -> None:
        here, there = context.Pipe()
        # The checker is inherited through fork, never pickled.
        self._process = context.Process(target=_serve, args=(there, here, checker), daemon=True)
        # Held back in this thread across the fork: until the child has put its own
        # handlers in place, a signal would run the parent's there (a second "interrupted"
        # line). The main thread, which handles them here, still takes them meanwhile.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _PARENTS_SIGNALS)
        try:
            with warnings.catch_warnings():
                # Python 3.12+ warns of forking a process with threads: a lock another
                # thread holds stays held in the child. Here the event loop's thread waits
                # in epoll holding none, and the child takes only locks of its own making.
                warnings.simplefilter("ignore", DeprecationWarning)
                self._process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        there.close()
        self.conn = here
        self.alive = True
        self.chunk: _Pending[Any] | None = None  # what it is working on

    def give(self, entry: _Pending[Any], checker: ChunkChecker[Any]) -> None:
        try:
            self.conn.send(entry.drafts)
        except OSError:  # it died since it was last heard from
            self.alive = False
            entry.verdict = checker(entry.drafts)
            return
        self.chunk = entry

    def take(self, checker: ChunkChecker[Any]) -> None:
        """Its verdict, which is ready (or its death: its chunk is checked here)."""
        assert self.chunk is not None
        entry, self.chunk = self.chunk, None
        try:
            entry.verdict = self.conn.recv()
        except (EOFError, OSError):
            self.alive = False
            entry.verdict = checker(entry.drafts)

    def stop(self) -> None:
        if self.alive and self.chunk is None:
            with contextlib.suppress(OSError):
                self.conn.send(None)  # done: it exits
            self._process.join(timeout=5)
        if self._process.is_alive():  # busy with a chunk no one will read
            self._process.terminate()
            self._process.join(timeout=5)
        self.conn.close()


def _collect(checker: ChunkChecker[Any], workers: list[_Worker]) -> None:
    """Wait for at least one busy worker's verdict, and take what is ready."""
    busy = {w.conn: w for w in workers if w.alive and w.chunk is not None}
    assert busy, "a chunk is out with no worker"  # else wait() would never return
    for conn in multiprocessing.connection.wait(list(busy)):
        busy[conn].take(checker)


def _workers() -> int:
    """Worker processes to fork: one per core this process may use, where fork is safe
    (Linux; macOS's system libraries are not fork-safe, and Windows has no fork)."""
    if not sys.platform.startswith("linux"):
        return 0
    return min(len(os.sched_getaffinity(0)), _MAX_WORKERS)


def _serve(conn: Connection, parent_end: Connection, checker: ChunkChecker[Any]) -> None:
    """A worker's life: a chunk in, its verdict out, until told to stop or the parent is
    gone (its end of the pipe closes: EOF)."""
    parent_end.close()  # so that the parent's exit is seen as EOF here
    # Ctrl-C and SIGTERM are the parent's to handle (it stops the workers): not its
    # handlers, which would report the interruption once per worker. Nor is the parent's
    # event loop wake-up pipe this process's to write to.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _PARENTS_SIGNALS)  # blocked across the fork
    try:
        while (drafts := conn.recv()) is not None:
            conn.send(checker(drafts))
    except (EOFError, OSError):
        pass  # the parent is gone
    except BaseException:  # the parent checks the chunk again, and says what went wrong
        os._exit(1)  # quietly: a traceback here would be the same error told twice
