"""The Store protocol: everything the runner asks of its database, in domain verbs.

`sql.SqlStore` implements it over SQLAlchemy; `memory.MemoryStore` is its in-memory twin
for pool tests. Nothing outside `store/` writes SQL.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from runner.errors import StopNotice
from runner.manifest.digests import DigestEntry
from runner.records import (
    AttemptRecord,
    ExportRow,
    FailureKind,
    Job,
    JobSpec,
    JobState,
    OutputRef,
    Summary,
)


@dataclass(frozen=True, slots=True)
class RunInfo:
    id: str
    manifest: str
    host: str
    pid: int
    process_tag: str


class AttemptTicket(Protocol):
    """A recorded attempt, handed back to the store to finish it."""

    @property
    def id(self) -> int:
        """The attempt's row id, for a completion that has to be recorded later."""
        ...


class Store(Protocol):
    async def close(self) -> None: ...

    # -- the manifest's jobs ------------------------------------------------------------
    async def sync_manifest(
        self, manifest: str, specs: Sequence[JobSpec], *, start: int = 0, final: bool = True
    ) -> int:
        """Add new jobs (pending), refresh where known jobs' inputs now live, and make
        `specs` the manifest's jobs from position `start` on; `final`: the last of them
        (a long manifest is synced in chunks, each a call). Returns how many jobs were new."""
        ...

    async def specs_page(
        self,
        manifest: str,
        states: Collection[str],
        after: int,
        limit: int,
        before: int | None = None,
    ) -> Sequence[tuple[int, JobSpec]]:
        """(position, spec) of up to `limit` of the manifest's jobs in `states`, past
        position `after` (and before `before`), in manifest order: its jobs a page at a
        time, never all at once."""
        ...

    async def state_counts(
        self, manifest: str, positions: tuple[int, int | None] = (0, None)
    ) -> Mapping[tuple[str, str], int]:
        """How many of the manifest's jobs (those at `positions`: from, before) each
        (provider, state) has."""
        ...

    async def record_sync(self, manifest: str, fingerprint: str | None, duplicates: int) -> None:
        """What the manifest looked like when its jobs were synced (None: not
        fingerprintable, e.g. it has globs, whose matches change without it)."""
        ...

    async def last_sync(self, manifest: str) -> tuple[str, int] | None:
        """(fingerprint, duplicates) of the manifest's last sync, if any."""
        ...

    async def retry(self, manifest: str, key: str | None = None) -> int:
        """Failed jobs back to pending with a fresh attempt budget (a cancelled one too when
        named by `key`); history kept. Returns how many moved."""
        ...

    async def cancel(self, manifest: str, key: str | None, states: Collection[JobState]) -> int:
        """Jobs in `states` (never running ones) to cancelled; `runner retry --job` undoes it."""
        ...

    async def reject_rows(self, problems: Mapping[str, str]) -> Sequence[str]:
        """Fail these new jobs of unusable table rows (key -> the row's problem), nothing
        sent; returns the keys failed now (not those an earlier sync failed)."""
        ...

    async def set_prices(self, prices: Mapping[str, str]) -> None:
        """job key -> the price (JSON) it is costed at; only unfinished jobs change."""
        ...

    async def load_catalogue(self, source_url: str) -> tuple[datetime, str] | None: ...

    async def save_catalogue(self, source_url: str, body: str) -> None: ...

    # -- runs and leases ----------------------------------------------------------------
    async def start_run(self, run: RunInfo) -> None: ...

    async def end_run(self, run_id: str, exit_code: int, stop_reason: str | None) -> None: ...

    async def reclaim_dead_runs(self, dead_run_ids: Iterable[str]) -> int:
        """Close runs whose process is gone and release the jobs they held; their
        unanswered attempts become `abandoned`. Returns how many jobs were released."""
        ...

    async def unfinished_runs(self, host: str) -> Sequence[RunInfo]: ...

    async def claim_many(
        self,
        manifest: str,
        provider: str,
        owner: str,
        lease_until: datetime,
        limit: int,
        below: int | None = None,
    ) -> Sequence[Job]:
        """Take up to `limit` claimable jobs (pending; else running with an expired lease) of
        this manifest and provider, in manifest order; no two callers get the same job.
        `below`: only jobs at positions before it (a sync still running behind the run has
        written those; past it, the job list may still be the previous sync's)."""
        ...

    async def renew_leases(self, owner: str, lease_until: datetime) -> None: ...

    async def held_elsewhere(self, manifest: str, provider: str, owner: str) -> int:
        """Jobs of this manifest and provider that other live runners hold."""
        ...

    # -- one job's life -----------------------------------------------------------------
    async def begin_attempt(
        self,
        key: str,
        owner: str,
        provider: str,
        model: str,
        *,
        lease_until: datetime | None = None,
        in_flight_limit: int | None = None,
        own_in_flight: int | None = None,
        interval_s: float | None = None,
    ) -> AttemptTicket:
        """Record an `in_flight` attempt; returns once it is committed, so that a request sent
        afterwards is on record even if the runner dies before the answer.

        Only if the job is still `owner`'s: running under `owner`'s lease and, with
        `lease_until`, a lease that has not lapsed (then extended to `lease_until` in the
        same transaction, so no other runner can take the job while the request is out).
        Else LeaseLost, and nothing is written: a runner paused past its lease never pays
        for a job another runner has taken. StoppedElsewhere when any runner has stopped
        this provider (`stop_provider`). With `in_flight_limit`, ProviderBusy when every
        runner's requests out to this provider, together, already reach it; `own_in_flight`
        is `owner`'s own count of its requests out (the attempts it has in the database may
        wait for their answers' records behind it), None to count them there too. ProviderPaced
        while a pause (`pause_provider`) lasts, or, with `interval_s`, until the provider's
        next free slot: the runners together send at most one request per `interval_s`."""
        ...

    async def finish_attempt(self, ticket: AttemptTicket, record: AttemptRecord) -> None: ...

    async def reserve_budget(
        self, run_id: str, manifest: str, estimate: float, cap: float
    ) -> tuple[bool, float]:
        """Under --max-cost, before a job is started: reserve its estimate if what the runs
        of this manifest sharing the budget have spent and reserved, plus it, stays within
        `cap`. Runs share a budget when their lifetimes overlap this run's. Returns whether
        it was reserved, and what was committed before it."""
        ...

    async def release_budget(self, run_id: str, estimate: float) -> None:
        """The job is over: its reservation goes (its attempts' costs now count instead)."""
        ...

    async def pause_provider(self, provider: str, seconds: float, run_id: str) -> None:
        """Hold the other runners' requests to `provider` for `seconds` (a Retry-After
        answered to `run_id`, which pauses with its own gate)."""
        ...

    async def stop_provider(self, notice: StopNotice, run_id: str) -> None:
        """Stop every runner on this database from sending to `notice.provider`: their
        next `begin_attempt` for it raises StoppedElsewhere."""
        ...

    async def clear_provider_stops(self, providers: Collection[str]) -> None:
        """A run is starting (after a top-up, a new key): these providers may be tried."""
        ...

    async def complete(
        self, key: str, owner: str, ticket: AttemptTicket, record: AttemptRecord,
        outputs: Sequence[OutputRef], *, release_usd: float = 0.0,
    ) -> bool:  # fmt: skip
        """Record a paid success. The attempt is always finished (it was paid); the job
        succeeds with these outputs only if `owner` still holds it (True). A runner whose
        job another runner has taken never records a result over the holder's (False).
        `release_usd` of `owner`'s budget reservation goes in the same transaction as the
        cost comes in (see `reserve_budget`), so the two are never both counted, or neither."""
        ...

    async def holds(self, key: str, owner: str) -> bool:
        """Whether `owner` still holds the job (running under its lease, lapsed or not)."""
        ...

    async def fail(self, key: str, owner: str, reason: str, kind: FailureKind) -> None: ...

    async def release(self, key: str, owner: str, *, fresh_attempts: bool = False) -> None:
        """Back to pending; `fresh_attempts` restarts its attempt budget (history kept)."""
        ...

    async def renew_attempts(self, key: str, owner: str) -> None:
        """A fresh set of attempts for a job we hold (its failures were the provider's
        weather); the limit on blind re-sends is not reset."""
        ...

    async def record_late(
        self, key: str, attempt_id: int, record: AttemptRecord, outputs: Sequence[OutputRef]
    ) -> bool:
        """Record a completion whose files were written while the database took no writes:
        the attempt's answer, its outputs, the job succeeded. False (and nothing changed) if
        the job has succeeded meanwhile or the attempt is unknown."""
        ...

    # -- reading ------------------------------------------------------------------------
    async def summary(self, manifest: str) -> Summary: ...

    async def export_rows(
        self, manifest: str, keys: Collection[str] | None = None
    ) -> Sequence[ExportRow]:
        """The manifest's jobs with their results, in manifest order; `keys`: only those."""
        ...

    async def export_page(
        self, manifest: str, states: Collection[str], after: int, limit: int
    ) -> Sequence[tuple[int, ExportRow]]:
        """(position, row) of up to `limit` of the manifest's jobs in `states` past position
        `after`, in manifest order: `export_rows` a page at a time."""
        ...

    async def job_states(self, manifest: str) -> Mapping[str, str]: ...

    async def succeeded_costs(self, manifest: str) -> Mapping[str, float]:
        """What each succeeded job's successful reply cost, where known (the estimates
        learn from earlier runs' replies)."""
        ...

    async def output_paths(self) -> frozenset[str]:
        """Every output file ever recorded, any manifest: never an input of a glob."""
        ...

    # -- input digest cache -------------------------------------------------------------
    async def digests_for(self, paths: Collection[str]) -> Mapping[str, DigestEntry]:
        """The cached digests of these paths (a chunk of a manifest's inputs)."""
        ...

    async def save_digests(self, entries: Sequence[DigestEntry]) -> None: ...
