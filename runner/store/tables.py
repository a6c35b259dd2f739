"""The database schema (SQLAlchemy Core). Alembic's migrations are written against this.

Column names are meant to read well in a database browser: no abbreviations.
Times are stored as UTC (on SQLite as integer microseconds since 1970: see UTCDateTime).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class _SQLiteMicroseconds(sqlite.DATETIME):
    """A column declared DATETIME (SQLite's NUMERIC affinity keeps integers as integers)
    whose values go in and out as they are: UTCDateTime converts them. (A subclass of the
    dialect's own type, so SQLAlchemy does not swap it for that one.)"""

    def bind_processor(self, dialect: Dialect) -> None:
        return None

    def result_processor(self, dialect: Dialect, coltype: object) -> None:
        return None


_SQLITE_MICROSECONDS = _SQLiteMicroseconds()  # type: ignore[no-untyped-call]


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, whatever the database keeps. On SQLite
    that is microseconds since 1970 (UTC), an integer: 8 bytes, where SQLAlchemy's text
    takes 26, for each of a job's three or four times and an attempt's two."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return _SQLITE_MICROSECONDS
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | int | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        if dialect.name == "sqlite":
            return (value - _EPOCH) // _MICROSECOND
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return _EPOCH + int(value) * _MICROSECOND
        return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]


jobs = Table(
    "jobs",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("image_path", Text, nullable=False),
    Column("mask_path", Text),
    Column("image_sha256", String(64)),
    Column("mask_sha256", String(64)),
    Column("prompt", Text, nullable=False),
    Column("provider", String(100), nullable=False),
    Column("model", String(200), nullable=False),
    Column("params_json", Text, nullable=False),
    # Where its outputs go: most jobs share a folder, each stored once (`folders`).
    Column("output_folder_id", Integer, ForeignKey("folders.id")),
    Column("output_name", Text, nullable=False),
    Column("manifest_entry", Integer, nullable=False),
    # Attempts with a larger id use up the current attempt budget; `runner retry` (and an
    # outage) move it to the latest attempt, so the job gets a fresh set, history kept.
    Column("attempt_floor", Integer, nullable=False, default=0),
    # Moved by `runner retry` only: requests since then that got no reply in time are
    # counted against the limit on blind re-sends, across runs (an outage does not reset it).
    Column("retry_floor", Integer, nullable=False, default=0),
    Column("failure_kind", String(16)),  # why it failed: a models.FailureKind value
    Column("error", Text),  # last reason, one line; kept after success for the record
    # The price this job is costed at, set when the run that sends it starts: a later price
    # change does not rewrite history. Most jobs share a few prices: each is stored once.
    Column("price_id", Integer, ForeignKey("prices.id")),
    Column("lease_owner", String(64)),
    Column("lease_expires_at", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
)
Index("ix_jobs_provider_status", jobs.c.provider, jobs.c.status)

# An output folder (a path, or an object store URL), once per distinct folder.
folders = Table(
    "folders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("path", Text, nullable=False, unique=True),
)

# A price as JSON (per-million token rates, or per-edit dollars), once per distinct price.
prices = Table(
    "prices",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("body", Text, nullable=False, unique=True),
)

# Each manifest file whose jobs were synced, once: its rows in manifest_jobs carry its number
# instead of its path (which was stored three times per job, with the indexes).
manifests = Table(
    "manifests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("path", Text, nullable=False, unique=True),  # absolute path of the manifest file
)

# Which jobs a manifest lists now, and where. On SQLite a table without rowid: its rows are
# small and its key is composite, so a rowid table would keep them twice (the table and its
# key's index). The key's leading job_key also serves the foreign key's look-ups.
manifest_jobs = Table(
    "manifest_jobs",
    metadata,
    Column("job_key", String(64), ForeignKey("jobs.key"), primary_key=True),
    Column("manifest_id", Integer, ForeignKey("manifests.id"), primary_key=True),
    Column("position", Integer, nullable=False),
    sqlite_with_rowid=False,
)
Index(
    "ix_manifest_jobs_manifest_id_position",
    manifest_jobs.c.manifest_id,
    manifest_jobs.c.position,
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("manifest", Text, nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("process_tag", String(100), nullable=False),  # see procs.process_tag
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime),
    Column("exit_code", Integer),
    Column("stop_reason", Text),
    # Estimates of the jobs this run has started and not yet finished, under --max-cost:
    # what the runners on one database reserve of a shared budget (see `reserve_budget`).
    Column("reserved_usd", Float, nullable=False, server_default="0"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_key", String(64), ForeignKey("jobs.key"), nullable=False),
    Column("run_id", String(64), ForeignKey("runs.id"), nullable=False),
    Column("provider", String(100), nullable=False),
    Column("model", String(200), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("counted", Boolean, nullable=False, default=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("latency_ms", Integer),
    Column("http_status", Integer),
    Column("error_code", String(200)),
    Column("error_message", Text),
    Column("request_id", String(200)),
    Column("input_tokens", BigInteger),
    Column("input_image_tokens", BigInteger),
    Column("input_text_tokens", BigInteger),
    Column("output_tokens", BigInteger),
    Column("output_image_tokens", BigInteger),
    Column("total_tokens", BigInteger),
    Column("usage_json", Text),
    # Why the reported usage cannot be trusted (negative, fractional, absurd); the attempt is
    # then costed at the job's estimate.
    Column("usage_flag", String(200)),
    Column("cost_usd", Float),
    # Venice's account headers (PROVIDERS.md §4.4): balance before the request, and after it
    # for x402 wallets; with requests in parallel these are for drift checks, not per-job cost.
    Column("balance_usd", Float),
    Column("balance_diem", Float),
    Column("balance_after_usd", Float),
    Column("content_violation", Boolean),
    Column("served_model", String(200)),
)
Index("ix_attempts_job_key", attempts.c.job_key)
# Requests out per provider, counted before each request (a fleet-wide concurrency).
Index("ix_attempts_outcome_provider", attempts.c.outcome, attempts.c.provider)
Index("ix_attempts_run_id", attempts.c.run_id)  # a run's spend, for a shared budget

outputs = Table(
    "outputs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_key", String(64), ForeignKey("jobs.key"), nullable=False),
    Column("attempt_id", Integer, ForeignKey("attempts.id"), nullable=False),
    Column("image_index", Integer, nullable=False),
    Column("path", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("format", String(16), nullable=False),
)
Index("ix_outputs_job_key", outputs.c.job_key)

file_digests = Table(
    "file_digests",
    metadata,
    Column("path", Text, primary_key=True),
    Column("size_bytes", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
)


# A provider that answered 402 (payment) or 401/403 (credentials) to any runner: every
# runner on this database checks it before each request (in `begin_attempt`), so one
# runner's 402 stops the fleet. A run started afterwards (after a top-up) clears it.
provider_stops = Table(
    "provider_stops",
    metadata,
    Column("provider", String(200), primary_key=True),
    Column("kind", String(20), nullable=False),  # payment | auth
    Column("message", Text, nullable=False),
    Column("exit_code", Integer, nullable=False),
    Column("run_id", String(64), nullable=False),
    Column("stopped_at", UTCDateTime, nullable=False),
)

# Per provider, the pace every runner on this database keeps together: the next free
# request slot under `requests_per_minute`, and a pause a rate-limit answer asked for. Each
# with the run that set it: that run keeps them with its own gate, the others from here.
provider_pace = Table(
    "provider_pace",
    metadata,
    Column("provider", String(200), primary_key=True),
    Column("next_slot_at", UTCDateTime),
    Column("slot_run_id", String(64)),
    Column("paused_until", UTCDateTime),
    Column("pause_run_id", String(64)),
)

# A provider's model list (Venice `GET /models?type=inpaint`), refreshed when a day old.
model_catalogues = Table(
    "model_catalogues",
    metadata,
    Column("source_url", Text, primary_key=True),
    Column("fetched_at", UTCDateTime, nullable=False),
    Column("body", Text, nullable=False),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


# Batch mode (OpenAI's Batch API). A batch row is written, with its input file's id, before
# `POST /batches`, so that a crash before its answer is recorded leaves enough to find the
# batch at the provider (its metadata carries this row's id) instead of sending the lines
# twice. `provider_batch_id` is NULL until then.
batches = Table(
    "batches",
    metadata,
    Column("id", String(64), primary_key=True),  # ours: the `runner_batch` metadata tag
    Column("provider", String(200), nullable=False),
    Column("manifest", Text, nullable=False),
    Column("provider_batch_id", String(200)),
    Column("input_file_id", String(200), nullable=False),
    # creating | validating | in_progress | finalizing | completed | failed | expired |
    # cancelling | cancelled | lost (never created at the provider)
    Column("status", String(20), nullable=False),
    Column("lines", Integer, nullable=False),
    Column("completed_lines", Integer, nullable=False, server_default="0"),
    Column("failed_lines", Integer, nullable=False, server_default="0"),
    Column("output_file_id", String(200)),
    Column("error_file_id", String(200)),
    Column("run_id", String(64), nullable=False),  # the run that submitted it
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime),
    Column("ended_at", UTCDateTime),
    Column("collected_at", UTCDateTime),  # every line's answer is recorded
    Column("files_deleted_at", UTCDateTime),
)
Index("ix_batches_provider_collected_at", batches.c.provider, batches.c.collected_at)

# Which job is a line of which batch: a job is `submitted` while its batch is open.
batch_lines = Table(
    "batch_lines",
    metadata,
    Column("batch_id", String(64), ForeignKey("batches.id"), primary_key=True),
    Column("job_key", String(64), ForeignKey("jobs.key"), primary_key=True),
    Column("estimate_usd", Float),  # at batch prices: what --max-cost counts until collected
    Column("outcome", String(16)),  # NULL until its answer is recorded (an Outcome value)
)
Index("ix_batch_lines_job_key", batch_lines.c.job_key)

# Input images and masks uploaded to a provider's Files API, once per content digest.
uploads = Table(
    "uploads",
    metadata,
    Column("provider", String(200), primary_key=True),
    Column("sha256", String(64), primary_key=True),
    Column("file_id", String(200), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("uploaded_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime),
)

# The fingerprint of a manifest (its text and its tables' sizes and times) when its jobs
# were last synced: while it matches, `status` reads the database without re-reading them.
manifest_syncs = Table(
    "manifest_syncs",
    metadata,
    Column("manifest", Text, primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("duplicates", Integer, nullable=False),
    Column("synced_at", UTCDateTime, nullable=False),
)
