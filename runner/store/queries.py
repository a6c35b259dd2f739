"""Read-only reports over one manifest's jobs: counts, usage, export rows.

Plain functions over a connection; SqlStore wraps each in a transaction.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BindParameter, and_, case, func, or_, select

from runner.records import (
    DIED,
    ExportRow,
    JobState,
    Outcome,
    ProviderAccount,
    Summary,
    Totals,
    fleet_entry,
)
from runner.store import tables as t
from runner.store.connection import Conn


def listed_in(manifest: str | BindParameter[str]) -> Any:
    """Condition on manifest_jobs: the row is one of this manifest's (none for a manifest
    never synced, whose number is NULL); `manifest` may be a bound parameter."""
    number = select(t.manifests.c.id).where(t.manifests.c.path == manifest).scalar_subquery()
    return t.manifest_jobs.c.manifest_id == number


def in_manifest(manifest: str) -> Any:
    """Condition: the job belongs to this manifest's current job list."""
    return t.jobs.c.key.in_(select(t.manifest_jobs.c.job_key).where(listed_in(manifest)))


def output_dir() -> Any:
    """Correlated: the job's output folder, labelled as `spec_from_row` reads it."""
    f = t.folders.c
    found = select(f.path).where(f.id == t.jobs.c.output_folder_id).scalar_subquery()
    return found.label("output_dir")


def latest_attempt_id() -> Any:
    """Correlated: the id of the job's latest attempt (0 when none), an attempt floor."""
    a = t.attempts.c
    latest = select(func.max(a.id)).where(a.job_key == t.jobs.c.key).scalar_subquery()
    return func.coalesce(latest, 0)


