"""Blind re-sends counted across runs, why a job failed, suspect usage

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The browsing view of 0002, with why a failed job failed. SQLite rebuilds a table to drop
# a column, which it refuses while a view reads that table: the view is dropped first and
# made again afterwards, in both directions.
_VIEW = """
CREATE VIEW job_overview AS
SELECT
    jobs.key AS job_key,
    jobs.status AS status,{failure_kind}
    jobs.provider AS provider,
    jobs.model AS model,
    jobs.image_path AS image_path,
    jobs.mask_path AS mask_path,
    jobs.prompt AS prompt,
    jobs.error AS error,
    (SELECT count(*) FROM attempts a WHERE a.job_key = jobs.key) AS attempts,
    (SELECT sum(a.input_tokens) FROM attempts a WHERE a.job_key = jobs.key) AS input_tokens,
    (SELECT sum(a.output_tokens) FROM attempts a WHERE a.job_key = jobs.key) AS output_tokens,
    (SELECT sum(a.total_tokens) FROM attempts a WHERE a.job_key = jobs.key) AS total_tokens,
    (SELECT sum(a.cost_usd) FROM attempts a WHERE a.job_key = jobs.key) AS cost_usd,
    (SELECT {concat} FROM outputs o WHERE o.job_key = jobs.key) AS output_paths,
    jobs.price_json AS price,
    jobs.created_at AS created_at,
    jobs.finished_at AS finished_at
FROM jobs
"""


def _create_view(with_failure_kind: bool) -> None:
    dialect = op.get_bind().dialect.name
    concat = "string_agg(o.path, char(10) ORDER BY o.image_index)"
    if dialect == "sqlite":
        concat = "group_concat(o.path, char(10))"
    elif dialect == "postgresql":
        concat = "string_agg(o.path, chr(10) ORDER BY o.image_index)"
    failure_kind = "\n    jobs.failure_kind AS failure_kind," if with_failure_kind else ""
    op.execute(_VIEW.format(concat=concat, failure_kind=failure_kind))


def upgrade() -> None:
    op.execute("DROP VIEW job_overview")
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("retry_floor", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("failure_kind", sa.String(length=16), nullable=True))
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("usage_flag", sa.String(length=200), nullable=True))
    # `runner retry` so far moved attempt_floor only; the new floor starts from there.
    op.execute("UPDATE jobs SET retry_floor = attempt_floor")
    _create_view(with_failure_kind=True)


def downgrade() -> None:
    op.execute("DROP VIEW job_overview")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("usage_flag")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("failure_kind")
        batch.drop_column("retry_floor")
    _create_view(with_failure_kind=False)
