"""Plain data passed between the layers: no I/O, no framework types."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from runner.settings import DEFAULT_MAX_REPLY_MB


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUBMITTED = "submitted"  # a line of an open batch (batch mode): never sent otherwise
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Outcome(StrEnum):
    """What one HTTP attempt came to, as recorded in the attempts table."""

    IN_FLIGHT = "in_flight"  # sent, no answer recorded yet (a crash leaves this behind)
    SUCCEEDED = "succeeded"
    RETRYABLE = "retryable"
    TIMEOUT = "timeout"
    PERMANENT = "permanent"
    PAYMENT = "payment"
    AUTH = "auth"
    OUTPUT_ERROR = "output_error"
    ABANDONED = "abandoned"  # the runner that sent it died before recording an answer
    # Never reached the provider: stopped just before it went out, or no connection.
    NOT_SENT = "not_sent"
    THROTTLED = "throttled"  # a rate-limit answer: nothing done, nothing billed


class FailureKind(StrEnum):
    """Why a job ended `failed`, for `status` and `jobs` (stored in jobs.failure_kind)."""

    INPUT = "input"  # its files or prompt failed pre-flight: nothing was sent
    REFUSED = "refused"  # the provider refused it for good (400, moderation, ...)
    ATTEMPTS = "attempts"  # it used up its attempts on errors of its own
    UNANSWERED = "unanswered"  # requests got no reply in time and may have been billed
    OUTPUT = "output"  # the reply could not be written to disk
    # Its table row is unusable (an empty cell, a bad param): nothing was sent, and `retry`
    # leaves it be; fixing the row makes a new job.
    ROW = "row"


def images_asked(params: Mapping[str, Any]) -> int:
    """Images a job asks for (`n`), 1 unless a whole number is given."""
    n = params.get("n", 1)
    return n if isinstance(n, int) and not isinstance(n, bool) else 1


# How many characters of a job's key are shown (tables, logs, errors, the report): one
# length everywhere, so what one place shows can be pasted into `--job` or grep elsewhere.
# 10 hex digits: 100,000 jobs are unlikely to share one (a 0.5 % chance), 8 would not be.
SHOWN_KEY_CHARS = 10


def short_key(key: str) -> str:
    return key[:SHOWN_KEY_CHARS]


# A job's `entry` names where in the manifest it comes from: `jobs[N]` below this, the
# `jobs_from:` table at (entry - TABLE_ENTRIES) above it.
TABLE_ENTRIES = 2**30


def entry_label(entry: int) -> str:
    """`jobs[3]`, or `jobs_from[0]` for a row of the manifest's first table."""
    if entry >= TABLE_ENTRIES:
        return f"jobs_from[{entry - TABLE_ENTRIES}]"
    return f"jobs[{entry}]"


# Object stores an `output_dir` may name instead of a folder (see files/object_store.py).
OBJECT_SCHEMES = ("s3",)


@dataclass(frozen=True, slots=True, order=True)
class ObjectURL:
    """A place in an object store, `s3://bucket/prefix[/name]`: what `output_dir` and an
    output's path are when the outputs go to a bucket every host of a fleet can reach. It
    has the few operations of `Path` that naming outputs needs."""

    url: str  # normalised: no trailing slash, no empty or "." segments

    def __truediv__(self, name: str) -> ObjectURL:
        return ObjectURL(f"{self.url}/{name}")

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def bucket_url(self) -> str:
        """`s3://bucket`: what one client of the store is opened for."""
        scheme, rest = self.url.split("://", 1)
        return f"{scheme}://{rest.split('/', 1)[0]}"

    @property
    def key(self) -> str:
        """The object's key inside its bucket (empty for the bucket itself)."""
        rest = self.url.split("://", 1)[1]
        return rest.split("/", 1)[1] if "/" in rest else ""


# Where outputs go: a folder on a disk the runner sees, or a prefix in an object store.
OutputPlace = Path | ObjectURL


def is_object_url(text: str) -> bool:
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.lower() in OBJECT_SCHEMES


