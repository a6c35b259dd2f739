"""The worker pool: claims jobs, sends them with retries, writes results, records it all.

Per provider profile, `concurrency` workers share one ProviderGate. A job's own failure is
recorded on the job; a ProviderStop closes that provider's gate (in-flight requests
finish, nobody sends again); an OutputError closes every gate (a full disk would make
every following paid reply a loss). Anything unexpected cancels the whole task group.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import anyio
import anyio.to_thread

from runner.cpu_work import run_cpu_work
from runner.engine.attempt import Attempts, Sending, outage
from runner.engine.budget import LimitGuard
from runner.engine.pacing import ProviderGate
from runner.engine.ports import Files, JobFeed, Lane, Provider
from runner.engine.report import PoolReport
from runner.engine.retry import GaveUp, RetryPolicy, Tries, let_go, retry_cause
from runner.errors import (
    ExitCode,
    InputChanged,
    InputError,
    LeaseLost,
    OutputError,
    PermanentJobError,
    ProviderDown,
    ProviderError,
    ProviderStop,
    RetryableError,
    StopNotice,
    Stopped,
    StoreError,
)
from runner.records import (
    AttemptRecord,
    EditRequest,
    EditResult,
    FailureKind,
    Job,
    JobSpec,
    Outcome,
    OutputRef,
    short_key,
)
from runner.settings import Clock, RunSettings, SystemClock
from runner.store.protocol import AttemptTicket, Store

log = logging.getLogger("runner")

# Completions whose files are written but which the database would not take (a full disk):
# handed to this at the end of the run, to be kept until a database write succeeds.
KeepUnrecorded = Callable[[Sequence["Unrecorded"]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Unrecorded:
    """A paid, written reply that is not in the database yet."""

    spec: JobSpec
    ticket: AttemptTicket
    record: AttemptRecord
    outputs: tuple[OutputRef, ...]


class Pool:
    def __init__(
        self,
        store: Store,
        lanes: Mapping[str, Lane],
        *,
        manifest: str,
        owner: str,
        settings: RunSettings,
        files: Files,
        wall_clock: Callable[[], datetime],
        clock: Clock | None = None,
        policy: RetryPolicy | None = None,
        limits: LimitGuard | None = None,
        reclaim_dead: Callable[[], Awaitable[int]] | None = None,
        keep_unrecorded: KeepUnrecorded | None = None,
        feed: JobFeed | None = None,
    ) -> None:
        self._store = store
        self._feed = feed  # a manifest still being synced: more jobs may come
        self._providers = {name: lane.provider for name, lane in lanes.items()}
        self._manifest = manifest
        self._owner = owner
        self._settings = settings
        self._concurrency = {name: lane.concurrency for name, lane in lanes.items()}
        self._gates = {name: lane.gate for name, lane in lanes.items()}
        self._clock = clock or SystemClock()
        self._wall_clock = wall_clock
        self._policy = policy or RetryPolicy(settings.retry)
        self._prepare = files.prepare
        self._write = files.write
        self._limits = limits
        # Runs on this host that died while we were running: their jobs are ours at once.
        self._reclaim_dead = reclaim_dead
        self._watch_folders = files.watch_folders
        self._free_space = files.free_space
        self._keep_unrecorded = keep_unrecorded
        self._unrecorded: list[Unrecorded] = []
        self._intake_open = True
        self.report = PoolReport()
        self._attempts = Attempts(
            store,
            owner,
            settings,
            concurrency=self._concurrency,
            prices={name: lane.prices for name, lane in lanes.items() if lane.prices},
            limits=limits,
            stop=self._stop,
            close_intake=self.close_intake,
            on_spend=self._count_spend,
            lease_until=self._lease_until,
            on_send=feed.sending if feed is not None else lambda: None,
        )
        # Claims come in batches of a quarter of the concurrency: one store call per batch.
        # A batch's unstarted jobs stay leased to this run; ending the run releases them.
        self._claimed: dict[str, deque[Job]] = {name: deque() for name in lanes}
        self._claiming = {name: anyio.Lock() for name in lanes}

    async def run(self) -> PoolReport:
        slots = sum(self._concurrency[name] for name in self._providers)
        # Finished replies wait here for their files and their commit while the worker
        # sends its next request; the semaphore bounds the images held in memory.
        self._finishing = anyio.Semaphore(slots)
        self._finishes_left = 0  # replies still being written and recorded
        self._finishes_done = anyio.Event()
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._keep_leases)
            async with anyio.create_task_group() as background:
                self._background = background
                async with anyio.create_task_group() as workers:
                    self._workers = workers.cancel_scope
                    for name in self._providers:
                        for _ in range(self._concurrency[name]):
                            workers.start_soon(self._worker, name)
            outer.cancel_scope.cancel()  # all done and committed: stop renewing leases
        with anyio.CancelScope(shield=True):
            await self._record_the_unrecorded()
        return self.report

    def close_intake(self, kind: str, message: str) -> None:
        """A limit is reached: take no new job. Jobs already admitted go on, retries
        included, so `--max-jobs 3` means three jobs, not three minus those waiting."""
        if not self._intake_open:
            return
        self._intake_open = False
        self.report.stops.append(StopNotice("*", kind, message, ExitCode.EARLY))
        log.warning("no new jobs: %s", message)

    def halt(self, kind: str, message: str) -> None:
        """Stop taking jobs (a limit, a signal); requests already out finish and are kept."""
        self._halt(kind, message, exit_code=ExitCode.EARLY)

    def cancel_in_flight(self) -> None:
        """The grace period is over (or a second signal came): abandon requests still out.
        Their attempts are recorded as abandoned (they may have been billed) and their jobs
        go back to pending; replies already received are still written."""
        self.halt("signal", "stopped")
        with contextlib.suppress(AttributeError):
            self._workers.cancel()

    def _lease_until(self) -> datetime:
        return self._wall_clock() + timedelta(seconds=self._settings.lease_s)

    async def _keep_leases(self) -> None:
        # Real time, not the injected clock: leases expire in real time.
        while True:
            await anyio.sleep(self._settings.lease_s / 3)
            try:
                await self._store.renew_leases(self._owner, self._lease_until())
            except StoreError as exc:
                self._database_failed(exc)
                return

    async def _worker(self, provider: str) -> None:
        try:
            await self._work(provider)
        except StoreError as exc:
            # The database takes no more writes (a full disk, a lost server): nothing more
            # may be sent, since its outcome could not be recorded.
            self._database_failed(exc)

    async def _work(self, provider: str) -> None:
        gate = self._gates[provider]
        while not gate.stopped and self._intake_open:
            synced = self._feed.synced if self._feed is not None else 0
            job = await self._next_job(provider, gate)
            if job is None:
                if self._feed is not None and not self._feed.done:
                    await self._feed.changed(synced)  # the next chunk of the manifest
                    continue
                if (
                    gate.stopped
                    or not self._intake_open
                    or not await self._store.held_elsewhere(self._manifest, provider, self._owner)
                ):
                    return
                # Another runner holds some of this manifest's jobs. If it is a run on this
                # host whose process is gone, its jobs are ours now; one elsewhere that dies
                # lets its leases lapse, and then they are ours too.
                if self._reclaim_dead is None or not await self._reclaim_dead():
                    await anyio.sleep(self._settings.poll_s)
                continue
            await self._process(job, gate)

    def _database_failed(self, exc: StoreError) -> None:
        self._halt(
            "database",
            f"the database stopped taking writes ({exc}); free space where it lives, then "
            "run again",
            exit_code=ExitCode.EARLY,
        )

    async def _next_job(self, provider: str, gate: ProviderGate) -> Job | None:
        """A job from this provider's small batch of claims, fetching a batch when empty."""
        claimed = self._claimed[provider]
        async with self._claiming[provider]:
            if not claimed and not gate.stopped and self._intake_open:
                claimed.extend(
                    await self._store.claim_many(
                        self._manifest,
                        provider,
                        self._owner,
                        self._lease_until(),
                        max(1, self._concurrency[provider] // 4),
                        below=self._feed.bound if self._feed is not None else None,
                    )
                )
            return claimed.popleft() if claimed else None

    async def _process(self, job: Job, gate: ProviderGate) -> None:
        spec = job.spec
        provider = self._providers[spec.provider]
        request: EditRequest | None = None
        try:
            request = await run_cpu_work(
                _input_bytes(spec), self._prepare, spec, provider.limits_for(spec.model)
            )
            provider.check_request(request)
        except InputError as exc:
            if request is not None:
                request.let_go()  # refused by the model's rules: what pre-flight held goes
            await self._fail(spec, f"{exc} (nothing was sent)", FailureKind.INPUT)
            return
        try:
            await self._admit_and_send(job, gate, provider, request)
        finally:
            request.let_go()  # what pre-flight held for a send that never took it

    async def _admit_and_send(
        self, job: Job, gate: ProviderGate, provider: Provider, request: EditRequest
    ) -> None:
        spec = job.spec
        estimate = self._attempts.estimate(spec)
        if self._limits is not None and (reason := self._limits.admit(estimate)):
            self.close_intake("limit", reason)
            await self._release(spec)
            return
        shared = await self._reserve_shared_budget(estimate)
        if shared is not None:
            self.close_intake("limit", shared)
            await self._release(spec)
            return
        self.report.in_flight += 1
        handed_on = False  # a paid reply goes on to be written and recorded in the background
        sending = Sending(spec, request, provider, gate, admitted=estimate)
        try:
            handed_on = await self._send_job(job, sending)
        finally:
            self.report.in_flight -= 1
            self._attempts.settle(sending)
            if self._limits is not None and not handed_on:  # else once its cost is on record
                await self._release_shared_budget(estimate)

    async def _reserve_shared_budget(self, estimate: float | None) -> str | None:
        """Under --max-cost, the budget is shared by the runs of this manifest that overlap
        in time (several runners on one database): this job's estimate is reserved in the
        database, or None comes back with why the run stops here."""
        cap = self._limits.limits.max_cost_usd if self._limits is not None else None
        if cap is None or estimate is None or self._limits is None:
            return None
        reserved, committed = await self._store.reserve_budget(
            self._owner, self._manifest, estimate, cap
        )
        if not reserved and self._finishes_left:
            # This run's own answered jobs still hold their estimates until their costs are
            # recorded (in the background): once they are, ask again before stopping.
            await self._finishes_done.wait()
            reserved, committed = await self._store.reserve_budget(
                self._owner, self._manifest, estimate, cap
            )
        if reserved:
            return None
        self._limits.unadmit(estimate)
        return (
            f"--max-cost ${cap:.2f} across runners: ${committed:.4f} spent or committed by "
            f"the runs sharing it, and the next job may cost ${estimate:.4f}"
        )

    def _shared_reservation(self, estimate: float | None) -> float:
        """What this job holds of the shared budget (nothing without --max-cost)."""
        if estimate is None or self._limits is None or self._limits.limits.max_cost_usd is None:
            return 0.0
        return estimate

    async def _release_shared_budget(self, estimate: float | None) -> None:
        if estimate is None or self._limits is None or self._limits.limits.max_cost_usd is None:
            return
        with anyio.CancelScope(shield=True):  # a reservation left behind holds money back
            try:
                await self._store.release_budget(self._owner, estimate)
            except StoreError as exc:
                log.error("could not release a budget reservation: %s", exc)

    async def _send_job(self, job: Job, sending: Sending) -> bool:
        """Send the job with retries; True when a paid reply was handed on to be written
        and recorded (in the background), False when the job ended here."""
        spec = job.spec
        if (full := self._short_of_space(spec)) is not None:
            self._halt("disk", full)
            await self._release(spec)
            return False
        retry = self._settings.retry
        if job.unanswered > retry.max_timeout_resends:
            await self._fail(spec, _unanswered_reason(job.unanswered), FailureKind.UNANSWERED)
            return False
        tries = Tries(retry.max_attempts - job.attempts_this_round, job.unanswered)
        if tries.attempts_left <= 0:
            reason = "no attempts left; `runner retry` gives it a new set"
            await self._fail(spec, reason, FailureKind.ATTEMPTS)
            return False
        for extra_round in range(self._settings.weather_rounds + 1):
            try:
                result, ticket, record = await self._send(sending, tries)
            except RetryableError as exc:
                if tries.gave_up is GaveUp.ATTEMPTS and self._weather_not_job(sending, extra_round):
                    await self._store.renew_attempts(spec.key, self._owner)
                    tries = Tries(retry.max_attempts, tries.unanswered, weather=tries.weather)
                    continue
                await self._gave_up(sending, tries, exc)
                return False
            except (Stopped, ProviderStop):
                # A stop (402, 401, a signal, a limit) was handled when it happened.
                await self._release(spec)
                return False
            except LeaseLost:
                # Paused past our lease (a sleeping laptop, SIGSTOP): another runner holds
                # the job now. Nothing was sent; its state is the holder's to change.
                log.warning(
                    "%s %s (%s): taken over by another runner; not sent",
                    spec.origin, spec.image.name, short_key(spec.key),
                )  # fmt: skip
                return False
            except InputChanged as exc:  # read again to be sent, it was not what was checked
                await self._fail(spec, str(exc), FailureKind.INPUT)
                return False
            except PermanentJobError as exc:
                await self._fail(spec, exc.describe(), FailureKind.REFUSED)
                return False
            await self._finishing.acquire()
            if self._finishes_left == 0:
                self._finishes_done = anyio.Event()
            self._finishes_left += 1
            self._background.start_soon(
                self._finish, spec, result, ticket, record, sending.admitted
            )
            return True
        return False

    def _weather_not_job(self, sending: Sending, extra_round: int) -> bool:
        """Whether a job that used up its attempts deserves another set in this run: the
        provider fails other jobs' requests often too (its weather, not the job's fault),
        yet not all of them (then it is down, and the run stops for it)."""
        gate = sending.gate
        if extra_round >= self._settings.weather_rounds or gate.failure_streak > sending.attempts:
            return False
        return gate.weather(sending.spec.key) == "storm"

    def _short_of_space(self, spec: JobSpec) -> str | None:
        """Why nothing may be sent now (a disk nearly full), or None. Checked before each
        job: a paid reply that cannot be saved or recorded is money lost."""
        floor = self._settings.min_free_bytes
        for what, folder in (("output folder", spec.output_dir), *self._watch_folders):
            if self._free_space(folder) < floor:
                return (
                    f"less than {floor // 2**20} MB free in the {what} {folder}: free some "
                    "space, then run again"
                )
        return None

    async def _gave_up(self, sending: Sending, tries: Tries, exc: RetryableError) -> None:
        spec, gate = sending.spec, sending.gate
        if tries.gave_up is GaveUp.WEATHER:
            # Throttled or unreachable again and again: the provider, not the job.
            self._stop(gate, _still_throttled(gate, tries, exc))
            await self._release(spec)
        elif tries.gave_up is GaveUp.UNANSWERED:
            await self._fail(spec, _unanswered_reason(tries.unanswered), FailureKind.UNANSWERED)
        elif gate.failure_streak > sending.attempts:
            # Other jobs' requests failed too, with no success in between: the provider is
            # down. Keep the job for the next run instead of failing it.
            self._stop(gate, outage(gate, exc))
            await self._release(spec, fresh_attempts=True)
        else:
            reason = "gave up after retries: " + exc.describe()
            await self._fail(spec, reason, FailureKind.ATTEMPTS)

    async def _send(
        self, sending: Sending, tries: Tries
    ) -> tuple[EditResult, AttemptTicket, AttemptRecord]:
        retrying = self._policy.retrying(tries, self._retry_sleep(sending), self._count_retry)
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempts.send(sending)
        finally:
            let_go(retrying)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _count_retry(self, error: BaseException) -> None:
        self.report.retries[retry_cause(error)] += 1

    def _retry_sleep(self, sending: Sending) -> Callable[[float], Awaitable[None]]:
        async def sleep(seconds: float) -> None:
            self.report.retries_waiting += 1
            try:
                await sending.gate.sleep(seconds)
            finally:
                self.report.retries_waiting -= 1

        return sleep

    async def _finish(
        self,
        spec: JobSpec,
        result: EditResult,
        ticket: AttemptTicket,
        record: AttemptRecord,
        estimate: float | None,
    ) -> None:
        # The reservation goes when the cost comes in, in one transaction (`complete`); if
        # the success is not recorded here, it goes when the job's record is settled.
        held = self._shared_reservation(estimate)
        released = False
        try:
            released = await self._write_and_complete(spec, result, ticket, record, held)
        finally:
            self._finishing.release()
            self._finishes_left -= 1
            if self._finishes_left == 0:
                self._finishes_done.set()
            if not released:
                await self._release_shared_budget(estimate)

    async def _write_and_complete(
        self,
        spec: JobSpec,
        result: EditResult,
        ticket: AttemptTicket,
        record: AttemptRecord,
        held: float = 0.0,
    ) -> bool:
        """Write the outputs and record the success; True if `held` (this job's share of
        the budget reservation) was released with it."""
        try:
            holds = await self._store.holds(spec.key, self._owner)
        except StoreError:
            holds = True  # unknown: the completion below is fenced all the same
        if not holds:
            await self._keep_as_lost(spec, result, ticket, record)
            return False
        try:
            outputs = await anyio.to_thread.run_sync(self._write, spec, result.images)
        except OutputError as exc:
            self._halt("output", f"cannot write outputs: {exc}")  # first: stop paying
            lost = replace(record, outcome=Outcome.OUTPUT_ERROR, error_message=str(exc))
            try:
                await self._store.finish_attempt(ticket, lost)  # the usage was paid: keep it
                await self._fail(spec, f"output not written: {exc}", FailureKind.OUTPUT)
            except StoreError as store_exc:
                self._database_failed(store_exc)
            return False
        if record.error_message:
            log.warning("%s %s (%s): %s", spec.origin, spec.image.name, short_key(spec.key),
                        record.error_message)  # fmt: skip
        try:
            recorded = await self._store.complete(
                spec.key, self._owner, ticket, record, outputs, release_usd=held
            )
        except StoreError as exc:
            self._database_failed(exc)  # first: stop paying for replies we cannot record
            self._unrecorded.append(Unrecorded(spec, ticket, record, outputs))
            return False
        if not recorded:  # taken over between the check above and now
            log.warning(
                "%s %s (%s): another runner holds this job; this paid reply is on "
                "record as an attempt, its image left at %s", spec.origin, spec.image.name,
                short_key(spec.key), ", ".join(str(o.path) for o in outputs),
            )  # fmt: skip
            return True
        self.report.succeeded += 1
        log.debug("succeeded %s -> %s", spec.image.name, ", ".join(str(o.path) for o in outputs))
        return True

    async def _keep_as_lost(
        self, spec: JobSpec, result: EditResult, ticket: AttemptTicket, record: AttemptRecord
    ) -> None:
        """A paid reply for a job another runner took while this one was away (a paused
        laptop): never recorded over the holder's result, never written over its file. The
        image goes to a name with this run's id in it; the attempt is on record as paid."""
        lost = replace(spec, output_name=_lost_name(spec.output_name, self._owner))
        try:
            kept = await anyio.to_thread.run_sync(self._write, lost, result.images)
            where = ", ".join(str(o.path) for o in kept)
        except OutputError as exc:
            where = f"nowhere ({exc})"
        note = f"another runner holds this job; this paid reply was kept at {where}"
        try:
            await self._store.finish_attempt(ticket, replace(record, error_message=note))
        except StoreError as exc:
            self._database_failed(exc)
        log.warning("%s %s (%s): %s", spec.origin, spec.image.name,
                    short_key(spec.key), note)  # fmt: skip

    async def _record_the_unrecorded(self) -> None:
        """Once more into the database (space may have been freed meanwhile); what still
        will not go in is kept beside the outputs, for the next command to record."""
        left = []
        for item in self._unrecorded:
            try:
                await self._store.complete(
                    item.spec.key, self._owner, item.ticket, item.record, item.outputs
                )
                self.report.succeeded += 1
            except StoreError:
                left.append(item)
        if left and self._keep_unrecorded is not None:
            await self._keep_unrecorded(left)
        self._unrecorded = left

    async def _fail(self, spec: JobSpec, reason: str, kind: FailureKind) -> None:
        await self._store.fail(spec.key, self._owner, reason, kind)
        self.report.failed += 1
        self.report.failed_by_kind[kind] += 1
        log.warning(
            "failed %s (%s, %s): %s", spec.image.name, spec.origin, short_key(spec.key), reason
        )

    async def _release(self, spec: JobSpec, *, fresh_attempts: bool = False) -> None:
        await self._store.release(spec.key, self._owner, fresh_attempts=fresh_attempts)
        self.report.released += 1

    def _count_spend(self, cost: float) -> None:
        self.report.spent_usd += cost

    def _halt(self, kind: str, message: str, exit_code: int | None = None) -> None:
        """Stop every provider: the reason is ours (the disk, a limit, a signal), not theirs."""
        # Once per kind: a signal after a limit must still stop the gates, a repeat need not.
        if any(stop.provider == "*" and stop.kind == kind for stop in self.report.stops):
            return
        code = (
            exit_code
            if exit_code is not None
            else (ExitCode.EARLY if kind == "disk" else ExitCode.FAILED)
        )
        notice = StopNotice("*", kind, message, code)
        for gate in self._gates.values():
            gate.stop(notice)
        self.report.stops.append(notice)
        if kind != "signal":  # the signal's handler says what happens, once, as a warning
            log.error("stopped sending: %s", message)

    def _stop(self, gate: ProviderGate, exc: ProviderStop) -> None:
        if gate.stopped:
            return
        notice = StopNotice(gate.name, exc.outcome, exc.describe(), exc.exit_code)
        gate.stop(notice)
        self.report.stops.append(notice)
        log.error("stopped sending to %s: %s", gate.name, notice.message)


def _lost_name(template: str, owner: str) -> str:
    """`{stem}-{key8}.{ext}` → `{stem}-{key8}.lost-1a2b3c4d.{ext}`: no other run's name."""
    mark = f".lost-{owner[:8]}"
    if template.endswith(".{ext}"):
        return template[: -len(".{ext}")] + mark + ".{ext}"
    return template + mark


def _still_throttled(gate: ProviderGate, tries: Tries, last: ProviderError) -> ProviderDown:
    return ProviderDown(
        f"a job was rate-limited or could not reach {gate.name} {tries.weather} times in this "
        f"run; stopping it for now. Run again later. Last error: {last.describe()}"
    )


def _unanswered_reason(count: int) -> str:
    return (
        f"{count} requests got no reply in time and each may have been billed; not sent "
        "again automatically: `runner retry` sends it once more (consider a larger timeout_s)"
    )


def _input_bytes(spec: JobSpec) -> int:
    """Bytes pre-flight will read; unreadable files count as nothing (it fails at once)."""
    total = 0
    for path in (spec.image, spec.mask):
        if path is not None:
            with contextlib.suppress(OSError):
                total += path.stat().st_size
    return total
