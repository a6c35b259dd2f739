"""One HTTP attempt and its journal. The attempt is on record before the request leaves (a
provider bills what it received, even if the runner dies a millisecond later), finished
with what came back, costed (a paid answer counts against the budget before any retry),
and fed back to the provider's gate: weather paces everyone, a stop stops everyone.

`Pool` decides which job goes and how often it is retried; `Attempts` makes each try.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

import anyio

from runner.engine.budget import LimitGuard
from runner.engine.pacing import ProviderGate
from runner.engine.ports import Provider
from runner.engine.pricing import PriceBook
from runner.errors import (
    AuthRejected,
    InputChanged,
    NotDelivered,
    PaymentRequired,
    ProviderBusy,
    ProviderDown,
    ProviderError,
    ProviderPaced,
    ProviderStop,
    RetryableError,
    StopNotice,
    Stopped,
    StoppedElsewhere,
    StoreError,
    Throttled,
)
from runner.records import (
    AttemptRecord,
    EditRequest,
    EditResult,
    JobSpec,
    Outcome,
    ReplyFacts,
    Usage,
    short_key,
)
from runner.settings import RunSettings
from runner.store.protocol import AttemptTicket, Store

log = logging.getLogger("runner")
# How long a request waits before asking again when the runners on one database already
# have the provider's `concurrency` requests out between them.
FLEET_BUSY_WAIT_S = 0.05


@dataclass(slots=True)
class Sending:
    """One job on its way out: what it needs, and how many requests it has made."""

    spec: JobSpec
    request: EditRequest
    provider: Provider
    gate: ProviderGate
    attempts: int = 0
    # Under --max-cost: the estimate admitted for the job, released (once) when its paid
    # answer's cost is counted, in the same step, so no other job is admitted in between
    # against both the cost and the estimate.
    admitted: float | None = None
    settled: bool = False


class Attempts:
    """Makes each request of a run, for every provider profile."""

    def __init__(
        self,
        store: Store,
        owner: str,
        settings: RunSettings,
        *,
        concurrency: Mapping[str, int],
        prices: Mapping[str, PriceBook],
        limits: LimitGuard | None,
        stop: Callable[[ProviderGate, ProviderStop], None],
        close_intake: Callable[[str, str], None],
        on_spend: Callable[[float], None],
        lease_until: Callable[[], datetime],
        on_send: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._owner = owner
        self._settings = settings
        self._concurrency = concurrency
        self._prices = prices
        self._limits = limits
        self._stop = stop  # a provider's stop, recorded by the pool
        self._close_intake = close_intake
        self._on_spend = on_spend
        self._lease_until = lease_until  # a fresh lease for each request, taken as it leaves
        self._on_send = on_send  # each request, as it leaves
        self._warned: set[tuple[str, str]] = set()

    def estimate(self, spec: JobSpec) -> float | None:
        book = self._prices.get(spec.provider)
        return book.estimate(spec) if book is not None else None

    def _price(self, spec: JobSpec, usage: Usage | None, facts: ReplyFacts | None) -> float | None:
        book = self._prices.get(spec.provider)
        return book.cost(spec, usage, facts) if book is not None else None

    def _spend(self, cost: float | None) -> None:
        if cost:
            self._on_spend(cost)
            if self._limits is not None:
                self._limits.spent(cost)

    async def send(self, sending: Sending) -> tuple[EditResult, AttemptTicket, AttemptRecord]:
        """One request: journalled before it leaves, finished with what came back."""
        spec, request, provider, gate = (
            sending.spec,
            sending.request,
            sending.provider,
            sending.gate,
        )
        refused = self._limits.resend_refused() if sending.attempts and self._limits else None
        if refused is not None:
            self._close_intake("limit", refused)
            raise Stopped(refused)
        ticket = await self._begin(spec, gate)
        sending.attempts += 1
        if gate.stopped:  # a 402 arrived for another job while this was being recorded
            gate.answered()
            await self._store.finish_attempt(
                ticket, AttemptRecord(outcome=Outcome.NOT_SENT, counted=False)
            )
            raise Stopped(f"{gate.name} stopped before this request was sent")
        started = time.monotonic()
        try:
            try:
                self._on_send()
                result = await provider.edit(request)
            finally:
                gate.answered()
        except ProviderError as exc:
            if isinstance(exc, ProviderStop):
                self._stop(gate, exc)  # first, before any write: no worker may send again
            self._pace(gate, spec, exc)
            record = _error_record(exc, _ms_since(started))
            if exc.billed:  # though no usable image came back
                cost, flag = self._paid_cost(spec, exc.usage, exc.facts)
                record = replace(record, cost_usd=cost, usage=_flagged(exc.usage, flag))
            await self._store.finish_attempt(ticket, record)
            if isinstance(exc, PaymentRequired | AuthRejected):
                await self._share_stop(gate, exc)
            elif isinstance(exc, Throttled) and exc.retry_after:
                await self._share_pause(gate, exc.retry_after)
            else:
                await self._share_spent_window(gate, exc.facts)
            raise
        except BaseException:
            # Cancelled mid-request (the grace period ran out): it may have been billed.
            with anyio.CancelScope(shield=True):
                await self._store.finish_attempt(
                    ticket, AttemptRecord(outcome=Outcome.ABANDONED, latency_ms=_ms_since(started))
                )
                await self._store.release(spec.key, self._owner)
            raise
        gate.record(succeeded=True)
        gate.note_answer(spec.key, failed=False)
        self._observe(gate, spec, result.facts, failed=False)
        await self._share_spent_window(gate, result.facts)
        latency_ms = _ms_since(started)
        if self._limits is not None:
            self._limits.took(latency_ms / 1000)
        cost, flag = self._paid_cost(spec, result.usage, result.facts)
        self.settle(sending)
        self._learn(spec, result.usage, result.facts)
        record = AttemptRecord(
            outcome=Outcome.SUCCEEDED,
            latency_ms=latency_ms,
            http_status=result.status_code,
            error_message=_fewer_images(spec, result),
            request_id=result.request_id,
            usage=_flagged(result.usage, flag),
            cost_usd=cost,
            facts=result.facts,
        )
        return result, ticket, record

    async def _begin(self, spec: JobSpec, gate: ProviderGate) -> AttemptTicket:
        """The attempt on disk before the request leaves: a provider bills what it received
        even if we die a millisecond later, and the record must say it may have been paid.

        Fenced: only while the job is still ours, its lease running on while the request is
        out (LeaseLost: another runner has it), while no runner has stopped the provider
        (StoppedElsewhere), and while all runners together have fewer than its
        `concurrency` requests out (else wait a moment and ask again), at the pace the
        runners keep together (`requests_per_minute`, a pause a rate limit asked for)."""
        while True:
            turn = await gate.wait_turn()
            try:
                return await self._store.begin_attempt(
                    spec.key,
                    self._owner,
                    spec.provider,
                    spec.model,
                    lease_until=self._lease_until(),
                    in_flight_limit=self._concurrency.get(spec.provider),
                    # This run's other requests out, by its own count: one that has its
                    # answer is no longer out, though its record may still be on the way.
                    own_in_flight=gate.outstanding - 1,
                    interval_s=gate.interval_s or None,
                )
            except ProviderBusy:
                gate.unused_turn(turn)
                await gate.sleep(FLEET_BUSY_WAIT_S)
            except ProviderPaced as paced:  # the fleet's pace, or a pause one runner was told
                gate.unused_turn(turn)
                await gate.sleep(paced.wait_s)
            except StoppedElsewhere as exc:  # another runner's 402 (or rejected key)
                gate.answered()
                self._stop(gate, _stop_from(exc.notice))
                raise Stopped(
                    f"{gate.name} stopped by another runner: {exc.notice.message}"
                ) from None
            except BaseException:
                gate.answered()
                raise

    async def _share_spent_window(self, gate: ProviderGate, facts: ReplyFacts | None) -> None:
        """The provider's request window is used up until its reset (Venice's rate
        headers): every runner waits for the reset, not only the one that was told."""
        if facts is not None and facts.rate_remaining == 0 and facts.rate_reset_in_s:
            await self._share_pause(
                gate, min(facts.rate_reset_in_s, self._settings.retry.max_wait_s)
            )

    async def _share_pause(self, gate: ProviderGate, seconds: float) -> None:
        """A rate-limit answer's wait holds every runner's requests, not only this one's."""
        try:
            await self._store.pause_provider(gate.name, seconds, self._owner)
        except StoreError as error:  # this runner pauses all the same (its gate)
            log.warning("could not tell other runners to pause %s: %s", gate.name, error)

    async def _share_stop(self, gate: ProviderGate, exc: ProviderStop) -> None:
        """The account is out of money (or the key refused): every runner on this database
        stops sending to the provider before its next request, not only this one."""
        notice = StopNotice(gate.name, exc.outcome, exc.describe(), exc.exit_code)
        try:
            await self._store.stop_provider(notice, self._owner)
        except StoreError as error:  # this runner has stopped; the others find out by 402
            log.error("could not tell other runners that %s stopped: %s", gate.name, error)

    def _pace(self, gate: ProviderGate, spec: JobSpec, exc: ProviderError) -> None:
        """What a failed request tells the provider's gate: weather slows everyone down,
        other failures count toward telling an outage (and a storm) from a bad job."""
        if isinstance(exc, RetryableError):
            gate.record(succeeded=False)
        if isinstance(exc, Throttled | NotDelivered):
            # Weather uses no attempts, so no job runs out of them to tell an outage: the
            # provider's own streak of failures does.
            if self._down(gate):
                self._stop(gate, outage(gate, exc))
            hint = exc.retry_after
            gate.note_weather(
                min(hint, self._settings.retry.max_wait_s) if hint is not None else None
            )
        else:
            if exc.retry_after:
                gate.pause_for(min(exc.retry_after, self._settings.retry.max_wait_s))
            if isinstance(exc, RetryableError):
                gate.note_answer(spec.key, failed=True)
        self._observe(gate, spec, exc.facts, failed=exc.status_code is not None)

    def _down(self, gate: ProviderGate) -> bool:
        """Failed requests in a row, across jobs, past the point a blip explains."""
        threshold = max(self._settings.outage_streak, 2 * self._concurrency[gate.name])
        return gate.failure_streak >= threshold

    def _learn(self, spec: JobSpec, usage: Usage | None, facts: ReplyFacts | None) -> None:
        """A reply costed from what it says it used teaches the estimates (one costed at
        the estimate, or with usage that cannot be right, teaches nothing)."""
        book = self._prices.get(spec.provider)
        if book is None or (usage is not None and usage.suspect):
            return
        measured = book.cost(spec, usage, facts)
        if measured is not None:
            book.observe(spec, measured)

    def settle(self, sending: Sending) -> None:
        """The job's admitted estimate is released (at its paid answer, or when it ends)."""
        if self._limits is not None and not sending.settled:
            self._limits.settle(sending.admitted)
        sending.settled = True

    def _paid_cost(
        self, spec: JobSpec, usage: Usage | None, facts: ReplyFacts | None
    ) -> tuple[float | None, str | None]:
        """What a 200 cost, counted against the budget: from its usage, or the job's
        estimate when the usage is missing or cannot be trusted (then with why)."""
        suspect = usage.suspect if usage is not None else None
        cost = None if suspect else self._price(spec, usage, facts)
        if cost is None:
            cost = self.estimate(spec)
            if suspect:
                log.warning(
                    "%s %s (%s): %s reported usage that cannot be right (%s); "
                    "costed at its estimate%s",
                    spec.origin, spec.image.name, short_key(spec.key), spec.provider, suspect,
                    f" ${cost:.4f}" if cost is not None else " (unknown)",
                )  # fmt: skip
        self._spend(cost)
        return cost, suspect

    def _observe(
        self, gate: ProviderGate, spec: JobSpec, facts: ReplyFacts | None, *, failed: bool
    ) -> None:
        """The provider's side of pacing: its rate counters, its lock-out rule, its notices."""
        if failed and gate.note_failure():
            log.warning(
                "%s: %d failed requests within %g s; pausing it for as long to stay clear of "
                "its lock-out", gate.name, gate.breaker_threshold, gate.breaker_window_s,
            )  # fmt: skip
        if facts is None:
            return
        gate.observe_rate(facts.rate_remaining, facts.rate_reset_in_s)
        if facts.deprecation and (gate.name, spec.model) not in self._warned:
            self._warned.add((gate.name, spec.model))
            log.warning("%s: model %s: %s", gate.name, spec.model, facts.deprecation)


