"""The statements every request runs (its attempt, its answer, its success), built once.

Built per call, with the values written in, these statements cost about 0.6 ms of CPU per
job to construct and key for SQLAlchemy's cache, more than SQLite takes to run them. Built
once with bound parameters, each execution finds its compiled form by a memoized key.
Parameter names start with `b_`: SQLAlchemy keeps column names for an UPDATE's SET clause.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, func, insert, select, update

from runner.records import JobState, Outcome
from runner.store import tables as t

_j, _a = t.jobs.c, t.attempts.c
_RUNNING = JobState.RUNNING.value
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
