"""Each distinct price stored once (`prices`), jobs pointing at it (`jobs.price_id`), instead
of the same JSON on every job row (~130 bytes a job at 100,000 jobs, more for Venice's)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# The browsing view of 0003, its price read from where it is kept. SQLite refuses to drop a
# column that a view reads: the view goes first and comes back afterwards, both ways.
_VIEW = """
CREATE VIEW job_overview AS
SELECT
    jobs.key AS job_key,
    jobs.status AS status,
    jobs.failure_kind AS failure_kind,
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
    {price} AS price,
    jobs.created_at AS created_at,
    jobs.finished_at AS finished_at
FROM jobs
"""


def _create_view(price: str) -> None:
    concat = "group_concat(o.path, char(10))"
    if op.get_bind().dialect.name == "postgresql":
        concat = "string_agg(o.path, chr(10) ORDER BY o.image_index)"
    op.execute(_VIEW.format(concat=concat, price=price))


def _drop_column(table: str, column: str) -> None:
    # SQLite (3.35+) drops a column in place. Alembic's batch mode would copy the table and
    # drop the old one, which the foreign keys of attempts, outputs and manifest_jobs refuse
    # on a database with jobs in it.
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    else:
        op.drop_column(table, column)


def upgrade() -> None:
    op.execute("DROP VIEW job_overview")
    op.create_table(
        "prices",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prices")),
        sa.UniqueConstraint("body", name=op.f("uq_prices_body")),
    )
    if op.get_bind().dialect.name == "sqlite":
        # A column with a foreign key, added in place (see _drop_column).
        op.execute(
            "ALTER TABLE jobs ADD COLUMN price_id INTEGER "
            "CONSTRAINT fk_jobs_price_id_prices REFERENCES prices (id)"
        )
    else:
        op.add_column("jobs", sa.Column("price_id", sa.Integer(), nullable=True))
        op.create_foreign_key(
            op.f("fk_jobs_price_id_prices"), "jobs", "prices", ["price_id"], ["id"]
        )
    op.execute(
        "INSERT INTO prices (body) SELECT DISTINCT price_json FROM jobs "
        "WHERE price_json IS NOT NULL"
    )
    op.execute(
        "UPDATE jobs SET price_id = (SELECT prices.id FROM prices "
        "WHERE prices.body = jobs.price_json) WHERE price_json IS NOT NULL"
    )
    _drop_column("jobs", "price_json")
    _create_view("(SELECT p.body FROM prices p WHERE p.id = jobs.price_id)")


def downgrade() -> None:
    op.execute("DROP VIEW job_overview")
    op.add_column("jobs", sa.Column("price_json", sa.Text(), nullable=True))
    op.execute(
        "UPDATE jobs SET price_json = (SELECT prices.body FROM prices "
        "WHERE prices.id = jobs.price_id) WHERE price_id IS NOT NULL"
    )
    if op.get_bind().dialect.name == "sqlite":
        # SQLite drops no column with a foreign key in place: the table is copied (as the
        # `alembic` command runs it, without foreign key enforcement).
        with op.batch_alter_table("jobs") as batch:
            batch.drop_column("price_id")
    else:
        op.drop_constraint(op.f("fk_jobs_price_id_prices"), "jobs", type_="foreignkey")
        op.drop_column("jobs", "price_id")
    op.drop_table("prices")
    _create_view("jobs.price_json")