def outage(gate: ProviderGate, last: ProviderError) -> ProviderDown:
    return ProviderDown(
        f"{gate.failure_streak} requests in a row failed, for more than one job; the provider "
        f"looks down. Run again later. Last error: {last.describe()}"
    )


def _fewer_images(spec: JobSpec, result: EditResult) -> str | None:
    """A note when the provider returned fewer images than the job asked for (`n`)."""
    asked = spec.images_asked
    got = len(result.images)
    return f"asked for {asked} images (n), the provider returned {got}" if got < asked else None


def _flagged(usage: Usage | None, flag: str | None) -> Usage | None:
    return usage if usage is None or flag is None else replace(usage, suspect=flag)


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _error_record(exc: ProviderError, latency_ms: int) -> AttemptRecord:
    return AttemptRecord(
        outcome=Outcome(exc.outcome),
        latency_ms=latency_ms,
        http_status=exc.status_code,
        error_code=exc.provider_code,
        error_message=exc.message[:2000],
        request_id=exc.request_id,
        usage=exc.usage,
        facts=exc.facts,
        # A stop (402, 401) is the provider refusing the account, not this job: the job
        # keeps its attempts for when the account is fixed. Weather costs no attempt either.
        # An input that changed on disk was cut off before the provider had it whole.
        counted=not isinstance(exc, ProviderStop | Throttled | NotDelivered | InputChanged),
    )


def _stop_from(notice: StopNotice) -> ProviderStop:
    """Another runner's stop as this runner's own: same kind, same exit code."""
    message = f"stopped by another runner: {notice.message}"
    return AuthRejected(message) if notice.kind == "auth" else PaymentRequired(message)
