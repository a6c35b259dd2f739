"""Per-provider pacing and the provider's stop switch.

One ProviderGate per provider profile, shared by all its workers, so that one 429's
Retry-After slows the whole pool (not just the job that got it) and a 402 stops every
worker before its next request. Clock and sleep are injected: tests record, not wait.
"""

from __future__ import annotations

from collections import deque

import anyio

from runner.errors import StopNotice, Stopped
from runner.settings import STORM_FAILURE_RATIO, STORM_MIN_ANSWERS, STORM_WINDOW, Clock

WEATHER_PAUSE_BASE_S = 1.0  # the provider's pause after a rate limit with no hint; doubles
WEATHER_PAUSE_CAP_S = 60.0


class ProviderGate:
    def __init__(
        self,
        name: str,
        clock: Clock,
        requests_per_minute: float | None = None,
        breaker_failures: int | None = None,
        breaker_window_s: float = 30.0,
    ) -> None:
        self.name = name
        self._clock = clock
        self._interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._lock = anyio.Lock()
        self._sleepers: set[anyio.CancelScope] = set()
        self.stop_notice: StopNotice | None = None
        # Failed attempts since this provider's last success, across all jobs.
        self.failure_streak = 0
        self._breaker_failures = breaker_failures
        # The provider's request window as its rate headers last described it.
        self._window_left: int | None = None
        self._window_ends = 0.0
        self._outstanding = 0  # requests sent, not yet answered
        self._breaker_window = breaker_window_s
        self._recent_failures: deque[float] = deque()
        self.breaker_trips = 0
        self._weather_in_a_row = 0  # throttled/undelivered requests since the last success
        # (job key, failed) of the latest answers that count against a job's attempts.
        self._answers: deque[tuple[str, bool]] = deque(maxlen=STORM_WINDOW)

    @property
    def interval_s(self) -> float:
        """Seconds between two requests under `requests_per_minute` (0: no pace set)."""
        return self._interval

    @property
    def stopped(self) -> bool:
        return self.stop_notice is not None

    def stop(self, notice: StopNotice) -> None:
        """No new request from now on; workers asleep here wake up and put their job back."""
        if self.stop_notice is None:
            self.stop_notice = notice
        for scope in list(self._sleepers):
            scope.cancel()

    def record(self, succeeded: bool) -> None:
        self.failure_streak = 0 if succeeded else self.failure_streak + 1
        if succeeded:
            self._weather_in_a_row = 0

    def note_weather(self, hint_s: float | None) -> None:
        """A rate-limit answer, or a request that never got through: slow the whole
        provider down, by the server's hint, or else, from the second such answer in a row
        (across jobs), by a pause that doubles while the weather lasts (a success resets it)."""
        self._weather_in_a_row += 1
        if hint_s is not None:
            self.pause_for(hint_s)
        elif self._weather_in_a_row > 1:  # one answer alone is the job's own backoff's business
            backoff = WEATHER_PAUSE_BASE_S * 2 ** min(self._weather_in_a_row - 2, 16)
            self.pause_for(min(backoff, WEATHER_PAUSE_CAP_S))

    def note_answer(self, job_key: str, *, failed: bool) -> None:
        """An answer that counts against a job's attempts (a success, or a failure that
        was not weather), for telling the provider's weather from a job's own trouble."""
        self._answers.append((job_key, failed))

    def weather(self, job_key: str) -> str:
        """How the provider is treating other jobs lately: "storm" when it fails a good share
        of their requests (a job out of attempts then says more about the provider than about
        itself), "calm" when it rarely does, "unknown" while too few have been answered."""
        others = [failed for key, failed in self._answers if key != job_key]
        if len(others) < STORM_MIN_ANSWERS:
            return "unknown"
        # Laplace's rule of succession: a few lucky answers do not make a storm look calm.
        ratio = (sum(others) + 1) / (len(others) + 2)
        return "storm" if ratio >= STORM_FAILURE_RATIO else "calm"

    @property
    def breaker_threshold(self) -> int | None:
        return self._breaker_failures

    @property
    def breaker_window_s(self) -> float:
        return self._breaker_window

    def note_failure(self) -> bool:
        """Count an answer that was not a success (Venice counts every non-2xx, 4xx
        included); True when that opens the breaker: a pause of one window, so the
        provider's lock-out threshold is never reached however many workers there are."""
        if self._breaker_failures is None:
            return False
        now = self._clock.monotonic()
        recent = self._recent_failures
        recent.append(now)
        while recent and recent[0] <= now - self._breaker_window:
            recent.popleft()
        if len(recent) < self._breaker_failures or now < self._paused_until:
            return False
        recent.clear()
        self.breaker_trips += 1
        self.pause_for(self._breaker_window)
        return True

    @property
    def outstanding(self) -> int:
        """Requests that passed `wait_turn` and have no answer yet."""
        return self._outstanding

    def answered(self) -> None:
        """A request that passed `wait_turn` has its answer (or will never get one)."""
        self._outstanding = max(0, self._outstanding - 1)

    def unused_turn(self, turn: float) -> None:
        """A turn from `wait_turn` that sent nothing (the runners on the database were at
        the provider's concurrency, or pacing it): it is not out, and unless another turn
        was taken since, the next request may have its slot instead of waiting a whole
        interval more."""
        self.answered()
        if self._next_slot == turn:
            self._next_slot = turn - self._interval
            if self._window_left is not None:
                self._window_left += 1

    def observe_rate(self, remaining: int | None, reset_in_s: float | None) -> None:
        """Pace from the provider's own count, before it has to say 429: `remaining`
        requests are left until the window resets, less those we sent that it may not have
        counted yet; when none are left, everyone waits for the reset."""
        if remaining is None or reset_in_s is None or reset_in_s <= 0:
            return
        left, now = remaining - self._outstanding, self._clock.monotonic()
        if self._window_left is not None and now < self._window_ends:
            # Within a window the count only goes down; an answer the provider sent before
            # another, but read after it, must not give back the requests sent since. (A
            # window that reset early is read afresh once this one's end has passed.)
            self._window_left = min(self._window_left, left)
            return
        self._window_left, self._window_ends = left, now + reset_in_s

    def pause_for(self, seconds: float) -> None:
        """Hold every request to this provider for `seconds` (a server's wait hint)."""
        self._paused_until = max(self._paused_until, self._clock.monotonic() + seconds)

    async def wait_turn(self) -> float:
        """Wait for this provider's next free request slot; raises Stopped if it stops.
        Returns the turn, for `unused_turn`."""
        while True:
            self._raise_if_stopped()
            now = self._clock.monotonic()
            async with self._lock:
                start = max(now, self._next_slot, self._paused_until)
                if self._window_left is not None:
                    if now >= self._window_ends:
                        self._window_left = None  # a new window: the next answer says more
                    elif self._window_left <= 0:
                        start = max(start, self._window_ends)
                if start <= now:
                    self._next_slot = now + self._interval
                    if self._window_left is not None:
                        self._window_left -= 1
                    self._outstanding += 1
                    return self._next_slot
            await self.sleep(start - now)

    async def sleep(self, seconds: float) -> None:
        """Sleep that ends early, with Stopped, if the provider is stopped meanwhile."""
        self._raise_if_stopped()
        with anyio.CancelScope() as scope:
            self._sleepers.add(scope)
            try:
                await self._clock.sleep(seconds)
            finally:
                self._sleepers.discard(scope)
        self._raise_if_stopped()

    def _raise_if_stopped(self) -> None:
        if self.stop_notice is not None:
            raise Stopped(f"{self.name}: {self.stop_notice.message}")
