"""RetryPolicy: how long to wait, what to retry, and the cap on re-sending timed-out
(possibly billed) requests. Sleeps are recorded, never waited."""

from __future__ import annotations

import random
from typing import Any

import pytest

from runner.engine.retry import RetryPolicy, Tries
from runner.errors import (
    AttemptTimeout,
    AuthRejected,
    PaymentRequired,
    PermanentJobError,
    ProviderStop,
    RetryableError,
    Stopped,
)
from runner.settings import RetrySettings

SETTINGS = RetrySettings(backoff_base_s=1.0, backoff_cap_s=60.0, max_wait_s=300.0)


class TopRng(random.Random):
    """Jitter that always lands on the ceiling, so the ceiling can be asserted exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


class BottomRng(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


def retryable(retry_after: float | None = None) -> RetryableError:
    return RetryableError("HTTP 503", status_code=503, retry_after=retry_after)


# --- wait_seconds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0), (6, 32.0), (7, 60.0), (12, 60.0)],
)
def test_wait_ceiling_doubles_per_attempt_up_to_the_cap(attempt: int, ceiling: float) -> None:
    policy = RetryPolicy(SETTINGS, TopRng())
    assert policy.wait_seconds(attempt, retryable()) == ceiling


def test_wait_ceiling_uses_the_configured_base() -> None:
    policy = RetryPolicy(RetrySettings(backoff_base_s=0.5, backoff_cap_s=3.0), TopRng())
    assert [policy.wait_seconds(n, None) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_wait_is_fully_jittered_from_zero() -> None:
    policy = RetryPolicy(SETTINGS, BottomRng())
    assert policy.wait_seconds(5, retryable()) == 0.0


@pytest.mark.parametrize("attempt", [1, 3, 6, 9])
def test_wait_with_seeded_rng_stays_within_zero_and_the_ceiling(attempt: int) -> None:
    policy = RetryPolicy(SETTINGS, random.Random(1234))
    ceiling = min(60.0, 2.0 ** (attempt - 1))
    waits = [policy.wait_seconds(attempt, retryable()) for _ in range(200)]
    assert all(0.0 <= w <= ceiling for w in waits)
    assert len(set(waits)) > 100  # jittered, not a constant
    # Same seed, same waits: the rng is the only source of randomness.
    again = RetryPolicy(SETTINGS, random.Random(1234))
    assert [again.wait_seconds(attempt, retryable()) for _ in range(200)] == waits


@pytest.mark.parametrize("rng", [TopRng(), BottomRng(), random.Random(7)], ids=type)
@pytest.mark.parametrize("hint", [0.5, 7.0, 45.0, 299.0])
def test_wait_is_never_below_the_servers_hint(rng: random.Random, hint: float) -> None:
    policy = RetryPolicy(SETTINGS, rng)
    for attempt in range(1, 10):
        assert policy.wait_seconds(attempt, retryable(retry_after=hint)) >= hint


def test_wait_uses_backoff_when_it_exceeds_the_hint() -> None:
    policy = RetryPolicy(SETTINGS, TopRng())
    assert policy.wait_seconds(5, retryable(retry_after=3.0)) == 16.0


@pytest.mark.parametrize(
    ("settings", "attempt", "hint"),
    [
        pytest.param(SETTINGS, 1, 10_000.0, id="huge-hint"),
        pytest.param(SETTINGS, 1, float("inf"), id="infinite-hint"),
        pytest.param(
            RetrySettings(backoff_base_s=10.0, backoff_cap_s=900.0, max_wait_s=120.0),
            8,
            None,
            id="cap-above-max-wait",
        ),
    ],
)
def test_wait_is_never_above_max_wait(
    settings: RetrySettings, attempt: int, hint: float | None
) -> None:
    policy = RetryPolicy(settings, TopRng())
    assert policy.wait_seconds(attempt, retryable(retry_after=hint)) == settings.max_wait_s


@pytest.mark.parametrize(
    "error", [None, ValueError("not a provider error"), retryable(retry_after=0.0)], ids=repr
)
def test_wait_without_a_hint_is_plain_backoff(error: BaseException | None) -> None:
    assert RetryPolicy(SETTINGS, TopRng()).wait_seconds(3, error) == 4.0


# --- retrying -------------------------------------------------------------------------------


class Script:
    """An async call that plays its outcomes in order: exceptions are raised, values returned."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(float(seconds))


async def drive(policy: RetryPolicy, attempts_left: int, script: Script, sleep: Sleeps) -> Any:
    """The way the worker pool uses it."""
    async for attempt in policy.retrying(Tries(attempts_left), sleep):
        with attempt:
            return await script()
    raise AssertionError("unreachable: tenacity re-raises the last error")


@pytest.mark.parametrize(
    ("failures", "attempts_left"), [(0, 1), (1, 2), (2, 5), (4, 5)], ids=lambda v: str(v)
)
async def test_retryable_errors_are_retried_until_success(
    failures: int, attempts_left: int
) -> None:
    script = Script(*[retryable() for _ in range(failures)], "ok")
    sleeps = Sleeps()
    result = await drive(RetryPolicy(SETTINGS, TopRng()), attempts_left, script, sleeps)
    assert result == "ok"
    assert script.calls == failures + 1
    assert len(sleeps) == failures