def _usage_by_job(keys: Collection[str] | None = None) -> Any:
    a = t.attempts.c
    query = select(
        a.job_key,
        func.coalesce(func.sum(a.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(a.output_tokens), 0).label("output_tokens"),
        func.coalesce(func.sum(a.total_tokens), 0).label("total_tokens"),
        func.coalesce(func.sum(a.cost_usd), 0.0).label("cost_usd"),
        func.sum(case((a.counted.is_(True), 1), else_=0)).label("attempts"),
    ).group_by(a.job_key)
    return (query if keys is None else query.where(a.job_key.in_(keys))).subquery()


async def members_of(conn: Conn, manifest: str) -> Any | None:
    """The manifest's job keys (a subquery), or None when it lists every job in the
    database: a database beside its manifest, as by default. Then counting needs no look at
    the membership (at 100,000 jobs: 0.03 s, against 0.35 s matching every job to it)."""
    m = t.manifest_jobs.c
    members = select(m.job_key).where(listed_in(manifest))
    listed = await conn.scalar(select(func.count()).select_from(members.subquery()))
    every = await conn.scalar(select(func.count()).select_from(t.jobs))
    return None if listed == every else members  # members are distinct jobs, all in `jobs`


def _of(column: Any, members: Any | None) -> list[Any]:
    """Conditions: `column` (a job key) is one of `members` (None: any job)."""
    return [] if members is None else [column.in_(members)]


async def summary(conn: Conn, manifest: str, now: datetime) -> Summary:
    members = await members_of(conn, manifest)
    counts = {state.value: 0 for state in JobState}
    j = t.jobs.c
    rows = await conn.execute(
        select(j.status, func.count()).where(*_of(j.key, members)).group_by(j.status)
    )
    counts.update({status: int(n) for status, n in rows})
    usage = _usage_by_job()
    total = (
        await conn.execute(
            select(
                func.coalesce(func.sum(usage.c.input_tokens), 0),
                func.coalesce(func.sum(usage.c.output_tokens), 0),
                func.coalesce(func.sum(usage.c.total_tokens), 0),
                func.coalesce(func.sum(usage.c.cost_usd), 0.0),
            ).where(*_of(usage.c.job_key, members))
        )
    ).one()
    last = (
        await conn.execute(
            select(t.runs)
            .where(t.runs.c.manifest == manifest)
            .order_by(t.runs.c.started_at.desc(), t.runs.c.id.desc())  # ties: one answer
            .limit(1)
        )
    ).first()
    totals = Totals(int(total[0]), int(total[1]), int(total[2]), float(total[3]))
    kinds: Sequence[Any] = []
    if counts[JobState.FAILED.value]:  # else a look at every job of the manifest for nothing
        kinds = (
            await conn.execute(
                select(j.failure_kind, func.count())
                .where(*_of(j.key, members), j.status == JobState.FAILED.value)
                .group_by(j.failure_kind)
            )
        ).all()
    return Summary(
        counts,
        totals,
        _run_dict(last) if last else None,
        await _accounts(conn, members),
        {str(kind or "unknown"): int(n) for kind, n in kinds},
        fleet=await _fleet(conn, manifest, now),
    )


# Runs found dead are listed for a day after they were.
_RECLAIMED_SHOWN_FOR = timedelta(days=1)


async def _fleet(conn: Conn, manifest: str, now: datetime) -> list[dict[str, Any]]:
    r = t.runs.c
    runs = (
        await conn.execute(
            select(r.id, r.host, r.pid, r.heartbeat_at, r.ended_at)
            .where(
                r.manifest == manifest,
                or_(
                    r.ended_at.is_(None),
                    and_(r.stop_reason == DIED, r.ended_at > now - _RECLAIMED_SHOWN_FOR),
                ),
            )
            .order_by(r.started_at, r.id)
        )
    ).all()
    if not runs:
        return []
    ids = [run.id for run in runs]
    held = {
        str(owner): int(count)
        for owner, count in await conn.execute(
            select(t.jobs.c.lease_owner, func.count())
            .where(t.jobs.c.lease_owner.in_(ids), t.jobs.c.status == JobState.RUNNING.value)
            .group_by(t.jobs.c.lease_owner)
        )
    }
    a = t.attempts.c
    out: dict[str, dict[str, int]] = {}
    for run_id, provider, count in await conn.execute(
        select(a.run_id, a.provider, func.count())
        .where(a.run_id.in_(ids), a.outcome == Outcome.IN_FLIGHT.value)
        .group_by(a.run_id, a.provider)
    ):
        out.setdefault(run_id, {})[provider] = int(count)
    return [
        fleet_entry(
            run.id,
            run.host,
            run.pid,
            (now - run.heartbeat_at).total_seconds(),
            int(held.get(run.id, 0)),
            out.get(run.id, {}),
            run.ended_at is not None,
        )
        for run in runs
    ]


async def _accounts(conn: Conn, members: Any | None) -> dict[str, ProviderAccount]:
    """Per provider profile: what the manifest's jobs (`members`) cost, and the latest
    balance any answer from it reported (balances are per account, so any manifest's answer
    counts)."""
    a = t.attempts.c
    spend = await conn.execute(
        select(a.provider, func.coalesce(func.sum(a.cost_usd), 0.0))
        .where(*_of(a.job_key, members))
        .group_by(a.provider)
    )
    accounts = {str(provider): ProviderAccount(cost_usd=float(cost)) for provider, cost in spend}
    for provider in list(accounts):
        latest = {}
        for column in (a.balance_usd, a.balance_after_usd):
            row = (
                await conn.execute(
                    select(a.balance_usd, a.balance_diem, a.balance_after_usd, a.finished_at)
                    .where(a.provider == provider, column.is_not(None))
                    .order_by(a.id.desc())
                    .limit(1)
                )
            ).first()
            if row is not None:
                latest[column.name] = row
        before, after = latest.get("balance_usd"), latest.get("balance_after_usd")
        seen = max((r.finished_at for r in (before, after) if r and r.finished_at), default=None)
        accounts[provider] = ProviderAccount(
            cost_usd=accounts[provider].cost_usd,
            balance_usd=before.balance_usd if before else None,
            balance_diem=before.balance_diem if before else None,
            balance_after_usd=after.balance_after_usd if after else None,
            balance_seen_at=seen.isoformat() if seen else None,
        )
    return accounts


async def export_rows(
    conn: Conn,
    manifest: str,
    keys: Collection[str] | None = None,
    positions: tuple[int, int] | None = None,
) -> Sequence[ExportRow]:
    """The manifest's jobs with their results, in manifest order; `keys`: only those (a
    page of a long manifest), found between `positions` (first, last) where given: without
    them the page is found by matching each of the manifest's jobs to the keys (80 ms a
    page at 100,000 jobs, against 2 ms)."""
    within = [] if positions is None else [t.manifest_jobs.c.position.between(*positions)]
    usage = _usage_by_job(keys)
    j, m = t.jobs.c, t.manifest_jobs.c
    a = t.attempts.c
    balance = (
        select(a.balance_usd)
        .where(a.job_key == j.key, a.balance_usd.is_not(None))
        .order_by(a.id.desc())
        .limit(1)
        .scalar_subquery()
        .label("balance_usd")
    )
    request_id = (
        select(a.request_id)
        .where(a.job_key == j.key, a.outcome == Outcome.SUCCEEDED.value)
        .order_by(a.id.desc())
        .limit(1)
        .scalar_subquery()
        .label("success_request_id")
    )
    query = (
        select(*_EXPORTED, usage, balance, request_id, t.prices.c.body, m.position)
        .join(t.manifest_jobs, m.job_key == j.key)
        .outerjoin(usage, usage.c.job_key == j.key)
        .outerjoin(t.prices, t.prices.c.id == j.price_id)
        .where(listed_in(manifest), *within)
        .where(*([j.key.in_(keys)] if keys is not None else []))
    )
    rows: Sequence[Any]
    if keys is not None and positions is None:
        # Found by key and put in manifest order here: ordered by position, the database
        # walks every job of the manifest to find these.
        rows = sorted((await conn.execute(query)).all(), key=lambda row: row[-1])
    else:
        rows = (await conn.execute(query.order_by(m.position))).all()
    paths: dict[str, list[tuple[str, str]]] = {}
    whose = select(m.job_key).where(listed_in(manifest)) if keys is None else keys
    outs = await conn.execute(
        select(t.outputs.c.job_key, t.outputs.c.path, t.outputs.c.sha256)
        .where(t.outputs.c.job_key.in_(whose))
        .order_by(t.outputs.c.job_key, t.outputs.c.id)
    )
    for key, path, digest in outs:
        paths.setdefault(key, []).append((path, digest))
    parsed = _Parsed()
    return [_export_row(row, paths.get(row[0], []), parsed) for row in rows]


async def export_page(
    conn: Conn, manifest: str, states: Collection[str], after: int, limit: int
) -> Sequence[tuple[int, ExportRow]]:
    """(position, row) of up to `limit` of the manifest's jobs in `states` past position
    `after`, in manifest order: a long listing a page at a time (the page found by the
    position index, then its results read for those keys alone)."""
    m = t.manifest_jobs.c
    found = (
        await conn.execute(
            select(m.position, m.job_key)
            .join(t.jobs, t.jobs.c.key == m.job_key)
            .where(listed_in(manifest), m.position > after, t.jobs.c.status.in_(states))
            .order_by(m.position)
            .limit(limit)
        )
    ).all()
    if not found:
        return []
    keys, positions = [k for _, k in found], (found[0][0], found[-1][0])
    rows = {row.key: row for row in await export_rows(conn, manifest, keys, positions)}
    return [(int(position), rows[key]) for position, key in found if key in rows]


async def job_states(conn: Conn, manifest: str) -> Mapping[str, str]:
    rows = await conn.execute(select(t.jobs.c.key, t.jobs.c.status).where(in_manifest(manifest)))
    return {str(key): str(status) for key, status in rows}


async def succeeded_costs(conn: Conn, manifest: str) -> Mapping[str, float]:
    a = t.attempts.c
    rows = await conn.execute(
        select(a.job_key, a.cost_usd).where(
            a.outcome == Outcome.SUCCEEDED.value,
            a.cost_usd.is_not(None),
            a.job_key.in_(select(t.manifest_jobs.c.job_key).where(listed_in(manifest))),
        )
    )
    return {str(key): float(cost) for key, cost in rows}


async def output_paths(conn: Conn) -> frozenset[str]:
    return frozenset((await conn.execute(select(t.outputs.c.path).distinct())).scalars())


def _run_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "started_at": row.started_at.isoformat(),
        "ended_at": row.ended_at.isoformat() if row.ended_at else None,
        "exit_code": row.exit_code,
        "stop_reason": row.stop_reason,
        "host": row.host,
        "pid": row.pid,
        "process_tag": row.process_tag,
    }


