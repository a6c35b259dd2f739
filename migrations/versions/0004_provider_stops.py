"""Fleet-wide provider stops (a 402 or a rejected key seen by one runner stops them all),
an index to count the requests out per provider (a fleet-wide concurrency), each run's
budget reservations (a fleet-wide --max-cost), and a shared pace per provider

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 00:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_stops",
        sa.Column("provider", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("stopped_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("provider", name=op.f("pk_provider_stops")),
    )
    op.create_table(
        "provider_pace",
        sa.Column("provider", sa.String(200), nullable=False),
        sa.Column("next_slot_at", sa.DateTime(), nullable=True),
        sa.Column("slot_run_id", sa.String(64), nullable=True),
        sa.Column("paused_until", sa.DateTime(), nullable=True),
        sa.Column("pause_run_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("provider", name=op.f("pk_provider_pace")),
    )
    op.create_index("ix_attempts_outcome_provider", "attempts", ["outcome", "provider"])
    op.create_index("ix_attempts_run_id", "attempts", ["run_id"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(
            sa.Column("reserved_usd", sa.Float(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("reserved_usd")
    op.drop_index("ix_attempts_run_id", table_name="attempts")
    op.drop_index("ix_attempts_outcome_provider", table_name="attempts")
    op.drop_table("provider_pace")
    op.drop_table("provider_stops")