def output_place(text: str) -> OutputPlace:
    """An `output_dir` or output path as stored (text) back to what it names."""
    if not is_object_url(text):
        return Path(text)
    scheme, rest = text.split("://", 1)
    segments = [s for s in rest.split("/") if s not in ("", ".")]
    return ObjectURL(f"{scheme.lower()}://" + "/".join(segments))


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job as the manifest describes it; `key` is its content hash."""

    key: str
    entry: int  # index of the manifest's `jobs:` entry it came from (globs expand one entry)
    image: Path
    mask: Path | None
    prompt: str
    provider: str
    model: str
    params: Mapping[str, Any]
    output_dir: OutputPlace
    output_name: str
    # sha256 of the inputs when the key was made; None where the file could not be read.
    image_sha256: str | None = None
    mask_sha256: str | None = None

    @property
    def key8(self) -> str:
        return self.key[:8]

    @property
    def origin(self) -> str:
        """Where the manifest lists it: `jobs[3]` or `jobs_from[0]` (see `entry_label`)."""
        return entry_label(self.entry)

    @property
    def images_asked(self) -> int:
        return images_asked(self.params)


@dataclass(frozen=True, slots=True)
class Job:
    """A job claimed for work: its spec plus what the store knows about it."""

    spec: JobSpec
    attempts_this_round: int  # attempts that used up its budget since the last `runner retry`
    # Requests that got no reply in time since the last `runner retry`, in any run: each may
    # have been billed, so their number is capped across runs, not per run.
    unanswered: int = 0


@dataclass(frozen=True, slots=True)
class InputFile:
    """A checked input left on disk until it is sent: its bytes must still have this size
    and sha256 when they are read again (files/uploads.py), or nothing is sent."""

    path: Path
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """One image of a request: its bytes in memory (converted to PNG, or carried by a
    table), or, with `source`, a file read again as it is sent. A request waits for its
    turn, its retries and its reply; holding every waiting request's image in memory made
    memory grow with concurrency (128 requests out of 20 MB images: 2.5 GB)."""

    filename: str
    content_type: str
    data: bytes
    source: InputFile | None = None
    # With `source`: the bytes pre-flight read and checked, kept for the first send while
    # a run-wide allowance lasts (files/uploads.py `ReadAhead`), so that send need not read
    # and hash the file again; the first to take them lets them go.
    held: HeldBytes | None = field(default=None, compare=False, repr=False)

    @property
    def size(self) -> int:
        return self.source.size if self.source is not None else len(self.data)


class HeldBytes(Protocol):
    def take(self) -> bytes | None:
        """The bytes, once; None after that (or if they were let go)."""
        ...


@dataclass(frozen=True, slots=True)
class EditRequest:
    model: str
    prompt: str
    image: ImagePart
    mask: ImagePart | None
    params: Mapping[str, Any]

    def let_go(self) -> None:
        """Drop what pre-flight held for a first send that did not take it (the job ended
        without a request, or its request was built from the file)."""
        for part in (self.image, self.mask):
            if part is not None and part.held is not None:
                part.held.take()


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage as the provider reported it; `raw` keeps its JSON untouched."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    input_image_tokens: int | None = None
    input_text_tokens: int | None = None
    output_image_tokens: int | None = None
    raw: str | None = None
    # Why these figures cannot be trusted (negative, not whole numbers, beyond any real
    # image); the fields that were wrong are left empty and `raw` keeps what was sent.
    suspect: str | None = None


@dataclass(frozen=True, slots=True)
class ReplyImage:
    """One image a provider returned, already checked to decode."""

    data: bytes
    format: str  # Pillow's name: PNG, JPEG, WEBP
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class ReplyFacts:
    """What a provider says about the account and the request beside its answer (Venice
    headers, PROVIDERS.md §3): kept per attempt, successful or not."""

    balance_usd: float | None = None  # x-venice-balance-usd: before this request
    balance_diem: float | None = None  # x-venice-balance-diem: before this request
    balance_after_usd: float | None = None  # X-Balance-Remaining (x402 wallets): after it
    content_violation: bool | None = None  # x-venice-is-content-violation
    served_model: str | None = None  # x-venice-model-id
    enhanced_prompt: bool = False  # x-venice-enhanced-prompt present: the $0.04 rewrite applied
    deprecation: str | None = None  # the deprecation headers, as one sentence for a warning
    rate_limit: int | None = None  # x-ratelimit-limit-requests
    rate_remaining: int | None = None  # x-ratelimit-remaining-requests
    rate_reset_in_s: float | None = None  # seconds until the request window resets


@dataclass(frozen=True, slots=True)
class EditResult:
    """A successful reply: the images and its accounting."""

    images: tuple[ReplyImage, ...]
    usage: Usage | None
    request_id: str | None
    status_code: int = 200
    facts: ReplyFacts | None = None


@dataclass(frozen=True, slots=True)
class OutputRef:
    index: int
    path: OutputPlace
    sha256: str
    size: int
    width: int
    height: int
    format: str

    @classmethod
    def of(cls, index: int, path: OutputPlace, image: ReplyImage) -> OutputRef:
        """What is recorded of `image` once written to `path`."""
        digest = hashlib.sha256(image.data).hexdigest()
        return cls(index, path, digest, len(image.data), image.width, image.height, image.format)


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """What the store keeps of one finished HTTP attempt."""

    outcome: Outcome
    latency_ms: int | None = None
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    request_id: str | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    counted: bool = True  # False for answers that must not use up an attempt (402)
    facts: ReplyFacts | None = None


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One batch sent to a provider's Batch API, as the database keeps it."""

    id: str  # ours; also the `runner_batch` tag in the batch's metadata at the provider
    provider: str
    manifest: str
    input_file_id: str
    lines: int
    run_id: str
    created_at: datetime
    status: str = "creating"  # the provider's status once it has answered
    provider_batch_id: str | None = None
    completed_lines: int = 0
    failed_lines: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    expires_at: datetime | None = None
    ended_at: datetime | None = None
    collected_at: datetime | None = None

    def shown(self) -> dict[str, Any]:
        """What `runner status` shows of an open batch (its JSON under `batches`)."""
        return {
            "id": self.provider_batch_id or f"(being created: {self.id[:10]})",
            "provider": self.provider,
            "status": self.status,
            "lines": self.lines,
            "completed": self.completed_lines,
            "failed": self.failed_lines,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }


