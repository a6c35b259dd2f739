"""Each manifest's path stored once (`manifests`), its jobs' rows pointing at it by number
(`manifest_jobs.manifest_id`); on SQLite manifest_jobs without rowid, keyed (job_key,
manifest_id), its separate index on job_key gone: ~290 bytes a job down to ~150

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 12:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _is_sqlite() -> bool:
    return bool(op.get_bind().dialect.name == "sqlite")


def upgrade() -> None:
    op.create_table(
        "manifests",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_manifests")),
        sa.UniqueConstraint("path", name=op.f("uq_manifests_path")),
    )
    op.execute(
        "INSERT INTO manifests (path) SELECT DISTINCT manifest FROM manifest_jobs "
        "ORDER BY manifest"
    )
    op.drop_index("ix_manifest_jobs_manifest_position", table_name="manifest_jobs")
    op.drop_index("ix_manifest_jobs_job_key", table_name="manifest_jobs")
    if _is_sqlite():
        _copy_members_by_number()
    else:
        _number_members_in_place()
    op.create_index(
        "ix_manifest_jobs_manifest_id_position", "manifest_jobs", ["manifest_id", "position"]
    )


def _copy_members_by_number() -> None:
    """SQLite makes no table without rowid in place: the rows are copied into a new one.
    Only a table that refers to others is copied, so foreign keys, which the runner
    enforces while it migrates, have nothing to object to."""
    op.rename_table("manifest_jobs", "manifest_jobs_0008")
    op.create_table(
        "manifest_jobs",
        sa.Column("job_key", sa.String(length=64), nullable=False),
        sa.Column("manifest_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_key"], ["jobs.key"], name=op.f("fk_manifest_jobs_job_key_jobs")
        ),
        sa.ForeignKeyConstraint(
            ["manifest_id"], ["manifests.id"], name=op.f("fk_manifest_jobs_manifest_id_manifests")
        ),
        sa.PrimaryKeyConstraint("job_key", "manifest_id", name=op.f("pk_manifest_jobs")),
        sqlite_with_rowid=False,
    )
    op.execute(
        "INSERT INTO manifest_jobs (job_key, manifest_id, position) "
        "SELECT old.job_key, manifests.id, old.position FROM manifest_jobs_0008 old "
        "JOIN manifests ON manifests.path = old.manifest"
    )
    op.drop_table("manifest_jobs_0008")


def _number_members_in_place() -> None:
    op.add_column("manifest_jobs", sa.Column("manifest_id", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE manifest_jobs SET manifest_id = manifests.id FROM manifests "
        "WHERE manifests.path = manifest_jobs.manifest"
    )
    op.alter_column("manifest_jobs", "manifest_id", nullable=False)
    op.drop_constraint(op.f("pk_manifest_jobs"), "manifest_jobs", type_="primary")
    op.drop_column("manifest_jobs", "manifest")
    op.create_primary_key(op.f("pk_manifest_jobs"), "manifest_jobs", ["job_key", "manifest_id"])
    op.create_foreign_key(
        op.f("fk_manifest_jobs_manifest_id_manifests"),
        "manifest_jobs",
        "manifests",
        ["manifest_id"],
        ["id"],
    )


def downgrade() -> None:
    op.drop_index("ix_manifest_jobs_manifest_id_position", table_name="manifest_jobs")
    if _is_sqlite():
        _copy_members_by_path()
    else:
        _name_members_in_place()
    op.create_index("ix_manifest_jobs_job_key", "manifest_jobs", ["job_key"])
    op.create_index(
        "ix_manifest_jobs_manifest_position", "manifest_jobs", ["manifest", "position"]
    )
    op.drop_table("manifests")


def _copy_members_by_path() -> None:
    op.rename_table("manifest_jobs", "manifest_jobs_0009")
    op.create_table(
        "manifest_jobs",
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("job_key", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_key"], ["jobs.key"], name=op.f("fk_manifest_jobs_job_key_jobs")
        ),
        sa.PrimaryKeyConstraint("manifest", "job_key", name=op.f("pk_manifest_jobs")),
    )
    op.execute(
        "INSERT INTO manifest_jobs (manifest, job_key, position) "
        "SELECT manifests.path, new.job_key, new.position FROM manifest_jobs_0009 new "
        "JOIN manifests ON manifests.id = new.manifest_id"
    )
    op.drop_table("manifest_jobs_0009")


def _name_members_in_place() -> None:
    op.add_column("manifest_jobs", sa.Column("manifest", sa.Text(), nullable=True))
    op.execute(
        "UPDATE manifest_jobs SET manifest = manifests.path FROM manifests "
        "WHERE manifests.id = manifest_jobs.manifest_id"
    )
    op.alter_column("manifest_jobs", "manifest", nullable=False)
    op.drop_constraint(op.f("pk_manifest_jobs"), "manifest_jobs", type_="primary")
    op.drop_constraint(
        op.f("fk_manifest_jobs_manifest_id_manifests"), "manifest_jobs", type_="foreignkey"
    )
    op.drop_column("manifest_jobs", "manifest_id")
    op.create_primary_key(op.f("pk_manifest_jobs"), "manifest_jobs", ["manifest", "job_key"])
