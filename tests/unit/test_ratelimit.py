"""ProviderGate: pacing to requests_per_minute, pausing on a server's hint, and the stop
switch that wakes every sleeper. The clock is fake: sleeps are recorded, not waited."""

from __future__ import annotations

import itertools

import anyio
import anyio.lowlevel
import pytest
from helpers import FakeClock

from runner.engine.pacing import ProviderGate
from runner.errors import StopNotice, Stopped

NOTICE = StopNotice("comet", "payment", "HTTP 402: insufficient balance", 3)


class StuckClock(FakeClock):
    """A clock whose sleep never ends by itself; `entered` is set once `sleepers` sleep."""

    def __init__(self, sleepers: int = 1) -> None:
        super().__init__(start=1000.0)
        self._sleepers = sleepers
        self.entered = anyio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if len(self.sleeps) >= self._sleepers:
            self.entered.set()
        await anyio.sleep_forever()


# --- pacing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("rpm", "interval"), [(60, 1.0), (120, 0.5), (6, 10.0), (0.5, 120.0)])
async def test_requests_per_minute_spaces_turns(rpm: float, interval: float) -> None:
    clock = FakeClock(start=1000.0)
    gate = ProviderGate("comet", clock, requests_per_minute=rpm)
    for _ in range(3):
        await gate.wait_turn()
    assert clock.sleeps == pytest.approx([interval, interval])
    assert clock.now == pytest.approx(1000.0 + 2 * interval)


async def test_first_turn_does_not_wait() -> None:
    clock = FakeClock(start=1000.0)
    await ProviderGate("comet", clock, requests_per_minute=60).wait_turn()
    assert clock.sleeps == []


async def test_turn_waits_only_for_what_is_left_of_the_interval() -> None:
    clock = FakeClock(start=1000.0)
    gate = ProviderGate("comet", clock, requests_per_minute=60)
    await gate.wait_turn()
    clock.now += 0.25  # the request took a quarter of a second
    await gate.wait_turn()
    assert clock.sleeps == pytest.approx([0.75])


async def test_a_turn_that_sent_nothing_gives_its_slot_back() -> None:
    # The runners on the database were at the provider's concurrency: nothing was sent, so
    # the retry a moment later must not wait a whole interval more.
    clock = FakeClock(start=1000.0)
    gate = ProviderGate("comet", clock, requests_per_minute=6)
    turn = await gate.wait_turn()
    assert gate.outstanding == 1
    gate.unused_turn(turn)
    assert gate.outstanding == 0
    clock.now += 0.05
    await gate.wait_turn()
    assert clock.sleeps == []
    clock.now += 1.0
    await gate.wait_turn()  # a sent turn keeps its slot: the next waits out the interval
    assert clock.sleeps == pytest.approx([9.0])


async def test_an_unused_turn_does_not_free_a_slot_taken_after_it() -> None:
    clock = FakeClock(start=1000.0)
    gate = ProviderGate("comet", clock, requests_per_minute=6)
    first = await gate.wait_turn()
    await gate.wait_turn()  # a second worker's turn, 10 s on
    gate.unused_turn(first)  # given back late: the second worker's slot stands
    await gate.wait_turn()
    assert clock.sleeps == pytest.approx([10.0, 10.0])


async def test_turn_after_a_long_idle_does_not_wait() -> None:
    clock = FakeClock(start=1000.0)
    gate = ProviderGate("comet", clock, requests_per_minute=60)
    await gate.wait_turn()
    clock.now += 30.0
    await gate.wait_turn()
    assert clock.sleeps == []


@pytest.mark.parametrize("rpm", [None, 0])
async def test_without_rpm_turns_never_wait(rpm: float | None) -> None:
    clock = FakeClock(start=1000.0)
    gate = ProviderGate("comet", clock, requests_per_minute=rpm)
    for _ in range(10):
        await gate.wait_turn()
    assert clock.sleeps == []
    assert clock.now == 1000.0


async def test_concurrent_turns_are_spaced_by_the_interval() -> None:
    clock = FakeClock(start=1000.0)
    gate = ProviderGate("comet", clock, requests_per_minute=60)
    started: list[float] = []

    async def worker() -> None:
        await gate.wait_turn()
        started.append(clock.monotonic())

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(worker)
    assert len(started) == 3
    started.sort()
    # However the sleeps interleave, no two requests start less than 1 s apart.
    assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(started))


# --- pause_for ------------------------------------------------------------------------------