@pytest.mark.parametrize("attempts_left", [1, 2, 3, 5])
async def test_retryable_errors_give_up_after_attempts_left_and_reraise_the_last(
    attempts_left: int,
) -> None:
    errors = [retryable() for _ in range(attempts_left + 3)]
    script = Script(*errors)
    sleeps = Sleeps()
    with pytest.raises(RetryableError) as caught:
        await drive(RetryPolicy(SETTINGS, TopRng()), attempts_left, script, sleeps)
    assert script.calls == attempts_left
    assert caught.value is errors[attempts_left - 1]
    assert len(sleeps) == attempts_left - 1


@pytest.mark.parametrize(
    "error",
    [
        PermanentJobError("HTTP 400", status_code=400),
        PaymentRequired("HTTP 402", status_code=402),
        AuthRejected("HTTP 401", status_code=401),
        ProviderStop("stop"),
        Stopped("run is stopping"),
        ValueError("a bug, not a provider answer"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_non_retryable_errors_are_raised_after_one_call(error: Exception) -> None:
    script = Script(error, "never reached")
    sleeps = Sleeps()
    with pytest.raises(type(error)) as caught:
        await drive(RetryPolicy(SETTINGS, TopRng()), 5, script, sleeps)
    assert caught.value is error
    assert script.calls == 1
    assert sleeps == []


async def test_timeouts_are_resent_once_by_default() -> None:
    timeouts = [AttemptTimeout(f"timeout {i}") for i in range(5)]
    script = Script(*timeouts)
    sleeps = Sleeps()
    with pytest.raises(AttemptTimeout) as caught:
        await drive(RetryPolicy(RetrySettings(), TopRng()), 5, script, sleeps)
    assert script.calls == 2
    assert caught.value is timeouts[1]
    assert len(sleeps) == 1


@pytest.mark.parametrize(("resends", "calls"), [(0, 1), (1, 2), (2, 3), (10, 6)])
async def test_timeout_resends_follow_the_setting(resends: int, calls: int) -> None:
    script = Script(*[AttemptTimeout("timeout") for _ in range(10)])
    policy = RetryPolicy(RetrySettings(max_timeout_resends=resends), TopRng())
    with pytest.raises(AttemptTimeout):
        await drive(policy, 6, script, Sleeps())
    assert script.calls == calls  # at most attempts_left (6) either way


async def test_timeout_then_success() -> None:
    script = Script(AttemptTimeout("timeout"), "ok")
    assert await drive(RetryPolicy(SETTINGS, TopRng()), 5, script, Sleeps()) == "ok"
    assert script.calls == 2


@pytest.mark.parametrize(
    ("outcomes", "calls", "result"),
    [
        pytest.param(["T", "R", "R", "ok"], 4, "ok", id="timeout-then-retryables-then-ok"),
        pytest.param(["R", "T", "R", "ok"], 4, "ok", id="one-timeout-among-retryables"),
        pytest.param(["R", "T", "R", "T", "ok"], 4, "T", id="second-timeout-not-resent"),
        pytest.param(["T", "T", "ok"], 2, "T", id="two-timeouts-in-a-row"),
        pytest.param(["T", "R", "R", "R", "R", "ok"], 5, "R", id="attempts-run-out"),
    ],
)
async def test_timeouts_mixed_with_retryable_errors(
    outcomes: list[str], calls: int, result: str
) -> None:
    made = {"T": AttemptTimeout, "R": RetryableError}
    script = Script(*[made[o](o) if o in made else o for o in outcomes])
    policy = RetryPolicy(RetrySettings(max_timeout_resends=1), TopRng())
    if result in made:
        with pytest.raises(made[result]) as caught:
            await drive(policy, 5, script, Sleeps())
        assert type(caught.value) is made[result]
    else:
        assert await drive(policy, 5, script, Sleeps()) == result
    assert script.calls == calls


async def test_each_retrying_run_counts_its_own_timeouts() -> None:
    policy = RetryPolicy(RetrySettings(max_timeout_resends=1), TopRng())
    for _ in range(2):
        script = Script(AttemptTimeout("t"), "ok")
        assert await drive(policy, 5, script, Sleeps()) == "ok"
        assert script.calls == 2


async def test_sleep_is_called_with_the_computed_waits() -> None:
    script = Script(retryable(), retryable(retry_after=10.0), retryable(), retryable(), "ok")
    sleeps = Sleeps()
    assert await drive(RetryPolicy(SETTINGS, TopRng()), 5, script, sleeps) == "ok"
    # backoff ceilings 1, 2, 4, 8; the second error's hint (10 s) wins over its 2 s.
    assert sleeps == [1.0, 10.0, 4.0, 8.0]


async def test_sleep_waits_are_clamped_to_max_wait() -> None:
    script = Script(retryable(retry_after=3600.0), "ok")
    sleeps = Sleeps()
    await drive(RetryPolicy(SETTINGS, TopRng()), 5, script, sleeps)
    assert sleeps == [300.0]


async def test_stopped_raised_by_the_sleep_ends_the_retries() -> None:
    async def stopping_sleep(seconds: float) -> None:
        raise Stopped("provider stopped while waiting")

    script = Script(retryable(), "never reached")
    with pytest.raises(Stopped):
        async for attempt in RetryPolicy(SETTINGS, TopRng()).retrying(Tries(5), stopping_sleep):
            with attempt:
                await script()
    assert script.calls == 1
