"""Each manifest's path stored once (`manifests`), its jobs' rows pointing at it by number
(`manifest_jobs.manifest_id`); on SQLite manifest_jobs without rowid, keyed (job_key,
manifest_id), its separate index on job_key gone: ~290 bytes a job down to ~150. On SQLite,
times as integer microseconds since 1970 instead of 26 characters of text (18 bytes less
for each: ~36-54 a job, 36 an attempt); job_overview shows them as text still

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


# Every time column (tables.UTCDateTime) as of this revision.
_TIMES = {
    "jobs": ("lease_expires_at", "created_at", "updated_at", "finished_at"),
    "runs": ("started_at", "heartbeat_at", "ended_at"),
    "attempts": ("started_at", "finished_at"),
    "provider_stops": ("stopped_at",),
    "provider_pace": ("next_slot_at", "paused_until"),
    "model_catalogues": ("fetched_at",),
    "batches": ("created_at", "expires_at", "ended_at", "collected_at", "files_deleted_at"),
    "uploads": ("uploaded_at", "expires_at"),
    "manifest_syncs": ("synced_at",),
}
# SQLAlchemy's text, 'YYYY-MM-DD HH:MM:SS.ffffff' (a shorter fraction, or none, allowed),
# to microseconds and back.
_TEXT_TO_MICROSECONDS = (
    "CAST(strftime('%s', {c}) AS INTEGER) * 1000000 "
    "+ CAST(substr({c} || '000000', 21, 6) AS INTEGER)"
)
_MICROSECONDS_TO_TEXT = (
    "strftime('%Y-%m-%d %H:%M:%S', {c} / 1000000, 'unixepoch') || printf('.%06d', {c} % 1000000)"
)

# The browsing view of 0008; on SQLite its times read as text again.
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
    (SELECT group_concat(o.path, char(10)) FROM outputs o WHERE o.job_key = jobs.key)
        AS output_paths,
    (SELECT p.body FROM prices p WHERE p.id = jobs.price_id) AS price,
    {created_at} AS created_at,
    {finished_at} AS finished_at
FROM jobs
"""


def _convert_times(conversion: str, stored_as: str) -> None:
    for table, columns in _TIMES.items():
        for column in columns:
            op.execute(
                f"UPDATE {table} SET {column} = {conversion.format(c=column)} "
                f"WHERE typeof({column}) = '{stored_as}'"
            )


def _recreate_view(times: str) -> None:
    op.execute("DROP VIEW job_overview")
    op.execute(
        _VIEW.format(
            created_at=times.format(c="jobs.created_at"),
            finished_at=times.format(c="jobs.finished_at"),
        )
    )


def upgrade() -> None:
    if _is_sqlite():
        _convert_times(_TEXT_TO_MICROSECONDS, "text")
        _recreate_view(_MICROSECONDS_TO_TEXT)
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
    if _is_sqlite():
        _recreate_view("{c}")
        _convert_times(_MICROSECONDS_TO_TEXT, "integer")


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
