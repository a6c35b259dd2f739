"""Rows to records and back, shared by the store's writers (sql.py, batch_sql.py)."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Table, insert, select

from runner.records import AttemptRecord, JobSpec, OutputRef, output_place
from runner.redact import redact
from runner.store.connection import Conn


def spec_from_row(row: Any) -> JobSpec:
    return JobSpec(
        key=row.key,
        entry=row.manifest_entry,
        image=Path(row.image_path),
        mask=Path(row.mask_path) if row.mask_path else None,
        prompt=row.prompt,
        provider=row.provider,
        model=row.model,
        params=json.loads(row.params_json),
        output_dir=output_place(row.output_dir),
        output_name=row.output_name,
        image_sha256=row.image_sha256,
        mask_sha256=row.mask_sha256,
    )


def usage_columns(record: AttemptRecord) -> dict[str, Any]:
    facts, usage = record.facts, record.usage
    columns: dict[str, Any] = {}
    if facts is not None:
        columns = {
            "balance_usd": facts.balance_usd,
            "balance_diem": facts.balance_diem,
            "balance_after_usd": facts.balance_after_usd,
            "content_violation": facts.content_violation,
            "served_model": redact(facts.served_model),
        }
    if usage is None:
        return columns
    return {
        **columns,
        "input_tokens": usage.input_tokens,
        "input_image_tokens": usage.input_image_tokens,
        "input_text_tokens": usage.input_text_tokens,
        "output_tokens": usage.output_tokens,
        "output_image_tokens": usage.output_image_tokens,
        "total_tokens": usage.total_tokens,
        "usage_json": redact(usage.raw),
        "usage_flag": redact(usage.suspect[:200]) if usage.suspect else None,
    }


def output_rows(
    key: str, attempt_id: int | None, outputs: Sequence[OutputRef]
) -> list[dict[str, Any]]:
    """The `outputs` table's rows for a job's written images."""
    return [
        {
            "job_key": key,
            "attempt_id": attempt_id,
            "image_index": out.index,
            "path": str(out.path),
            "sha256": out.sha256,
            "size_bytes": out.size,
            "width": out.width,
            "height": out.height,
            "format": out.format,
        }
        for out in outputs
    ]


def insert_new(conn: Conn, table: Table) -> Any:
    """An INSERT that skips rows whose key is already there: runners started together on
    one database sync the same manifest at the same moment, and the second must not fail
    with a duplicate key (PostgreSQL runs their transactions side by side)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert(table).on_conflict_do_nothing()
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing()
    return insert(table)


async def ids_for(conn: Conn, table: Table, column: str, values: Collection[str]) -> dict[str, int]:
    """The id of each value's row in a table of distinct values (`prices`, `folders`),
    made where there is none yet. Runners doing this at once (PostgreSQL): the second
    one's rows are skipped, and both read the ids back."""
    wanted = sorted(set(values))
    read = select(table.c[column], table.c.id).where(table.c[column].in_(wanted))
    known = {str(value): int(id_) for value, id_ in await conn.execute(read)}
    missing = [{column: value} for value in wanted if value not in known]
    if missing:
        await conn.execute(insert_new(conn, table), missing)
        known = {str(value): int(id_) for value, id_ in await conn.execute(read)}
    return known