@dataclass(frozen=True, slots=True)
class Totals:
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class ProviderAccount:
    """Spend on one provider profile, and the balance it last reported (Venice)."""

    cost_usd: float = 0.0
    balance_usd: float | None = None  # the latest `x-venice-balance-usd` (before a request)
    balance_diem: float | None = None
    balance_after_usd: float | None = None  # the latest x402 `X-Balance-Remaining`
    balance_seen_at: str | None = None  # ISO time of the answer that carried it


@dataclass(frozen=True, slots=True)
class Summary:
    """`runner status` in data form."""

    counts: Mapping[str, int]
    totals: Totals
    last_run: Mapping[str, Any] | None = None
    providers: Mapping[str, ProviderAccount] = field(default_factory=dict)
    # Failed jobs by why they failed (FailureKind values); jobs failed before this was
    # recorded count as "unknown".
    failed_by_kind: Mapping[str, int] = field(default_factory=dict)
    never_run: bool = False  # no database yet: the counts are the manifest's jobs, all pending
    # The runners on this manifest: unfinished runs (live, or silent: no heartbeat for a
    # while, likely gone) and runs found dead whose jobs were taken back. See `fleet_entry`.
    fleet: Sequence[Mapping[str, Any]] = ()
    # Open batches (batch mode): provider id, profile, status, lines and their counts, times.
    batches: Sequence[Mapping[str, Any]] = ()
    duplicates: int = 0  # see Manifest.duplicates


# A runner whose last heartbeat is older than this is shown as silent (likely gone; its
# jobs go to other runners when their leases lapse).
SILENT_AFTER_S = 300.0
DIED = "the process died without finishing"  # runs.stop_reason of a run found dead


def fleet_entry(
    run_id: str,
    host: str,
    pid: int,
    heartbeat_age_s: float,
    jobs_in_hand: int,
    in_flight: Mapping[str, int],
    ended: bool,
) -> dict[str, Any]:
    """One runner as `status` shows it (the same from every store)."""
    state = "reclaimed" if ended else ("silent" if heartbeat_age_s > SILENT_AFTER_S else "live")
    return {
        "run_id": run_id,
        "host": host,
        "pid": pid,
        "state": state,
        "heartbeat_age_s": round(heartbeat_age_s, 1),
        "jobs_in_hand": jobs_in_hand,
        "in_flight": dict(sorted(in_flight.items())),
    }


@dataclass(frozen=True, slots=True)
class ExportRow:
    key: str
    image: str
    mask: str | None
    prompt: str
    provider: str
    model: str
    params: Mapping[str, Any]
    status: str
    attempts: int
    error: str | None
    usage: Totals
    outputs: tuple[str, ...] = field(default_factory=tuple)
    price: Mapping[str, Any] | None = None  # what the job is costed at (see pricing.py)
    balance_usd: float | None = None  # the provider's balance on this job's latest answer
    output_sha256: tuple[str, ...] = ()  # beside `outputs`, in the same order
    request_id: str | None = None  # of the reply its outputs came from


