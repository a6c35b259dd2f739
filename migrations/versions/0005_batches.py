"""Batch mode (OpenAI's Batch API): the batches sent, which job is in which, and the
input images uploaded once per content digest

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 04:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(200), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("provider_batch_id", sa.String(200), nullable=True),
        sa.Column("input_file_id", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("completed_lines", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("failed_lines", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("output_file_id", sa.String(200), nullable=True),
        sa.Column("error_file_id", sa.String(200), nullable=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("collected_at", sa.DateTime(), nullable=True),
        sa.Column("files_deleted_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_index("ix_batches_provider_collected_at", "batches", ["provider", "collected_at"])
    op.create_table(
        "batch_lines",
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("job_key", sa.String(64), nullable=False),
        sa.Column("estimate_usd", sa.Float(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name=op.f("fk_batch_lines_batch_id_batches")
        ),
        sa.ForeignKeyConstraint(
            ["job_key"], ["jobs.key"], name=op.f("fk_batch_lines_job_key_jobs")
        ),
        sa.PrimaryKeyConstraint("batch_id", "job_key", name=op.f("pk_batch_lines")),
    )
    op.create_index("ix_batch_lines_job_key", "batch_lines", ["job_key"])
    op.create_table(
        "uploads",
        sa.Column("provider", sa.String(200), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("file_id", sa.String(200), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("provider", "sha256", name=op.f("pk_uploads")),
    )


def downgrade() -> None:
    op.drop_table("uploads")
    op.drop_index("ix_batch_lines_job_key", table_name="batch_lines")
    op.drop_table("batch_lines")
    op.drop_index("ix_batches_provider_collected_at", table_name="batches")
    op.drop_table("batches")
