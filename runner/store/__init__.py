"""All of the runner's SQL, and the in-memory twin the engine's unit tests run against.

- `protocol.py`: the `Store` the engine and commands use; `memory.py` its in-memory twin.
- `tables.py`: the schema (SQLAlchemy Core; Alembic's migrations follow it).
- `engine.py`: opening a database (URLs, SQLite settings, migrating to head).
- `connection.py`: SQLite inline on stdlib sqlite3, PostgreSQL through asyncpg.
- `threaded.py`: the store on an event loop and thread of its own.
- `sql.py`: the writes; `hot.py` the per-request statements, built once; `admin.py` the
  administrative ones; `queries.py` the reports; `rows.py` rows to records and back.
- `batching.py`: group commit; `batch_sql.py`: batch mode's own tables.
"""
