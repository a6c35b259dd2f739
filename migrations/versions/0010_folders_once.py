"""Each distinct output folder stored once (`folders`), jobs pointing at it
(`jobs.output_folder_id`), instead of the same absolute path on every job row (the
folder's length a job: 20 to 80 bytes)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 12:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _is_sqlite() -> bool:
    return bool(op.get_bind().dialect.name == "sqlite")


def upgrade() -> None:
    op.create_table(
        "folders",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_folders")),
        sa.UniqueConstraint("path", name=op.f("uq_folders_path")),
    )
    if _is_sqlite():
        # Added and dropped in place, as in 0008: a copy of `jobs` would be refused by the
        # foreign keys of attempts, outputs and manifest_jobs on a database with jobs.
        op.execute(
            "ALTER TABLE jobs ADD COLUMN output_folder_id INTEGER "
            "CONSTRAINT fk_jobs_output_folder_id_folders REFERENCES folders (id)"
        )
    else:
        op.add_column("jobs", sa.Column("output_folder_id", sa.Integer(), nullable=True))
        op.create_foreign_key(
            op.f("fk_jobs_output_folder_id_folders"), "jobs", "folders",
            ["output_folder_id"], ["id"],
        )  # fmt: skip
    op.execute("INSERT INTO folders (path) SELECT DISTINCT output_dir FROM jobs ORDER BY 1")
    op.execute(
        "UPDATE jobs SET output_folder_id = "
        "(SELECT id FROM folders WHERE folders.path = jobs.output_dir)"
    )
    _drop_column("jobs", "output_dir")


def downgrade() -> None:
    if _is_sqlite():
        op.execute("ALTER TABLE jobs ADD COLUMN output_dir TEXT NOT NULL DEFAULT ''")
    else:
        op.add_column("jobs", sa.Column("output_dir", sa.Text(), nullable=False, server_default=""))
    op.execute(
        "UPDATE jobs SET output_dir = "
        "(SELECT path FROM folders WHERE folders.id = jobs.output_folder_id)"
    )
    if not _is_sqlite():
        op.alter_column("jobs", "output_dir", server_default=None)
        op.drop_constraint(op.f("fk_jobs_output_folder_id_folders"), "jobs", type_="foreignkey")
    _drop_column("jobs", "output_folder_id")
    op.drop_table("folders")


def _drop_column(table: str, column: str) -> None:
    if _is_sqlite():
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    else:
        op.drop_column(table, column)
