"""Run limits: a deadline, a number of jobs, a budget. A limit stops the run from taking
the job that could cross it; requests already out finish (and are paid for) first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class ResolvedLimits:
    deadline: datetime | None = None
    max_jobs: int | None = None
    max_cost_usd: float | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.deadline, self.max_jobs, self.max_cost_usd))


class LimitGuard:
    """Asked before each job is sent; counts what the run has started and spent.

    Cost: what has been spent, plus the estimates of jobs still out, plus this job's
    estimate, must stay within the budget. A job with no price cannot be admitted under a
    budget (the app refuses such a manifest up front, so this is a backstop).
    Deadline: a job is not started if a typical job (the mean time of this run's answers so
    far) would end after it.
    """

    def __init__(self, limits: ResolvedLimits, wall_clock: Callable[[], datetime]) -> None:
        self.limits = limits
        self._wall_clock = wall_clock
        self.started = 0
        self._spent = 0.0
        self._reserved = 0.0
        self._answers = 0
        self._answer_s = 0.0

    def admit(self, estimate: float | None) -> str | None:
        """None to go ahead (the job is then counted), or why the run stops here."""
        limits = self.limits
        if limits.max_jobs is not None and self.started >= limits.max_jobs:
            return f"--max-jobs {limits.max_jobs} reached"
        if limits.deadline is not None:
            typical = self._answer_s / self._answers if self._answers else 0.0
            if self._wall_clock() + timedelta(seconds=typical) > limits.deadline:
                return f"deadline {limits.deadline.isoformat(timespec='minutes')} reached"
        if limits.max_cost_usd is not None:
            if estimate is None:
                return "a job has no known price, so --max-cost cannot be kept"
            committed = self._spent + self._reserved
            if committed + estimate > limits.max_cost_usd + 1e-9:
                return (
                    f"--max-cost ${limits.max_cost_usd:.2f}: ${committed:.4f} spent or "
                    f"committed, and the next job may cost ${estimate:.4f}"
                )
        self.started += 1
        self._reserved += estimate or 0.0
        return None

    def unadmit(self, estimate: float | None) -> None:
        """`admit` said yes, but the fleet's shared budget said no: the job did not start."""
        self.started -= 1
        self._reserved = max(0.0, self._reserved - (estimate or 0.0))

    def resend_refused(self) -> str | None:
        """Before a job's next request: None, or why it may not go (its earlier requests
        were paid without a usable answer, and another could cross the budget)."""
        limit = self.limits.max_cost_usd
        committed = self._spent + self._reserved
        if limit is not None and committed > limit + 1e-9:
            return (
                f"--max-cost ${limit:.2f}: ${self._spent:.4f} spent (paid answers without a "
                f"usable image included), and a retry may cost more"
            )
        return None

    def spent(self, usd: float) -> None:
        self._spent += usd

    def settle(self, estimate: float | None) -> None:
        """The job's requests are over; its real cost has been counted by `spent`."""
        self._reserved = max(0.0, self._reserved - (estimate or 0.0))

    def took(self, seconds: float) -> None:
        self._answers += 1
        self._answer_s += seconds
