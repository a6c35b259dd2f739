"""Opening a database: URLs, SQLite's connection settings, migrating to head.

SQLite settings, and why:
- WAL lets readers (`runner status`) work while a run writes.
- Every transaction starts with BEGIN IMMEDIATE: a deferred transaction that later tries
  to write can fail at once with "database is locked" instead of waiting for the lock.
- A long busy timeout makes a second process (an overlapping cron run) wait its turn. A
  connection used on a busy event loop (`waits_on_loop`) has none: SQLite answers "locked"
  at once, and the wait is a sleep on the loop (batching.py), not a blocked loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

from runner.errors import MissingDriver, NewerSchema, StoreError
from runner.manifest.digests import DigestEntry
from runner.store import fresh
from runner.store import tables as t
from runner.store.batching import sqlite_locked
from runner.store.connection import Database, InlineEngine
from runner.store.sql import SqlStore

BUSY_TIMEOUT_MS = 60_000
# PostgreSQL advisory lock key held while a database is migrated ("runner" in ASCII).
MIGRATION_LOCK = 0x72756E6E6572


def database_url(value: str, base: Path) -> str:
    """A path (relative to `base`) or a SQLAlchemy URL → the URL the store opens: SQLite
    through the stdlib driver (connection.py says why), PostgreSQL through asyncpg."""
    if "://" not in value:
        return f"sqlite:///{(base / value).resolve()}"
    scheme, rest = value.split("://", 1)
    drivers = {"sqlite+aiosqlite": "sqlite", "postgresql": "postgresql+asyncpg"}
    return f"{drivers.get(scheme, scheme)}://{rest}"


def migrations_dir() -> Path:
    package = Path(__file__).resolve().parent.parent
    bundled = package / "_migrations"  # inside a wheel
    return bundled if bundled.is_dir() else package.parent / "migrations"


# The newest revision in migrations/versions. Opening a database that is already there skips
# Alembic (loading it and its scripts costs a few hundred ms on every command); a test checks
# that this matches Alembic's own head.
SCHEMA_HEAD = "0010"


def _needs_upgrade(connection: Connection) -> bool:
    """Whether to migrate; NewerSchema when a newer runner made the database (migrating
    "down" to what this runner knows would destroy what the newer one keeps there)."""
    if not inspect(connection).has_table("alembic_version"):
        return True
    current = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    if current == SCHEMA_HEAD:
        return False
    if current is not None and not _known_revision(str(current)):
        raise NewerSchema(
            f"this database was made by a newer runner (schema {current}; this runner knows "
            f"up to {SCHEMA_HEAD}): upgrade the runner, or use another database (--db)"
        )
    return True


def _known_revision(revision: str) -> bool:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory(str(migrations_dir()))
    return any(script.revision == revision for script in scripts.walk_revisions())


def upgrade_to_head(connection: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            f"busy_timeout={busy_timeout_ms}",
            "synchronous=NORMAL",  # durable at each checkpoint; WAL keeps the file consistent
            "foreign_keys=ON",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


# Opening waits this long for another process's hold on a SQLite file (a migration, the
# switch to WAL, a long transaction), between tries of OPEN_PAUSE_S.
OPEN_WAIT_S = BUSY_TIMEOUT_MS / 1000
OPEN_PAUSE_S = 0.05


async def _migrate(engine: Database, is_sqlite: bool) -> None:
    async with engine.begin() as conn:
        if not is_sqlite:
            # Runners started together on a fresh database: one migrates, the others
            # wait here and then find it done. (SQLite: BEGIN IMMEDIATE is the lock.)
            await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        if await conn.run_sync(_needs_upgrade):
            if is_sqlite and await conn.run_sync(fresh.is_empty):
                await conn.run_sync(lambda c: fresh.create(c, SCHEMA_HEAD))  # in one step
            else:
                await conn.run_sync(upgrade_to_head)


async def open_store(
    url: str, clock: Callable[[], datetime] = t.utcnow, *, waits_on_loop: bool = False
) -> SqlStore:
    """Open (creating if needed) and migrate the database at `url`. `waits_on_loop`: the
    store is used on an event loop that must not block (SQLite; see the module's notes)."""
    is_sqlite = url.startswith("sqlite")
    if is_sqlite:
        path = url.split(":///", 1)[1]
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot open database {path}: {exc.strerror or exc}") from exc
    engine: Database
    busy_timeout_ms = 0 if waits_on_loop else BUSY_TIMEOUT_MS
    try:
        if is_sqlite:
            sqlite_engine = create_engine(
                database_url(url, Path.cwd()),  # a sqlite+aiosqlite URL runs on sqlite3 too
                # The store's thread opens it; a test may close it from another.
                connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
                pool_size=1,
                max_overflow=0,
            )
            _configure_sqlite(sqlite_engine, busy_timeout_ms)
            engine = InlineEngine(sqlite_engine)
        else:
            # Only a server needs the asyncio layer (and the ORM it imports: 0.1 s).
            from sqlalchemy.ext.asyncio import create_async_engine

            engine = create_async_engine(url, pool_size=5, max_overflow=10)
    except ImportError as exc:
        extra = "postgres" if url.startswith("postgresql") else None
        hint = f": pip install -e '.[{extra}]'" if extra else ""
        raise MissingDriver(
            f"{redact_url(url)}: the database driver is not installed ({exc.name or exc}){hint}"
        ) from None
    except ArgumentError as exc:
        raise MissingDriver(
            f"{redact_url(url)}: not a database URL the runner knows ({exc})"
        ) from None
    try:
        deadline = time.monotonic() + OPEN_WAIT_S
        while True:
            try:
                await _migrate(engine, is_sqlite)
                break
            except OperationalError as exc:
                # Two runners opening a fresh SQLite file at once: switching it to WAL
                # takes a lock that SQLite refuses at once ("database is locked") rather
                # than waiting out busy_timeout; so does every lock without one. The
                # other one is done in milliseconds.
                if not is_sqlite or not sqlite_locked(exc) or time.monotonic() > deadline:
                    raise
                await engine.dispose()
                await asyncio.sleep(OPEN_PAUSE_S)
    except NewerSchema as exc:
        await engine.dispose()
        raise NewerSchema(f"{redact_url(url)}: {exc}") from None
    except (SQLAlchemyError, OSError) as exc:
        await engine.dispose()
        raise StoreError(f"cannot open database {redact_url(url)}: {exc}") from exc
    lock_wait_s = BUSY_TIMEOUT_MS / 1000 if is_sqlite and waits_on_loop else None
    return SqlStore(engine, clock, lock_wait_s=lock_wait_s)


def redact_url(url: str) -> str:
    """A database URL fit to print: a SQLite file as its path, any password replaced."""
    if url.startswith("sqlite") and ":///" in url:
        return url.split(":///", 1)[1]
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def peek_job_states(url: str, keys: Sequence[str]) -> dict[str, str]:
    """These jobs' states in a SQLite database, read as `peek_output_paths` reads (no
    creating, migrating or locking); empty where there is none yet, or for a server."""
    found: dict[str, str] = {}
    for start in range(0, len(keys), _PEEK_KEYS):
        chunk = keys[start : start + _PEEK_KEYS]
        query = f"SELECT key, status FROM jobs WHERE key IN ({','.join('?' * len(chunk))})"
        found.update({str(key): str(status) for key, status in _peek(url, query, chunk)})
    return found


def peek_digests(url: str, paths: Collection[str]) -> dict[str, DigestEntry]:
    """The digest cache's entries for these paths, read as `peek_job_states` reads."""
    found: dict[str, DigestEntry] = {}
    listed = list(paths)
    for start in range(0, len(listed), _PEEK_KEYS):
        chunk = listed[start : start + _PEEK_KEYS]
        query = (
            "SELECT path, size_bytes, mtime_ns, sha256 FROM file_digests "
            f"WHERE path IN ({','.join('?' * len(chunk))})"
        )
        rows = _peek(url, query, chunk)
        found.update({str(row[0]): DigestEntry(str(row[0]), *row[1:]) for row in rows})
    return found


_PEEK_KEYS = 500  # bound parameters per query, well under SQLite's limit


def peek_output_paths(url: str) -> frozenset[str]:
    """The outputs a SQLite database records, read without creating, migrating or locking
    it (for `validate`, which stores nothing); empty where there is no such file yet, or
    for a database server."""
    return frozenset(str(row[0]) for row in _peek(url, "SELECT DISTINCT path FROM outputs"))


def _peek(url: str, query: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    if not url.startswith("sqlite") or ":///" not in url:
        return []
    path = Path(url.split(":///", 1)[1])
    if not path.is_file():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            return list(db.execute(query, parameters))
    except sqlite3.Error:
        return []  # not a runner database (yet): nothing recorded


def database_exists(url: str) -> bool:
    """False only for a SQLite file that is not there yet (a server is assumed to be)."""
    if not url.startswith("sqlite") or ":///" not in url:
        return True
    return Path(url.split(":///", 1)[1]).exists()
