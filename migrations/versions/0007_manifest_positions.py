"""A manifest's jobs by position: commands page through a long manifest's jobs in order
(`specs_page`) and a chunked sync reads one range of positions at a time

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 07:50:00
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_manifest_jobs_manifest_position", "manifest_jobs", ["manifest", "position"]
    )


def downgrade() -> None:
    op.drop_index("ix_manifest_jobs_manifest_position", table_name="manifest_jobs")
