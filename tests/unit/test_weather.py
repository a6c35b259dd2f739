"""Weather: what a failed request costs a job (Tries), and how the provider's gate tells its
own trouble from a job's (issue 8, items 4 and 5). Sleeps are recorded, never waited."""

from __future__ import annotations

import pytest
from helpers import FakeClock

from runner.engine.pacing import ProviderGate
from runner.engine.retry import GaveUp, Tries
from runner.errors import AttemptTimeout, NotDelivered, RetryableError, Throttled
from runner.settings import RetrySettings

SETTINGS = RetrySettings(max_attempts=3, max_timeout_resends=1, max_weather_retries=4)


def feed(tries: Tries, *errors: BaseException) -> list[bool]:
    """Each failure in turn, as tenacity would: nothing more once one is not retried."""
    results = []
    for error in errors:
        results.append(tries.note(error, SETTINGS))
        if not results[-1]:
            break
    return results


def test_weather_uses_no_attempts() -> None:
    tries = Tries(attempts_left=1)
    assert feed(tries, Throttled("429"), NotDelivered("refused"), Throttled("503")) == [True] * 3
    assert tries.counted == 0 and tries.weather == 3 and tries.gave_up is None
    assert feed(tries, RetryableError("500")) == [False]
    assert tries.gave_up is GaveUp.ATTEMPTS


def test_a_job_throttled_past_the_ceiling_gives_up_as_weather() -> None:
    tries = Tries(attempts_left=3)
    assert feed(tries, *[Throttled("429")] * 5) == [True] * 4 + [False]
    assert tries.gave_up is GaveUp.WEATHER and tries.counted == 0


@pytest.mark.parametrize(("earlier", "resends"), [(0, 1), (1, 0)])
def test_unanswered_requests_of_earlier_runs_count(earlier: int, resends: int) -> None:
    tries = Tries(attempts_left=5, unanswered=earlier)
    results = feed(tries, *[AttemptTimeout("no reply")] * 3)
    assert results == [True] * resends + [False]
    assert tries.gave_up is GaveUp.UNANSWERED and tries.unanswered == 2


def gate_with(answers: list[tuple[str, bool]]) -> ProviderGate:
    gate = ProviderGate("p", FakeClock())
    for key, failed in answers:
        gate.note_answer(key, failed=failed)
    return gate


def test_too_few_answers_say_nothing_about_the_weather() -> None:
    assert gate_with([("other", True)] * 4).weather("job") == "unknown"


def test_a_jobs_own_failures_are_not_weather() -> None:
    answers = [("job", True)] * 20 + [("other", False)] * 20
    assert gate_with(answers).weather("job") == "calm"
    assert gate_with(answers).weather("other") == "storm"


@pytest.mark.parametrize(("failures", "verdict"), [(0, "calm"), (1, "calm"), (3, "storm")])
def test_a_storm_is_a_good_share_of_other_jobs_failing(failures: int, verdict: str) -> None:
    answers = [("a", True)] * failures + [("b", False)] * (20 - failures)
    assert gate_with(answers).weather("job") == verdict


def test_only_the_latest_answers_count() -> None:
    answers = [("a", True)] * 100 + [("b", False)] * 100
    assert gate_with(answers).weather("job") == "calm"


def test_weather_paces_the_whole_provider_from_the_second_answer_in_a_row() -> None:
    clock = FakeClock()
    gate = ProviderGate("p", clock)
    gate.note_weather(None)
    assert gate._paused_until == 0.0  # one 429 is the job's own backoff's business
    gate.note_weather(None)
    gate.note_weather(None)
    assert gate._paused_until == pytest.approx(2.0)  # then 1 s, 2 s, doubling
    gate.record(succeeded=True)
    gate.note_weather(None)
    assert gate._paused_until == pytest.approx(2.0)  # a success ends the streak


def test_a_hint_paces_the_provider_at_once() -> None:
    clock = FakeClock()
    gate = ProviderGate("p", clock)
    gate.note_weather(7.0)
    assert gate._paused_until == pytest.approx(7.0)
