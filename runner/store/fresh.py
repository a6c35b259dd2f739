"""A new SQLite database made in one step: the schema that Alembic's migrations build, as
they leave it (`fresh_sqlite.sql`, the migrated database's own DDL), instead of loading
Alembic and running every migration in turn. That took 0.45 s of each first run (a quarter
of its start-up, and of every test that opens a new database); this takes a few ms.

The snapshot is checked against a real migration by a test; after adding a migration,
write it again:

    .venv/bin/python -m runner.store.fresh
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from sqlalchemy.engine import Connection

SNAPSHOT = Path(__file__).with_name("fresh_sqlite.sql")
_SEPARATOR = ";\n\n"


def is_empty(connection: Connection) -> bool:
    """No table, view or index at all: a file SQLite has just made."""
    count = connection.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar()
    return not count


def create(connection: Connection, head: str) -> None:
    """The migrated schema, and Alembic's record that it is at `head`."""
    for statement in SNAPSHOT.read_text(encoding="utf-8").split(_SEPARATOR):
        if statement.strip():
            connection.exec_driver_sql(statement)
    connection.exec_driver_sql("INSERT INTO alembic_version (version_num) VALUES (?)", (head,))


def dump(database: sqlite3.Connection) -> str:
    """The DDL of a database as SQLite keeps it: tables, then indexes, views and triggers,
    each in the order it was made (SQLite's own tables and implicit indexes left out)."""
    rows = database.execute(
        "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' "
        "ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 WHEN 'view' THEN 2 "
        "ELSE 3 END, rowid"
    ).fetchall()
    return "".join(sql.strip() + _SEPARATOR for (sql,) in rows)


def _migrated_dump() -> str:
    """Migrate a new in-memory database with Alembic and dump it."""
    from sqlalchemy import create_engine

    from runner.store.engine import upgrade_to_head

    engine = create_engine("sqlite://")
    with engine.begin() as connection:
        upgrade_to_head(connection)
        raw = connection.connection.dbapi_connection
        assert isinstance(raw, sqlite3.Connection)
        return dump(raw)


if __name__ == "__main__":
    SNAPSHOT.write_text(_migrated_dump(), encoding="utf-8")
    print(f"wrote {SNAPSHOT}", file=sys.stderr)
