"""What each manifest looked like when its jobs were last synced: `status` answers from the
database alone while the manifest and its tables are unchanged

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "manifest_syncs",
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("duplicates", sa.Integer(), nullable=False),
        sa.Column("synced_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("manifest", name=op.f("pk_manifest_syncs")),
    )


def downgrade() -> None:
    op.drop_table("manifest_syncs")
