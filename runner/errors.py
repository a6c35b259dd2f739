"""The one exception tree of the runner.

    RunnerError
     ├── ManifestError          bad manifest or settings: exit 2, nothing sent
     ├── InputError             one job's inputs are unusable: the job fails, nothing sent
     ├── OutputError            an output file could not be written
     ├── Stopped                the run is stopping: put the job back, untouched
     ├── LeaseLost              the job is another runner's now: do not send it, touch nothing
     ├── StoppedElsewhere       another runner's 402 (or rejected key) stops this one too
     ├── ProviderBusy           the fleet's requests out reach the provider's concurrency
     ├── ProviderPaced          the fleet's pace (requests per minute, a pause) says wait
     ├── StoreError             the database could not be opened, read or written: exit 75
     │    ├── MissingDriver     the URL needs a driver this install lacks: exit 2
     │    ├── NewerSchema       the database was made by a newer runner: exit 2
     │    └── WriteFailed       a write that shared a failed transaction; nothing of it kept
     ├── CatalogueUnavailable   a provider's model list could not be had (built-ins apply)
     └── ProviderError          anything a provider answered (or failed to answer)
          ├── RetryableError    worth another attempt (5xx, resets, bad 200 bodies)
          │    ├── AttemptTimeout   no answer in time: the provider may still have charged
          │    ├── Throttled        weather: a rate limit or "overloaded"; the job's
          │    │                    attempts are not used, the whole provider slows down
          │    └── NotDelivered     weather: the request provably never reached the
          │                         provider (connect errors); attempts not used either
          ├── PermanentJobError this job will never succeed as it is (400, 413, moderation)
          └── ProviderStop      stop every request to this provider
               ├── PaymentRequired  402, insufficient quota or balance: exit 3
               ├── AuthRejected     401/403 credentials or access: exit 4
               └── ProviderDown     failing for every job, not just one: exit 75

Foreign errors (httpx, sqlite, Pillow) are translated at the boundary that meets them,
with `raise ... from exc`, so callers only ever catch these.

`ExitCode` is the one list of the process's exit codes (README, "Exit codes").
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.records import ReplyFacts, Usage


class ExitCode(IntEnum):
    OK = 0  # every job succeeded
    FAILED = 1  # some jobs failed (or an unexpected error)
    USAGE = 2  # a usage or manifest error: nothing was sent
    PAYMENT = 3  # payment required: top up, run again
    AUTH = 4  # credentials rejected: fix the key, run again
    EARLY = 75  # stopped early with work left (EX_TEMPFAIL): run the same command again


# A value echoed in an error is cut short: a hostile manifest must not make one line of
# error hundreds of megabytes (nor take minutes to write).
SHOWN_CHARS = 200
_SHORT_REPR = reprlib.Repr()  # its limits walk only the head of a nested value
_SHORT_REPR.maxlevel, _SHORT_REPR.maxdict, _SHORT_REPR.maxlist = 3, 8, 8
_SHORT_REPR.maxtuple, _SHORT_REPR.maxset, _SHORT_REPR.maxlong = 8, 8, 60
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = SHOWN_CHARS
MAX_MESSAGE_CHARS = 1000


def shown(value: Any) -> str:
    """`value`'s repr, at most about SHOWN_CHARS characters, for an error message."""
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


class RunnerError(Exception):
    """Base of every error the runner raises on purpose."""


class ManifestError(RunnerError):
    """The manifest (or a setting) is unusable; the message names file, job and field."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        job: int | None = None,
        field: str | None = None,
        problems: Sequence[ManifestError] = (),
    ) -> None:
        self.file = file
        self.job = job
        self.field = field
        self.reason = message
        # Every problem found, this one first (`runner validate` lists them; the other
        # commands stop at the first line).
        self.problems: tuple[ManifestError, ...] = tuple(problems) or (self,)
        super().__init__(self._one_line())

    def _one_line(self) -> str:
        """`jobs.yaml: jobs[3].mask: file not found` — file, job index and field on one line."""
        location = ".".join(
            part
            for part in (_entry_label(self.job) if self.job is not None else None, self.field)
            if part
        )
        parts = [part for part in (self.file, location) if part]
        line = ": ".join([*parts, self.reason])
        return line if len(line) <= MAX_MESSAGE_CHARS else line[: MAX_MESSAGE_CHARS - 1] + "…"


def _entry_label(entry: int) -> str:
    from runner.records import entry_label  # records imports nothing of errors at runtime

    return entry_label(entry)


class InputError(RunnerError):
    """A job's own input is bad (missing file, not an image, wrong mask); never sent."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}")


class OutputError(RunnerError):
    """An output file could not be written (disk full, permissions)."""


