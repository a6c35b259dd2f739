"""Defaults (with their units) and the settings of one run.

Precedence everywhere: command-line flag > environment variable > manifest > default.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

DEFAULT_CONCURRENCY = 4  # in-flight requests per provider
DEFAULT_MAX_ATTEMPTS = 5  # HTTP attempts per job, the first included
DEFAULT_BACKOFF_BASE_S = 1.0  # first backoff step; doubles per attempt, fully jittered
DEFAULT_BACKOFF_CAP_S = 60.0  # ceiling of the jittered backoff
DEFAULT_MAX_WAIT_S = 300.0  # ceiling of any wait, server hints included
# A request with no reply in time may have been billed: after one, a job is sent once more
# at most, counted across runs since its last `runner retry`.
DEFAULT_MAX_TIMEOUT_RESENDS = 1
# Rate-limit answers and requests that never reached the provider cost a job no attempt; a
# job throttled this many times in one run goes back to pending and the provider stops.
DEFAULT_MAX_WEATHER_RETRIES = 50
# Failed requests in a row, across jobs, with no success in between, after which a provider
# is taken to be down (at least twice its concurrency: a blip fails every request in flight).
DEFAULT_OUTAGE_STREAK = 25
# A job that used up its attempts while the provider failed at least this share of other
# jobs' recent requests met the provider's weather, not a fault of its own: it gets another
# set of attempts, at most DEFAULT_WEATHER_ROUNDS times per run. Five failures in a row are
# a 1-in-13,000 chance at this rate: below it, they are the job's own.
STORM_FAILURE_RATIO = 0.15
STORM_WINDOW = 100  # the provider's latest answers that ratio is taken over
STORM_MIN_ANSWERS = 5  # fewer answers from other jobs than this say nothing about the weather
DEFAULT_WEATHER_ROUNDS = 2
DEFAULT_CONNECT_TIMEOUT_S = 15.0
DEFAULT_READ_TIMEOUT_S = 600.0  # edits are slow; providers advise 300-600 s
# Largest reply per image, in MiB: a 4K PNG is ~25 MB, ~35 MB in base64. A reply asking for
# n images may be n times that; anything larger is refused (and retried) unread.
DEFAULT_MAX_REPLY_MB = 64
# Lines per batch in batch mode unless the profile says (OpenAI takes up to 50,000): smaller
# batches finish, and can be collected, sooner.
DEFAULT_BATCH_LINES = 2000
DEFAULT_LEASE_S = 120.0  # a claimed job's lease; renewed while the runner lives
DEFAULT_POLL_S = 5.0  # how often to look again while other runners hold this manifest's jobs
# "-{index}" is put before the extension when a job returns several images and the
# template does not place {index} itself.
DEFAULT_OUTPUT_NAME = "{stem}-{key8}.{ext}"

# Below this much free space in the output folder, no request is sent: its paid reply could
# not be saved. The run stops with exit 75; free some space and run again.
DEFAULT_MIN_FREE_BYTES = 200 * 1024 * 1024

# CPU work on payloads up to this size (pre-flight of an input, parsing a reply: a few ms)
# runs on the event loop; measured, the hop to a worker thread and the GIL contention it
# brings cost more than the work. Larger payloads go to a thread so the loop stays lively.
INLINE_WORK_LIMIT_BYTES = 4 * 1024 * 1024

# Per-file limits applied before anything is sent (PROVIDERS.md §4.3).
OPENAI_MAX_IMAGE_BYTES = 25 * 1024 * 1024  # CometAPI's cautious figure (OpenAI allows 50 MB)
OPENAI_MAX_MASK_BYTES = 4 * 1024 * 1024
OPENAI_MAX_PROMPT_CHARS = 32_000
OPENAI_IMAGE_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
OPENAI_MAX_N = 10

# Every flag that sets how a command works also reads RUNNER_<FLAG> (`--max-cost` from
# RUNNER_MAX_COST). Flags that choose what a command acts on or where its output goes
# (--job, --state, --json, -o) read no variable: a variable left set in a shell must never
# change which jobs a `cancel` touches.
ENV_PREFIX = "RUNNER_"
SETTING_FLAGS = (
    "db",
    "max-attempts",
    "deadline",
    "max-jobs",
    "max-cost",
    "grace",
    "log-format",
    "progress-interval",
    "concurrency",
    "lease",
    "wait",
    "keep-files",
    "quiet",
    "verbose",
)
ENV_DEBUG = "RUNNER_DEBUG"  # re-raise errors for a traceback


def env_name(flag: str) -> str:
    """`--max-cost` → `RUNNER_MAX_COST`."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


ENV_DB = env_name("db")
ENV_MAX_ATTEMPTS = env_name("max-attempts")
ENV_CONCURRENCY = env_name("concurrency")
KNOWN_ENV = frozenset({*(env_name(flag) for flag in SETTING_FLAGS), ENV_DEBUG})


def unknown_env(
    environ: Mapping[str, str], named_elsewhere: Collection[str] = ()
) -> list[tuple[str, str | None]]:
    """RUNNER_* variables the runner does not read (a typo, or an old name), each with the
    closest known name; variables a manifest names (`api_key_env`) are the user's own."""
    import difflib

    found = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in KNOWN_ENV and name not in named_elsewhere:
            close = difflib.get_close_matches(name, sorted(KNOWN_ENV), n=1, cutoff=0.6)
            found.append((name, close[0] if close else None))
    return found


DEFAULT_GRACE_S = 60.0  # after SIGINT/SIGTERM, how long requests already sent may take


@dataclass(frozen=True, slots=True)
class RetrySettings:
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S
    backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S
    max_wait_s: float = DEFAULT_MAX_WAIT_S
    max_timeout_resends: int = DEFAULT_MAX_TIMEOUT_RESENDS
    max_weather_retries: int = DEFAULT_MAX_WEATHER_RETRIES


@dataclass(frozen=True, slots=True)
class RunSettings:
    retry: RetrySettings = RetrySettings()
    lease_s: float = DEFAULT_LEASE_S
    poll_s: float = DEFAULT_POLL_S
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES
    breaker_window_s: float = 30.0  # Venice's lock-out window; tests shrink it
    outage_streak: int = DEFAULT_OUTAGE_STREAK
    weather_rounds: int = DEFAULT_WEATHER_ROUNDS


# Venice (PROVIDERS.md §3): 20 image requests a minute by default; more than 20 failed
# requests in 30 s lock the key for 30 s, so the breaker opens well before that.
VENICE_DEFAULT_RPM = 20.0
VENICE_BREAKER_FAILURES = 10
CATALOGUE_MAX_AGE_S = 24 * 3600.0


class Clock(Protocol):
    """Monotonic time and waiting, injected everywhere a wait or a rate is measured: tests
    pass a clock whose sleeps return at once."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        import anyio  # here: the CLI reads these settings before it needs an event loop

        await anyio.sleep(seconds)


WallClock = Callable[[], datetime]  # the date and time, for records and deadlines
