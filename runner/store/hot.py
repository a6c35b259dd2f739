"""The statements every request runs (its claim, its attempt, its answer, its success),
built once.

Built per call, with the values written in, these statements cost about 0.6 ms of CPU per
job to construct and key for SQLAlchemy's cache, more than SQLite takes to run them (the
claim alone, with its CTE and correlated counts, about 0.5 ms a call). Built
once with bound parameters, each execution finds its compiled form by a memoized key.
Parameter names start with `b_`: SQLAlchemy keeps column names for an UPDATE's SET clause.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, select, update

from runner.records import JobState, Outcome
from runner.store import queries
from runner.store import tables as t

_j, _a = t.jobs.c, t.attempts.c
_RUNNING, _PENDING = JobState.RUNNING.value, JobState.PENDING.value
_IN_FLIGHT = Outcome.IN_FLIGHT.value

STOPPED = select(t.provider_stops).where(t.provider_stops.c.provider == bindparam("b_provider"))
PACED = select(t.provider_pace).where(t.provider_pace.c.provider == bindparam("b_provider"))


def _out_now(others_only: bool) -> Any:
    """Requests out to `b_provider` from every live runner (`others_only`: but `b_owner`);
    a dead runner's stop counting when its leases lapse."""
    return (
        select(func.count())
        .select_from(t.attempts.join(t.jobs, _j.key == _a.job_key))
        .where(
            _a.provider == bindparam("b_provider"),
            _a.outcome == _IN_FLIGHT,
            *([_a.run_id != bindparam("b_owner")] if others_only else []),
            _j.lease_owner == _a.run_id,
            _j.status == _RUNNING,
            _j.lease_expires_at > bindparam("b_now"),
        )
    )


OUT_NOW = _out_now(others_only=False)
OUT_NOW_OTHERS = _out_now(others_only=True)

_held = (
    _j.key == bindparam("b_key"),
    _j.lease_owner == bindparam("b_owner"),
    _j.status == _RUNNING,
)
# The job is still ours: an UPDATE, not a SELECT, so that it takes the row lock (PostgreSQL) or
# the write lock (SQLite) until the attempt is in. With a lease: one that has not lapsed,
# extended to `b_lease_until`.
# Whether `b_owner` still holds the job (read before its paid reply is written).
HOLDS = select(func.count()).where(*_held)
FENCE = update(t.jobs).where(*_held).values(lease_expires_at=_j.lease_expires_at)
FENCE_LEASED = (
    update(t.jobs)
    .where(*_held, _j.lease_expires_at > bindparam("b_now"))
    .values(lease_expires_at=bindparam("b_lease_until"))
)

NEW_ATTEMPT = insert(t.attempts)
# The attempt's answer: the columns to set come with the parameters.
FINISH_ATTEMPT = update(t.attempts).where(_a.id == bindparam("b_id"))


def _succeed(owned: bool) -> Any:
    """The job succeeds, unless it has already; `owned`: only while `b_owner` holds it."""
    ours = (_j.lease_owner == bindparam("b_owner"), _j.status == _RUNNING) if owned else ()
    return (
        update(t.jobs)
        .where(_j.key == bindparam("b_key"), _j.status != JobState.SUCCEEDED.value, *ours)
        .values(
            status=JobState.SUCCEEDED.value,
            error=bindparam("b_error"),  # a success may still carry a note
            failure_kind=None,
            lease_owner=None,
            lease_expires_at=None,
            finished_at=bindparam("b_now"),
            updated_at=bindparam("b_now"),
        )
    )


SUCCEED = _succeed(owned=True)
SUCCEED_ANY_HOLDER = _succeed(owned=False)
NEW_OUTPUTS = insert(t.outputs)


def _counted_attempts() -> Any:
    """Correlated count of a job's attempts that use up its current budget (a crash's
    abandoned attempt included: it may have been billed)."""
    return (
        select(func.count())
        .where(_a.job_key == t.jobs.c.key, _a.counted.is_(True), _a.id > _j.attempt_floor)
        .scalar_subquery()
    )


def _unanswered_attempts() -> Any:
    """Correlated count of a job's requests that got no reply in time since the last
    `runner retry`, in any run: the blind re-sends it has already had."""
    return (
        select(func.count())
        .where(
            _a.job_key == t.jobs.c.key,
            _a.outcome == Outcome.TIMEOUT.value,
            _a.id > _j.retry_floor,
        )
        .scalar_subquery()
    )


@functools.cache
def claim(expired: bool, bounded: bool) -> Any:
    """Take up to `b_limit` of manifest `b_manifest`'s jobs for provider `b_provider`, in
    manifest order, for `b_owner` until `b_lease_until`: pending ones, or (`expired`) a
    crashed runner's running ones whose lease lapsed before `b_now`; `bounded`: only at
    positions before `b_below` (the part of the manifest synced so far). Returns each job's
    row with what `Job` needs and its position."""
    listed = queries.listed_in(bindparam("b_manifest"))
    takeable = (
        and_(_j.status == _RUNNING, _j.lease_expires_at < bindparam("b_now"))
        if expired
        else _j.status == _PENDING
    )
    position = t.manifest_jobs.c.position
    # A CTE, not `key IN (SELECT ... LIMIT n)`: PostgreSQL may run such a subquery more
    # than once and then update more than n rows; a CTE is run exactly once.
    picked = (
        select(_j.key)
        .join(t.manifest_jobs, t.manifest_jobs.c.job_key == _j.key)
        .where(listed, _j.provider == bindparam("b_provider"), takeable)
        .where(*([position < bindparam("b_below")] if bounded else []))
        .order_by(position)
        .limit(bindparam("b_limit"))
        # PostgreSQL: concurrent claimers skip each other's rows. SQLite ignores this and
        # relies on BEGIN IMMEDIATE, which lets one writer in at a time.
        .with_for_update(skip_locked=True, of=t.jobs)
        .cte("picked")
    )
    return (
        update(t.jobs)
        .where(_j.key == picked.c.key, takeable)
        .values(
            status=_RUNNING,
            lease_owner=bindparam("b_owner"),
            lease_expires_at=bindparam("b_lease_until"),
            updated_at=bindparam("b_now"),
        )
        .returning(
            t.jobs,
            queries.output_dir(),
            _counted_attempts().label("attempts_this_round"),
            _unanswered_attempts().label("unanswered"),
            select(position)
            .where(t.manifest_jobs.c.job_key == _j.key, listed)
            .scalar_subquery()
            .label("position"),
        )
    )
