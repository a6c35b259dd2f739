"""Alembic environment for runner databases.

Two ways in:
- from the runner, which passes its own open connection in `config.attributes`
  (so migrating happens inside the transaction that holds the database lock);
- from the `alembic` command line, with the database from `-x db=...` or RUNNER_DB.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from runner.store.engine import database_url
from runner.store.tables import metadata

config = context.config
target_metadata = metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _cli_url() -> str:
    value = context.get_x_argument(as_dictionary=True).get("db") or os.environ.get("RUNNER_DB")
    if not value:
        raise SystemExit("say which database: alembic -x db=PATH_OR_URL upgrade head")
    return database_url(value, Path.cwd())


async def _run_from_cli(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


def _run_from_cli_sqlite(url: str) -> None:
    """SQLite through the stdlib driver, as the runner opens it (runner/store/connection.py)."""
    engine = create_engine(url)
    with engine.begin() as connection:
        _run(connection)
    engine.dispose()


shared = config.attributes.get("connection")
if shared is not None:
    _run(shared)
else:
    if config.config_file_name is not None:
        # Keep loggers that exist already (the runner's own, when called in-process).
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    if context.is_offline_mode():
        raise SystemExit("offline (--sql) mode is not supported; run against a database")
    url = _cli_url()
    if url.startswith("sqlite:"):
        _run_from_cli_sqlite(url)
    else:
        asyncio.run(_run_from_cli(url))
