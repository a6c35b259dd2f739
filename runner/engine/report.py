"""What a run has done, as the pool tallies it: plain data, apart from the pool, so that a
run with nothing to send reports without loading the sending half (HTTP, images, retries)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from runner.errors import StopNotice


@dataclass(slots=True)
class PoolReport:
    """What this run has done so far; progress displays read it while the run goes on."""

    succeeded: int = 0
    failed: int = 0
    released: int = 0
    spent_usd: float = 0.0
    in_flight: int = 0  # jobs between pre-flight and their last answer
    retries_waiting: int = 0  # jobs asleep before their next attempt
    stops: list[StopNotice] = field(default_factory=list)
    failed_by_kind: Counter[str] = field(default_factory=Counter)  # FailureKind → jobs
    retries: Counter[str] = field(default_factory=Counter)  # `retry_cause` → requests
