"""MemoryStore: the Store protocol in plain Python objects, the twin of `sql.SqlStore`.

It keeps the same rules as the SQL store (claims in manifest order, leases, attempts
counted from their own rows above a floor, a success that stands even after a lost lease,
redaction of provider texts), so the pool's races can be tested without a database, and
`tests/unit/test_store_contract.py` runs the same scenarios on both and compares them.
Nothing is persisted; one event loop, no locks needed.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from runner.errors import LeaseLost, ProviderBusy, ProviderPaced, StopNotice, StoppedElsewhere
from runner.manifest.digests import DigestEntry
from runner.records import (
    DIED,
    SILENT_AFTER_S,
    AttemptRecord,
    ExportRow,
    FailureKind,
    Job,
    JobSpec,
    JobState,
    Outcome,
    OutputRef,
    ProviderAccount,
    Summary,
    Totals,
    fleet_entry,
    short_key,
)
from runner.redact import redact
from runner.store.protocol import AttemptTicket, RunInfo

if TYPE_CHECKING:
    from runner.store.protocol import Store

_PENDING, _RUNNING = JobState.PENDING.value, JobState.RUNNING.value


@dataclass(frozen=True, slots=True)
class _Ticket:
    id: int


@dataclass(slots=True)
class _JobRow:
    spec: JobSpec
    status: str = _PENDING
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    attempt_floor: int = 0  # attempts up to this id no longer use up the job's budget
    retry_floor: int = 0  # timeouts up to this id no longer count as blind re-sends
    error: str | None = None
    failure_kind: str | None = None
    finished_at: datetime | None = None
    price_json: str | None = None


@dataclass(slots=True)
class _AttemptRow:
    id: int
    job_key: str
    run_id: str
    provider: str
    model: str
    started_at: datetime
    outcome: str = Outcome.IN_FLIGHT.value
    counted: bool = True  # until the answer says otherwise: a crash may still be billed
    finished_at: datetime | None = None
    record: AttemptRecord | None = None

    def tokens(self) -> tuple[int, int, int]:
        usage = self.record.usage if self.record else None
        if usage is None:
            return 0, 0, 0
        return usage.input_tokens or 0, usage.output_tokens or 0, usage.total_tokens or 0

    @property
    def cost_usd(self) -> float:
        return (self.record.cost_usd if self.record else None) or 0.0

    @property
    def balance_usd(self) -> float | None:
        facts = self.record.facts if self.record else None
        return facts.balance_usd if facts else None

    @property
    def balance_diem(self) -> float | None:
        facts = self.record.facts if self.record else None
        return facts.balance_diem if facts else None

    @property
    def balance_after_usd(self) -> float | None:
        facts = self.record.facts if self.record else None
        return facts.balance_after_usd if facts else None


@dataclass(slots=True)
class _Pace:
    next_slot_at: datetime | None = None
    slot_run_id: str | None = None
    paused_until: datetime | None = None
    pause_run_id: str | None = None


@dataclass(slots=True)
class _RunRow:
    info: RunInfo
    started_at: datetime
    heartbeat_at: datetime
    ended_at: datetime | None = None
    exit_code: int | None = None
    stop_reason: str | None = None
    reserved_usd: float = 0.0  # see `Store.reserve_budget`


@dataclass(slots=True)
class _Tables:
    jobs: dict[str, _JobRow] = field(default_factory=dict)
    manifests: dict[str, list[str]] = field(default_factory=dict)  # job keys in order
    attempts: dict[int, _AttemptRow] = field(default_factory=dict)
    outputs: list[tuple[str, int, OutputRef]] = field(default_factory=list)
    runs: dict[str, _RunRow] = field(default_factory=dict)
    catalogues: dict[str, tuple[datetime, str]] = field(default_factory=dict)
    digests: dict[str, DigestEntry] = field(default_factory=dict)
    stops: dict[str, StopNotice] = field(default_factory=dict)  # provider → why it stopped
    pace: dict[str, _Pace] = field(default_factory=dict)  # provider → as `provider_pace`


class MemoryStore:
    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._now = clock
        self._t = _Tables()
        self._ids = itertools.count(1)
        self._syncs: dict[str, tuple[str, int]] = {}

    async def close(self) -> None:
        return None

    # -- the manifest's jobs ------------------------------------------------------------
    async def sync_manifest(
        self, manifest: str, specs: Sequence[JobSpec], *, start: int = 0, final: bool = True
    ) -> int:
        new = 0
        for spec in specs:
            row = self._t.jobs.get(spec.key)
            if row is None:
                self._t.jobs[spec.key] = _JobRow(spec)
                new += 1
            else:  # same content, maybe moved or renamed: paths and output names follow
                row.spec = spec
        keys = [spec.key for spec in specs]
        earlier = self._t.manifests.get(manifest, [])
        later = [] if final else earlier[start + len(keys) :]
        self._t.manifests[manifest] = earlier[:start] + keys + later
        return new

    async def specs_page(
        self,
        manifest: str,
        states: Collection[str],
        after: int,
        limit: int,
        before: int | None = None,
    ) -> Sequence[tuple[int, JobSpec]]:
        keys = self._t.manifests.get(manifest, [])
        found = []
        end = len(keys) if before is None else min(before, len(keys))
        for position in range(max(after + 1, 0), end):
            row = self._t.jobs[keys[position]]
            if row.status in states:
                found.append((position, row.spec))
                if len(found) >= limit:
                    break
        return found

    async def state_counts(
        self, manifest: str, positions: tuple[int, int | None] = (0, None)
    ) -> Mapping[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for row in self._members(manifest)[positions[0] : positions[1]]:
            group = (row.spec.provider, row.status)
            counts[group] = counts.get(group, 0) + 1
        return counts

    async def record_sync(self, manifest: str, fingerprint: str | None, duplicates: int) -> None:
        if fingerprint is None:
            self._syncs.pop(manifest, None)
        else:
            self._syncs[manifest] = (fingerprint, duplicates)

    async def last_sync(self, manifest: str) -> tuple[str, int] | None:
        return self._syncs.get(manifest)

    async def retry(self, manifest: str, key: str | None = None) -> int:
        states = (JobState.FAILED, JobState.CANCELLED) if key else (JobState.FAILED,)
        return self._move(manifest, states, JobState.PENDING, key)

    async def cancel(self, manifest: str, key: str | None, states: Collection[JobState]) -> int:
        return self._move(manifest, states, JobState.CANCELLED, key)

    def _move(
        self, manifest: str, states: Collection[JobState], to: JobState, key: str | None
    ) -> int:
        wanted = {state.value for state in states}
        moved = 0
        for row in self._members(manifest):
            if row.status not in wanted or (key is not None and not row.spec.key.startswith(key)):
                continue
            if to is JobState.PENDING and row.failure_kind == FailureKind.ROW.value:
                continue  # an unusable table row: only fixing the row helps
            row.status = to.value
            if to is JobState.PENDING:
                # A fresh set of attempts, and the blind re-send limit starts over.
                row.attempt_floor = row.retry_floor = self._latest_attempt(row.spec.key)
                row.finished_at, row.failure_kind = None, None
            else:
                row.finished_at = self._now()
            moved += 1
        return moved

    async def reject_rows(self, problems: Mapping[str, str]) -> Sequence[str]:
        failed = []
        for key, problem in problems.items():
            row = self._t.jobs.get(key)
            if row is not None and row.status == _PENDING:
                row.status, row.failure_kind = JobState.FAILED.value, FailureKind.ROW.value
                row.error, row.finished_at = problem, self._now()
                failed.append(key)
        return failed

    async def set_prices(self, prices: Mapping[str, str]) -> None:
        for key, price in prices.items():
            row = self._t.jobs.get(key)
            if row is not None and row.status == _PENDING:  # as `admin.set_prices`
                row.price_json = price

    async def load_catalogue(self, source_url: str) -> tuple[datetime, str] | None:
        return self._t.catalogues.get(source_url)

    async def save_catalogue(self, source_url: str, body: str) -> None:
        self._t.catalogues[source_url] = (self._now(), redact(body))

    # -- runs and leases ----------------------------------------------------------------
    async def start_run(self, run: RunInfo) -> None:
        now = self._now()
        self._t.runs[run.id] = _RunRow(run, started_at=now, heartbeat_at=now)

    async def end_run(self, run_id: str, exit_code: int, stop_reason: str | None) -> None:
        self._release_runs([run_id])
        run = self._t.runs.get(run_id)
        if run is not None:
            run.ended_at, run.exit_code, run.stop_reason = (
                self._now(),
                exit_code,
                redact(stop_reason),
            )

    async def unfinished_runs(self, host: str) -> Sequence[RunInfo]:
        return [r.info for r in self._t.runs.values() if r.info.host == host and not r.ended_at]

    async def reclaim_dead_runs(self, dead_run_ids: Iterable[str]) -> int:
        ids = list(dead_run_ids)
        if not ids:
            return 0
        released = self._release_runs(ids)
        for run_id in ids:
            run = self._t.runs.get(run_id)
            if run is not None:
                run.ended_at, run.stop_reason = self._now(), DIED
        return released

    def _release_runs(self, ids: Sequence[str]) -> int:
        """Jobs these runs hold go back to pending; their unanswered attempts are abandoned."""
        released = 0
        for row in self._t.jobs.values():
            if row.lease_owner in ids and row.status == _RUNNING:
                row.status, row.lease_owner, row.lease_expires_at = _PENDING, None, None
                released += 1
        for attempt in self._t.attempts.values():
            if attempt.run_id in ids and attempt.outcome == Outcome.IN_FLIGHT.value:
                attempt.outcome, attempt.finished_at = Outcome.ABANDONED.value, self._now()
        return released

    async def claim_many(
        self,
        manifest: str,
        provider: str,
        owner: str,
        lease_until: datetime,
        limit: int,
        below: int | None = None,
    ) -> Sequence[Job]:
        now = self._now()
        take = (manifest, provider, owner, lease_until, limit, now, below)
        rows = self._take(*take, expired=False)
        if not rows:  # rare: only a crashed runner's jobs whose leases have lapsed
            rows = self._take(*take, expired=True)
            keys = {row.spec.key for row in rows}
            for attempt in self._t.attempts.values():
                if attempt.job_key in keys and attempt.outcome == Outcome.IN_FLIGHT.value:
                    attempt.outcome, attempt.finished_at = Outcome.ABANDONED.value, now
        return [Job(row.spec, self._counted_this_round(row), self._unanswered(row)) for row in rows]

    def _take(
        self,
        manifest: str,
        provider: str,
        owner: str,
        lease_until: datetime,
        limit: int,
        now: datetime,
        below: int | None,
        *,
        expired: bool,
    ) -> list[_JobRow]:
        def takeable(row: _JobRow) -> bool:
            if expired:
                return row.status == _RUNNING and (
                    row.lease_expires_at is not None and row.lease_expires_at < now
                )
            return row.status == _PENDING

        taken = [
            row
            for row in self._members(manifest)[:below]
            if row.spec.provider == provider and takeable(row)
        ][:limit]
        for row in taken:
            row.status, row.lease_owner, row.lease_expires_at = _RUNNING, owner, lease_until
        return taken

    async def renew_leases(self, owner: str, lease_until: datetime) -> None:
        for row in self._t.jobs.values():
            if row.lease_owner == owner and row.status == _RUNNING:
                row.lease_expires_at = lease_until
        run = self._t.runs.get(owner)
        if run is not None:
            run.heartbeat_at = self._now()

    async def held_elsewhere(self, manifest: str, provider: str, owner: str) -> int:
        return sum(
            1
            for row in self._members(manifest)
            if row.spec.provider == provider
            and row.status == _RUNNING
            and row.lease_owner is not None
            and row.lease_owner != owner
        )

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
        if (stop := self._t.stops.get(provider)) is not None:
            raise StoppedElsewhere(stop)
        now = self._now()
        pace = self._t.pace.get(provider)
        ready = now  # what another live run set (this run's own gate keeps its own)
        if pace is not None and pace.paused_until and self._other_live(pace.pause_run_id, owner):
            ready = max(ready, pace.paused_until)
        if (
            pace is not None
            and interval_s
            and pace.next_slot_at
            and self._other_live(pace.slot_run_id, owner)
        ):
            ready = max(ready, pace.next_slot_at)
        if ready > now:
            raise ProviderPaced((ready - now).total_seconds())
        if in_flight_limit is not None and self._out_now(provider, owner, own_in_flight) >= (
            in_flight_limit
        ):
            raise ProviderBusy(f"{provider}: {in_flight_limit} requests out across runners")
        row = self._t.jobs.get(key)
        lease = row.lease_expires_at if row is not None else None
        if (
            row is None
            or row.lease_owner != owner
            or row.status != _RUNNING
            or (lease_until is not None and (lease is None or lease <= self._now()))
        ):
            raise LeaseLost(f"job {short_key(key)} is no longer held by this run; not sent")
        if lease_until is not None:
            row.lease_expires_at = lease_until
        if interval_s:
            taken = self._t.pace.setdefault(provider, _Pace())
            taken.next_slot_at, taken.slot_run_id = now + timedelta(seconds=interval_s), owner
        attempt_id = next(self._ids)
        self._t.attempts[attempt_id] = _AttemptRow(
            attempt_id, key, owner, provider, model, started_at=self._now()
        )
        return _Ticket(attempt_id)

    def _out_now(self, provider: str, owner: str, own: int | None) -> int:
        now = self._now()
        count = own or 0
        for a in self._t.attempts.values():
            job = self._t.jobs.get(a.job_key)
            if (
                (own is None or a.run_id != owner)
                and a.provider == provider
                and a.outcome == Outcome.IN_FLIGHT.value
                and job is not None
                and job.lease_owner == a.run_id
                and job.status == _RUNNING
                and job.lease_expires_at is not None
                and job.lease_expires_at > now
            ):
                count += 1
        return count

    async def reserve_budget(
        self, run_id: str, manifest: str, estimate: float, cap: float
    ) -> tuple[bool, float]:
        now = self._now()
        me = self._t.runs.get(run_id)
        since = me.started_at if me is not None else now
        sharing = [
            run
            for run in self._t.runs.values()
            if run.info.manifest == manifest and (run.ended_at is None or run.ended_at >= since)
        ]
        ids = {run.info.id for run in sharing}
        spent = sum(
            a.record.cost_usd or 0.0
            for a in self._t.attempts.values()
            if a.run_id in ids and a.record is not None
        )
        alive = now - timedelta(seconds=SILENT_AFTER_S)
        reserved = sum(
            run.reserved_usd for run in sharing if run.ended_at is None and run.heartbeat_at > alive
        )
        committed = spent + reserved
        if committed + estimate > cap + 1e-9:
            return False, committed
        if me is not None:
            me.reserved_usd += estimate
        return True, committed

    async def release_budget(self, run_id: str, estimate: float) -> None:
        run = self._t.runs.get(run_id)
        if run is not None:
            run.reserved_usd = max(run.reserved_usd - estimate, 0.0)

    def _other_live(self, run_id: str | None, owner: str) -> bool:
        run = self._t.runs.get(run_id) if run_id is not None and run_id != owner else None
        return run is not None and run.ended_at is None

    async def pause_provider(self, provider: str, seconds: float, run_id: str) -> None:
        pace = self._t.pace.setdefault(provider, _Pace())
        until = self._now() + timedelta(seconds=seconds)
        if pace.paused_until is None or pace.paused_until < until:
            pace.paused_until, pace.pause_run_id = until, run_id

    async def stop_provider(self, notice: StopNotice, run_id: str) -> None:
        self._t.stops.setdefault(
            notice.provider, replace(notice, message=redact(notice.message) or "")
        )

    async def clear_provider_stops(self, providers: Collection[str]) -> None:
        for provider in providers:
            self._t.stops.pop(provider, None)

    async def finish_attempt(self, ticket: AttemptTicket, record: AttemptRecord) -> None:
        self._finish(ticket.id, record)

    def _finish(self, attempt_id: int, record: AttemptRecord) -> None:
        attempt = self._t.attempts.get(attempt_id)
        if attempt is None:
            return
        attempt.outcome, attempt.counted = record.outcome.value, record.counted
        attempt.finished_at = self._now()
        # Provider texts: redacted at the provider already, and again here.
        attempt.record = AttemptRecord(
            outcome=record.outcome,
            latency_ms=record.latency_ms,
            http_status=record.http_status,
            error_code=redact(record.error_code),
            error_message=redact(record.error_message),
            request_id=redact(record.request_id),
            usage=record.usage,
            cost_usd=record.cost_usd,
            counted=record.counted,
            facts=record.facts,
        )

    async def complete(
        self,
        key: str,
        owner: str,
        ticket: AttemptTicket,
        record: AttemptRecord,
        outputs: Sequence[OutputRef],
        *,
        release_usd: float = 0.0,
    ) -> bool:
        if release_usd:
            await self.release_budget(owner, release_usd)
        return self._complete(key, ticket.id, record, outputs, owner)

    async def holds(self, key: str, owner: str) -> bool:
        return self._held(key, owner) is not None

    async def record_late(
        self, key: str, attempt_id: int, record: AttemptRecord, outputs: Sequence[OutputRef]
    ) -> bool:
        attempt = self._t.attempts.get(attempt_id)
        job = self._t.jobs.get(key)
        if attempt is None or attempt.job_key != key or job is None:
            return False
        if job.status == JobState.SUCCEEDED.value:
            return False
        return self._complete(key, attempt_id, record, outputs, None)

    def _complete(
        self,
        key: str,
        attempt_id: int,
        record: AttemptRecord,
        outputs: Sequence[OutputRef],
        owner: str | None,
    ) -> bool:
        self._finish(attempt_id, record)  # paid, whoever holds the job now
        row = self._t.jobs.get(key) if owner is None else self._held(key, owner)
        if row is None or row.status == JobState.SUCCEEDED.value:
            return False
        self._t.outputs.extend((key, attempt_id, output) for output in outputs)
        row.status = JobState.SUCCEEDED.value
        row.error, row.failure_kind = redact(record.error_message), None
        row.lease_owner, row.lease_expires_at = None, None
        row.finished_at = self._now()
        return True

    async def fail(self, key: str, owner: str, reason: str, kind: FailureKind) -> None:
        row = self._held(key, owner)
        if row is not None:
            self._settle(row, JobState.FAILED)
            row.error, row.failure_kind, row.finished_at = redact(reason), kind.value, self._now()

    async def release(self, key: str, owner: str, *, fresh_attempts: bool = False) -> None:
        row = self._held(key, owner)
        if row is not None:
            self._settle(row, JobState.PENDING)
            if fresh_attempts:
                row.attempt_floor = self._latest_attempt(key)

    async def renew_attempts(self, key: str, owner: str) -> None:
        row = self._t.jobs.get(key)
        if row is not None and row.lease_owner == owner:
            row.attempt_floor = self._latest_attempt(key)

    def _held(self, key: str, owner: str) -> _JobRow | None:
        """The job if we still hold it; a job another runner has since taken is left alone."""
        row = self._t.jobs.get(key)
        if row is None or row.lease_owner != owner or row.status != _RUNNING:
            return None
        return row

    @staticmethod
    def _settle(row: _JobRow, status: JobState) -> None:
        row.status, row.lease_owner, row.lease_expires_at = status.value, None, None

    # -- reading ------------------------------------------------------------------------
    async def summary(self, manifest: str) -> Summary:
        counts = {state.value: 0 for state in JobState}
        kinds: dict[str, int] = {}
        members = self._members(manifest)
        for row in members:
            counts[row.status] = counts.get(row.status, 0) + 1
            if row.status == JobState.FAILED.value:
                kind = row.failure_kind or "unknown"
                kinds[kind] = kinds.get(kind, 0) + 1
        keys = {row.spec.key for row in members}
        attempts = [a for a in self._t.attempts.values() if a.job_key in keys]
        runs = [r for r in self._t.runs.values() if r.info.manifest == manifest]
        last = max(runs, key=lambda r: (r.started_at, r.info.id), default=None)
        return Summary(
            counts,
            _totals(attempts),
            _run_dict(last) if last else None,
            self._accounts(attempts),
            kinds,
            fleet=self._fleet(runs),
        )

    def _fleet(self, runs: Sequence[_RunRow]) -> list[dict[str, Any]]:
        now = self._now()
        shown = [
            run
            for run in sorted(runs, key=lambda r: (r.started_at, r.info.id))
            if run.ended_at is None
            or (run.stop_reason == DIED and run.ended_at > now - timedelta(days=1))
        ]
        entries = []
        for run in shown:
            held = sum(
                1
                for row in self._t.jobs.values()
                if row.lease_owner == run.info.id and row.status == _RUNNING
            )
            out: dict[str, int] = {}
            for a in self._t.attempts.values():
                if a.run_id == run.info.id and a.outcome == Outcome.IN_FLIGHT.value:
                    out[a.provider] = out.get(a.provider, 0) + 1
            age = (now - run.heartbeat_at).total_seconds()
            entries.append(
                fleet_entry(
                    run.info.id,
                    run.info.host,
                    run.info.pid,
                    age,
                    held,
                    out,
                    run.ended_at is not None,
                )
            )
        return entries

    def _accounts(self, attempts: Sequence[_AttemptRow]) -> dict[str, ProviderAccount]:
        """Per provider profile: what these jobs cost, and the latest balance any answer
        from it reported (balances are per account, so any manifest's answer counts)."""
        spend: dict[str, float] = {}
        for attempt in attempts:
            spend[attempt.provider] = spend.get(attempt.provider, 0.0) + attempt.cost_usd
        accounts = {}
        for provider, cost in spend.items():
            mine = [a for a in self._t.attempts.values() if a.provider == provider]
            before = max((a for a in mine if a.balance_usd is not None), key=_by_id, default=None)
            after = max(
                (a for a in mine if a.balance_after_usd is not None), key=_by_id, default=None
            )
            seen = max(
                (a.finished_at for a in (before, after) if a and a.finished_at), default=None
            )
            accounts[provider] = ProviderAccount(
                cost_usd=cost,
                balance_usd=before.balance_usd if before else None,
                balance_diem=before.balance_diem if before else None,
                balance_after_usd=after.balance_after_usd if after else None,
                balance_seen_at=seen.isoformat() if seen else None,
            )
        return accounts

    async def export_page(
        self, manifest: str, states: Collection[str], after: int, limit: int
    ) -> Sequence[tuple[int, ExportRow]]:
        page = await self.specs_page(manifest, states, after, limit)
        rows = {r.key: r for r in await self.export_rows(manifest, {s.key for _, s in page})}
        return [(position, rows[spec.key]) for position, spec in page]

    async def export_rows(
        self, manifest: str, keys: Collection[str] | None = None
    ) -> Sequence[ExportRow]:
        rows = []
        for row in self._members(manifest):
            spec = row.spec
            if keys is not None and spec.key not in keys:
                continue
            attempts = [a for a in self._t.attempts.values() if a.job_key == spec.key]
            latest_balance = max(
                (a for a in attempts if a.balance_usd is not None), key=_by_id, default=None
            )
            rows.append(
                ExportRow(
                    key=spec.key,
                    image=str(spec.image),
                    mask=str(spec.mask) if spec.mask else None,
                    prompt=spec.prompt,
                    provider=spec.provider,
                    model=spec.model,
                    params=json.loads(json.dumps(dict(spec.params), sort_keys=True)),
                    status=row.status,
                    attempts=sum(1 for a in attempts if a.counted),
                    error=row.error,
                    usage=_totals(attempts),
                    outputs=tuple(str(o.path) for key, _, o in self._t.outputs if key == spec.key),
                    price=json.loads(row.price_json) if row.price_json else None,
                    balance_usd=latest_balance.balance_usd if latest_balance else None,
                    output_sha256=tuple(
                        o.sha256 for key, _, o in self._t.outputs if key == spec.key
                    ),
                    request_id=next(
                        (
                            a.record.request_id
                            for a in sorted(attempts, key=_by_id, reverse=True)
                            if a.outcome == Outcome.SUCCEEDED.value and a.record is not None
                        ),
                        None,
                    ),
                )
            )
        return rows

    async def job_states(self, manifest: str) -> Mapping[str, str]:
        return {row.spec.key: row.status for row in self._members(manifest)}

    async def succeeded_costs(self, manifest: str) -> Mapping[str, float]:
        keys = {row.spec.key for row in self._members(manifest)}
        return {
            a.job_key: a.record.cost_usd
            for a in self._t.attempts.values()
            if a.job_key in keys
            and a.outcome == Outcome.SUCCEEDED.value
            and a.record is not None
            and a.record.cost_usd is not None
        }

    async def output_paths(self) -> frozenset[str]:
        return frozenset(str(output.path) for _, _, output in self._t.outputs)

    # -- input digest cache -------------------------------------------------------------
    async def digests_for(self, paths: Collection[str]) -> Mapping[str, DigestEntry]:
        return {p: self._t.digests[p] for p in paths if p in self._t.digests}

    async def save_digests(self, entries: Sequence[DigestEntry]) -> None:
        self._t.digests.update({entry.path: entry for entry in entries})

    # -- helpers ------------------------------------------------------------------------
    def _members(self, manifest: str) -> list[_JobRow]:
        return [self._t.jobs[key] for key in self._t.manifests.get(manifest, ())]

    def _latest_attempt(self, key: str) -> int:
        return max((a.id for a in self._t.attempts.values() if a.job_key == key), default=0)

    def _counted_this_round(self, row: _JobRow) -> int:
        return sum(
            1
            for a in self._t.attempts.values()
            if a.job_key == row.spec.key and a.counted and a.id > row.attempt_floor
        )

    def _unanswered(self, row: _JobRow) -> int:
        return sum(
            1
            for a in self._t.attempts.values()
            if a.job_key == row.spec.key
            and a.outcome == Outcome.TIMEOUT.value
            and a.id > row.retry_floor
        )


def _by_id(attempt: _AttemptRow) -> int:
    return attempt.id


def _totals(attempts: Sequence[_AttemptRow]) -> Totals:
    tokens = [a.tokens() for a in attempts]
    return Totals(
        sum(t[0] for t in tokens),
        sum(t[1] for t in tokens),
        sum(t[2] for t in tokens),
        float(sum(a.cost_usd for a in attempts)),
    )


def _run_dict(run: _RunRow) -> dict[str, object]:
    return {
        "id": run.info.id,
        "started_at": run.started_at.isoformat(),
        "ended_at": run.ended_at.isoformat() if run.ended_at else None,
        "exit_code": run.exit_code,
        "stop_reason": run.stop_reason,
        "host": run.info.host,
        "pid": run.info.pid,
        "process_tag": run.info.process_tag,
    }


if TYPE_CHECKING:

    def _a_store(clock: Callable[[], datetime]) -> Store:
        return MemoryStore(clock)  # mypy checks the twin against the protocol here