MIN_ELAPSED_S = 1.0  # below this a rate is noise: report 0 jobs/min and no ETA


@dataclass(frozen=True, slots=True)
class Snapshot:
    total: int  # jobs this run works on, including `done_before`
    succeeded: int  # in this run
    failed: int  # in this run
    in_flight: int
    retries_waiting: int  # jobs sleeping before a retry
    spent_usd: float  # cost so far in this run
    estimated_total_usd: float | None  # spent + estimate for what is left; None: unknown
    elapsed_s: float  # since the run started (injected clock)
    paused: str | None = None  # "venice paused 12s (rate limit)", or a stop reason
    done_before: int = 0  # jobs of `total` already finished before this run started

    @property
    def done_in_run(self) -> int:
        return self.succeeded + self.failed

    @property
    def done(self) -> int:
        return self.done_before + self.done_in_run

    @property
    def remaining(self) -> int:
        return max(self.total - self.done, 0)

    @property
    def jobs_per_minute(self) -> float:
        """Jobs finished in this run per minute; 0 while elapsed is under a second."""
        if not self.elapsed_s >= MIN_ELAPSED_S or not math.isfinite(self.elapsed_s):
            return 0.0
        return self.done_in_run * 60.0 / self.elapsed_s

    @property
    def eta_s(self) -> float | None:
        """Seconds until the remaining jobs finish at the current rate; None at rate 0."""
        if self.remaining == 0:
            return 0.0
        rate = self.jobs_per_minute
        return self.remaining * 60.0 / rate if rate > 0 else None


class ProgressReporter(Protocol):
    def start(self, total: int) -> None: ...

    def update(self, snapshot: Snapshot) -> None: ...

    def event(self, level: str, message: str, **fields: Any) -> None:
        """level: "info", "warning" or "error"."""

    def finish(self, snapshot: Snapshot, outcome: str) -> None: ...

    def close(self) -> None:
        """Release the terminal if `finish` was never reached; safe to call twice."""


@dataclass(frozen=True, slots=True)
class ImageLimits:
    formats: frozenset[str]  # Pillow format names accepted for the image
    max_image_bytes: int
    max_mask_bytes: int
    max_prompt_chars: int
    min_pixels: int | None = None  # bounds on width * height
    max_pixels: int | None = None


@dataclass(frozen=True, slots=True)
class ProviderProfile:
    name: str
    dialect: str
    base_url: str
    api_key_env: str | None
    concurrency: int
    requests_per_minute: float | None
    timeout_s: float
    auth: str = "api_key"  # or "x402": Venice wallet sign-in with the key in wallet_key_env
    wallet_key_env: str | None = None
    # Failures (any non-2xx) within 30 s that pause the provider for 30 s; None = no breaker.
    breaker_failures: int | None = None
    max_reply_mb: float = DEFAULT_MAX_REPLY_MB  # largest reply per image asked for
    mode: str = "live"  # or "batch": OpenAI's Batch API, at half price, within 24 h
    batch_max_lines: int = 50_000  # lines per batch (OpenAI's own limit is 50,000)
    batch_window: str = "24h"

    @property
    def batched(self) -> bool:
        return self.mode == "batch"

    @property
    def secret_env(self) -> str | None:
        """The env var this profile's credential is read from."""
        return self.wallet_key_env if self.auth == "x402" else self.api_key_env


@dataclass(frozen=True, slots=True)
class RunLimits:
    """When a run stops taking new jobs (exit 75); flags override the manifest's `limits:`."""

    deadline: str | None = None  # as written: a duration (6h) or a clock time (07:30)
    max_jobs: int | None = None
    max_cost_usd: float | None = None


@dataclass(frozen=True, slots=True)
class Manifest:
    path: Path
    providers: Mapping[str, ProviderProfile]
    jobs: tuple[JobSpec, ...]
    output_dir: OutputPlace
    database: str | None  # as written: a path relative to the manifest, or a URL
    limits: RunLimits = field(default_factory=RunLimits)
    # provider -> model -> price, from the manifest's `pricing:`; built-ins fill the rest.
    pricing: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    # Entries or table rows whose inputs repeat another's exactly: the same job, paid once.
    duplicates: int = 0