class StoreError(RunnerError):
    """The database could not be opened, read or written (a full disk, a lost server)."""


class MissingDriver(StoreError):
    """The database URL needs a driver (or names a database) this install does not have:
    a setup problem, told in one line with what to install (exit 2)."""


class NewerSchema(StoreError):
    """The database's schema is newer than this runner knows: it is left untouched."""


class WriteFailed(StoreError):
    """A write shared a transaction with one that failed; nothing of it was kept."""


class CatalogueUnavailable(RunnerError):
    """The model list could not be had; callers fall back to the built-in prices."""


class Stopped(RunnerError):
    """The run (or this job's provider) is stopping; the job goes back to pending."""


class StoppedElsewhere(RunnerError):
    """Another runner on this database was told to stop sending to this provider (a 402,
    a rejected key): this runner stops too, before its request leaves."""

    def __init__(self, notice: StopNotice) -> None:
        self.notice = notice
        super().__init__(notice.message)


class ProviderBusy(RunnerError):
    """The provider's `concurrency` is used up by the runners on this database together:
    wait a moment, then ask again."""


class ProviderPaced(RunnerError):
    """The runners on this database together must wait before this provider's next request
    (its `requests_per_minute`, or a pause a rate-limit answer asked for)."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        super().__init__(f"next request in {wait_s:.3f} s")


class LeaseLost(RunnerError):
    """The job is no longer this runner's (its lease lapsed and another runner took it, or
    the run was reclaimed as dead): it must not be sent, and its state is not ours to touch."""


class ProviderError(RunnerError):
    """Something a provider answered, or failed to answer, for one request."""

    outcome = "error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        provider_code: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        usage: Usage | None = None,
        facts: ReplyFacts | None = None,
    ) -> None:
        self.message = message
        self.usage = usage  # a reply can be billed and still unusable (no image in it)
        self.facts = facts  # balance and rate-limit headers come with errors too
        self.status_code = status_code
        self.provider_code = provider_code
        self.request_id = request_id
        self.retry_after = retry_after
        super().__init__(message)

    @property
    def billed(self) -> bool:
        """A 200 (or a reply with usage) came back, so the provider charged for it, even
        though no usable image came with it."""
        return self.status_code == 200 or self.usage is not None

    def describe(self) -> str:
        """One line for status and export: 'HTTP 429 rate_limit_exceeded: slow down'."""
        head = " ".join(
            part
            for part in (
                f"HTTP {self.status_code}" if self.status_code else None,
                self.provider_code,
            )
            if part
        )
        return f"{head}: {self.message}" if head else self.message


class RetryableError(ProviderError):
    outcome = "retryable"


class AttemptTimeout(RetryableError):
    """The provider did not answer in time; it may have done (and billed) the work."""

    outcome = "timeout"


class Throttled(RetryableError):
    """A rate-limit answer (429 without a quota code, 503 "overloaded", any answer with a
    Retry-After): the provider is busy, not the job at fault. Nothing was done or billed,
    so it does not use up the job's attempts; the provider is paced instead."""

    outcome = "throttled"


class NotDelivered(RetryableError):
    """The request never reached the provider (no connection could be made, or the
    connection broke before the request was written): it cannot have been billed, so it
    does not use up the job's attempts."""

    outcome = "not_sent"


class PermanentJobError(ProviderError):
    outcome = "permanent"


class InputChanged(PermanentJobError):
    """An input file no longer had the bytes pre-flight checked when it was read again to
    be sent: the request was cut off before its last byte (the provider never received it
    whole, so cannot have acted on it or billed it) and the job fails as bad input."""

    outcome = "not_sent"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ProviderStop(ProviderError):
    """Stop sending to this provider; the job goes back to pending, attempt not counted."""

    exit_code = ExitCode.FAILED


class PaymentRequired(ProviderStop):
    outcome = "payment"
    exit_code = ExitCode.PAYMENT


class AuthRejected(ProviderStop):
    outcome = "auth"
    exit_code = ExitCode.AUTH


class ProviderDown(ProviderStop):
    """Requests for several jobs in a row have failed: the provider, not the job, is at
    fault. The job keeps its place; the run ends so it can be resumed later."""

    outcome = "outage"
    exit_code = ExitCode.EARLY


@dataclass(frozen=True, slots=True)
class StopNotice:
    """Why a provider was stopped, kept for the end-of-run message."""

    provider: str
    kind: str
    message: str
    exit_code: int


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """What went wrong in a task group, unwrapped: the first error that is not the
    cancellation it caused in the other tasks (the group itself if there is none)."""
    import anyio  # lazy: the error tree itself needs no event loop

    cancelled = anyio.get_cancelled_exc_class()
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        elif not isinstance(error, cancelled):
            return error
    return group
