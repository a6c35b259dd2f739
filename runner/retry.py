"""The retry policy as a value: which errors to retry, how long to wait, when to give up.

Waits are the larger of the server's hint and a fully jittered exponential backoff,
capped. A timed-out request may have been billed, so it is re-sent at most
`max_timeout_resends` times however many attempts remain.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, RetryCallState, stop_after_attempt

from .config import RetrySettings
from .errors import AttemptTimeout, RetryableError


@dataclass(slots=True)
class RetryPolicy:
    settings: RetrySettings = field(default_factory=RetrySettings)
    rng: random.Random = field(default_factory=random.Random)

    def wait_seconds(self, attempt_number: int, error: BaseException | None) -> float:
        """Wait before the attempt after `attempt_number` (1-based) failed with `error`."""
        ceiling = min(
            self.settings.backoff_cap_s,
            self.settings.backoff_base_s * 2 ** (attempt_number - 1),
        )
        backoff = self.rng.uniform(0, ceiling)
        hint = getattr(error, "retry_after", None) or 0.0
        return min(max(hint, backoff), self.settings.max_wait_s)

    def retrying(
        self, attempts_left: int, sleep: Callable[[float], Awaitable[None]]
    ) -> AsyncRetrying:
        timeouts = 0

        def worth_retrying(state: RetryCallState) -> bool:
            nonlocal timeouts
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, AttemptTimeout):
                timeouts += 1
                return timeouts <= self.settings.max_timeout_resends
            return isinstance(error, RetryableError)

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            return self.wait_seconds(state.attempt_number, error)

        return AsyncRetrying(
            stop=stop_after_attempt(max(1, attempts_left)),
            wait=wait,
            retry=worth_retrying,
            sleep=sleep,
            reraise=True,
        )