async def test_an_answer_read_late_gives_no_requests_back_to_the_window() -> None:
    # Three requests out; the provider's newer count (1 left) is read before an older one
    # (3 left) that was held up on its way: only the newer may be believed.
    clock = FakeClock(start=1000.0)
    gate = ProviderGate("venice", clock)
    gate.observe_rate(remaining=1, reset_in_s=30)
    gate.observe_rate(remaining=3, reset_in_s=31)

    await gate.wait_turn()
    gate.answered()
    await gate.wait_turn()

    assert clock.sleeps == [30.0]  # the second turn waits for the window to reset


async def test_pause_for_holds_the_next_turn() -> None:
    clock = FakeClock(start=1000.0)
    gate = ProviderGate("comet", clock)
    gate.pause_for(5)
    await gate.wait_turn()
    assert clock.sleeps == pytest.approx([5.0])
    await gate.wait_turn()  # the pause is over
    assert clock.sleeps == pytest.approx([5.0])


async def test_shorter_pause_does_not_cut_a_longer_one() -> None:
    clock = FakeClock(start=1000.0)
    gate = ProviderGate("comet", clock)
    gate.pause_for(5)
    gate.pause_for(2)
    await gate.wait_turn()
    assert clock.sleeps == pytest.approx([5.0])


async def test_pause_counts_from_when_it_was_set() -> None:
    clock = FakeClock(start=1000.0)
    gate = ProviderGate("comet", clock)
    gate.pause_for(5)
    clock.now += 3.0
    await gate.wait_turn()
    assert clock.sleeps == pytest.approx([2.0])


async def test_pause_and_rpm_wait_for_the_later_of_the_two() -> None:
    clock = FakeClock(start=1000.0)
    gate = ProviderGate("comet", clock, requests_per_minute=60)
    await gate.wait_turn()
    gate.pause_for(5)
    await gate.wait_turn()
    await gate.wait_turn()
    assert clock.sleeps == pytest.approx([5.0, 1.0])


# --- stop -----------------------------------------------------------------------------------


async def test_stop_makes_wait_turn_and_sleep_raise_stopped() -> None:
    clock = FakeClock(start=1000.0)
    gate = ProviderGate("comet", clock, requests_per_minute=60)
    assert not gate.stopped
    gate.stop(NOTICE)
    assert gate.stopped
    assert gate.stop_notice is NOTICE
    with pytest.raises(Stopped, match=r"comet: HTTP 402: insufficient balance"):
        await gate.wait_turn()
    with pytest.raises(Stopped):
        await gate.sleep(3)
    assert clock.sleeps == []  # neither waited


async def test_first_stop_notice_is_kept() -> None:
    gate = ProviderGate("comet", FakeClock())
    gate.stop(NOTICE)
    gate.stop(StopNotice("comet", "auth", "HTTP 401: bad key", 4))
    assert gate.stop_notice is NOTICE
    with pytest.raises(Stopped, match="insufficient balance"):
        await gate.wait_turn()


async def test_sleep_completes_normally_when_not_stopped() -> None:
    clock = FakeClock(start=1000.0)
    gate = ProviderGate("comet", clock)
    await gate.sleep(2.5)
    assert clock.sleeps == [2.5]


async def test_stop_wakes_a_blocked_sleeper() -> None:
    clock = StuckClock()
    gate = ProviderGate("comet", clock)
    outcome: list[BaseException | str] = []

    async def sleeper() -> None:
        try:
            await gate.sleep(100)
        except Stopped as exc:
            outcome.append(exc)
        else:
            outcome.append("woke without Stopped")

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper)
            await clock.entered.wait()
            gate.stop(NOTICE)
    assert clock.sleeps == [100]
    assert len(outcome) == 1
    assert isinstance(outcome[0], Stopped)


async def test_stop_wakes_every_worker_waiting_for_its_turn() -> None:
    clock = StuckClock(sleepers=3)
    gate = ProviderGate("comet", clock)
    gate.pause_for(100)
    stopped = 0

    async def worker() -> None:
        nonlocal stopped
        try:
            await gate.wait_turn()
        except Stopped:
            stopped += 1

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(worker)
            await clock.entered.wait()
            gate.stop(NOTICE)
    assert stopped == 3
    assert clock.sleeps == [100, 100, 100]


async def test_cancelling_the_run_is_not_swallowed_by_the_gate() -> None:
    """Only stop() turns a sleep into Stopped; an outer cancel must still cancel."""
    clock = StuckClock()
    gate = ProviderGate("comet", clock)
    after_sleep: list[str] = []

    async def sleeper() -> None:
        await gate.sleep(100)
        after_sleep.append("sent a request after the run was cancelled")

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper)
            await clock.entered.wait()
            tg.cancel_scope.cancel()
    assert after_sleep == []
    assert not gate.stopped