# What an export row is made of; not the leases' and times' columns (and their conversions).
_EXPORTED = tuple(
    t.jobs.c[name]
    for name in (
        "key", "image_path", "mask_path", "prompt", "provider", "model", "params_json",
        "status", "error",
    )
)  # fmt: skip


class _Parsed(dict[str, Any]):
    """JSON text -> its value, parsed once: most jobs share a few params and prices (the
    values are read-only mappings in an ExportRow, so rows may share them)."""

    def __missing__(self, text: str) -> Any:
        value = self[text] = json.loads(text)
        return value


def _export_row(row: Any, outputs: list[tuple[str, str]], parsed: _Parsed) -> ExportRow:
    # Unpacked by position (the select's order): a Row's attribute lookups were a third
    # of listing 100,000 jobs.
    (
        key, image, mask, prompt, provider, model, params_json, status, error,
        _usage_key, input_tokens, output_tokens, total_tokens, cost_usd, attempts,
        balance_usd, request_id, price_json, _position,
    ) = row  # fmt: skip
    return ExportRow(
        key=key,
        image=image,
        mask=mask,
        prompt=prompt,
        provider=provider,
        model=model,
        params=parsed[params_json],
        status=status,
        attempts=int(attempts or 0),
        error=error,
        usage=Totals(
            int(input_tokens or 0),
            int(output_tokens or 0),
            int(total_tokens or 0),
            float(cost_usd or 0.0),
        ),
        outputs=tuple(path for path, _ in outputs),
        price=parsed[price_json] if price_json else None,
        balance_usd=balance_usd,
        output_sha256=tuple(digest for _, digest in outputs),
        request_id=request_id,
    )
