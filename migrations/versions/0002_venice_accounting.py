"""Venice accounting, per-job price, model catalogue cache, a browsing view

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# One row per job with its outputs and what its attempts cost, for Datasette or any SQL
# browser. Per-job sums are taken in subqueries so a job with two outputs is not counted twice.
_VIEW = """
CREATE VIEW job_overview AS
SELECT
    jobs.key AS job_key,
    jobs.status AS status,
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


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("price_json", sa.Text(), nullable=True))
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("balance_usd", sa.Float(), nullable=True))
        batch.add_column(sa.Column("balance_diem", sa.Float(), nullable=True))
        batch.add_column(sa.Column("balance_after_usd", sa.Float(), nullable=True))
        batch.add_column(sa.Column("content_violation", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("served_model", sa.String(length=200), nullable=True))
    op.create_table(
        "model_catalogues",
        sa.Column("source_url", sa.Text(), nullable=False),
        sa.Column("fetched_at", sa.DateTime(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("source_url", name=op.f("pk_model_catalogues")),
    )
    dialect = op.get_bind().dialect.name
    concat = "string_agg(o.path, char(10) ORDER BY o.image_index)"
    if dialect == "sqlite":
        concat = "group_concat(o.path, char(10))"
    elif dialect == "postgresql":
        concat = "string_agg(o.path, chr(10) ORDER BY o.image_index)"
    op.execute(_VIEW.format(concat=concat))


def downgrade() -> None:
    op.execute("DROP VIEW job_overview")
    op.drop_table("model_catalogues")
    with op.batch_alter_table("attempts") as batch:
        for name in ("served_model", "content_violation", "balance_after_usd",
                     "balance_diem", "balance_usd"):
            batch.drop_column(name)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("price_json")
