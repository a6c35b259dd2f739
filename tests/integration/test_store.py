"""The store against real databases: migrations, claims across processes, leases."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from conftest import Workspace, options
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from runner.records import AttemptRecord, JobSpec, Outcome
from runner.store.engine import database_url, open_store
from runner.store.protocol import RunInfo
from runner.store.sql import SqlStore
from runner.store.tables import metadata
from runner.testing import FakeProvider

ROOT = Path(__file__).resolve().parents[2]


def spec(i: int, provider: str = "p") -> JobSpec:
    return JobSpec(
        key=f"{i:064x}",
        entry=0,
        image=Path(f"/in/{i}.png"),
        mask=None,
        prompt=f"prompt {i}",
        provider=provider,
        model="gpt-image-2",
        params={},
        output_dir=Path("/out"),
        output_name="{stem}-{key8}.{ext}",
    )


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[tuple[SqlStore, Clock]]:
    clock = Clock()
    opened = await open_store(f"sqlite+aiosqlite:///{tmp_path / 's.db'}", clock)
    yield opened, clock
    await opened.close()


# -- migrations ------------------------------------------------------------------------


def alembic(url: str, monkeypatch: pytest.MonkeyPatch, *steps: tuple[str, str]) -> None:
    monkeypatch.setenv("RUNNER_DB", url)
    config = Config(str(ROOT / "alembic.ini"))
    for verb, target in steps:
        getattr(command, verb)(config, target)


def schema_differences(url: str) -> tuple[list[object], set[str]]:
    """Differences between the migrated database and tables.py, and its table names."""
    import anyio

    def compare(connection: Connection) -> tuple[list[object], set[str]]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, metadata), set(inspect(connection).get_table_names())

    async def main() -> tuple[list[object], set[str]]:
        engine = create_async_engine(database_url(url, Path.cwd()))
        async with engine.connect() as connection:
            result = await connection.run_sync(compare)
        await engine.dispose()
        return result

    if database_url(url, Path.cwd()).startswith("sqlite:"):  # the stdlib driver, as the store
        sync_engine = create_engine(database_url(url, Path.cwd()))
        with sync_engine.connect() as connection:
            result = compare(connection)
        sync_engine.dispose()
        return result
    return anyio.run(main)


def check_migrations_round_trip(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    declared = set(metadata.tables) | {"alembic_version"}

    alembic(url, monkeypatch, ("upgrade", "head"))
    assert schema_differences(url) == ([], declared)

    alembic(url, monkeypatch, ("downgrade", "base"))
    assert schema_differences(url)[1] == {"alembic_version"}

    alembic(url, monkeypatch, ("upgrade", "head"))
    assert schema_differences(url) == ([], declared)


def test_sqlite_migrations_upgrade_downgrade_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_migrations_round_trip(str(tmp_path / "m.db"), monkeypatch)


async def test_migrating_to_0008_keeps_each_jobs_price_stored_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "old.db"
    alembic(str(db), monkeypatch, ("upgrade", "0007"))
    token, edit = '{"per_million_tokens": {"image_output": 24.0}}', '{"per_edit_usd": 0.04}'
    with sqlite3.connect(db) as old:
        old.execute(
            "INSERT INTO runs (id, manifest, host, pid, process_tag, started_at, heartbeat_at) "
            "VALUES ('r', '/m.yaml', 'h', 1, 't', '2026-12-01', '2026-12-01')"
        )
        for n, price in enumerate([token, token, edit, None]):
            old.execute(
                "INSERT INTO jobs (key, status, image_path, prompt, provider, model, "
                "params_json, output_dir, output_name, manifest_entry, attempt_floor, "
                "retry_floor, price_json, created_at, updated_at) VALUES (?, 'pending', "
                "'/in.png', 'p', 'x', 'm', '{}', '/out', '{stem}', ?, 0, 0, ?, "
                "'2026-12-01', '2026-12-01')",
                (f"{n:02d}" + "k" * 62, n, price),
            )
            old.execute(
                "INSERT INTO manifest_jobs (manifest, job_key, position) VALUES ('/m.yaml', ?, ?)",
                (f"{n:02d}" + "k" * 62, n),
            )
        old.execute(  # a row pointing at a job: the migration must not copy `jobs` away
            "INSERT INTO attempts (job_key, run_id, provider, model, outcome, counted, "
            "started_at) VALUES (?, 'r', 'x', 'm', 'succeeded', 1, '2026-12-01')",
            ("00" + "k" * 62,),
        )

    store = await open_store(database_url(str(db), tmp_path))  # migrates, as a run does
    try:
        rows = await store.export_rows("/m.yaml")
    finally:
        await store.close()

    assert [row.price for row in rows] == [json.loads(token)] * 2 + [json.loads(edit), None]
    with sqlite3.connect(db) as new:
        assert new.execute("SELECT count(*) FROM prices").fetchone() == (2,)
        assert "price_json" not in {c[1] for c in new.execute("PRAGMA table_info(jobs)")}
        viewed = [r[0] for r in new.execute("SELECT price FROM job_overview ORDER BY job_key")]
        assert viewed == [token, token, edit, None]
        assert new.execute("PRAGMA foreign_key_check").fetchall() == []


# A 0008 database: three jobs, listed by two manifests (one job by both), with attempts and
# an output. Literal SQL that SQLite and PostgreSQL both take.
_AT_0008 = [
    "INSERT INTO runs (id, manifest, host, pid, process_tag, started_at, heartbeat_at) "
    "VALUES ('r', '/one.yaml', 'h', 1, 't', '2026-12-01', '2026-12-01')",
    *(
        "INSERT INTO jobs (key, status, image_path, prompt, provider, model, params_json, "
        "output_dir, output_name, manifest_entry, attempt_floor, retry_floor, created_at, "
        f"updated_at) VALUES ('{key}', 'pending', '/in.png', 'p', 'x', 'm', '{{}}', '{folder}', "
        "'{stem}', 0, 0, 0, '2026-12-01', '2026-12-01')"
        for key, folder in (("a" * 64, "/out"), ("b" * 64, "/out"), ("c" * 64, "/other"))
    ),
    *(
        "INSERT INTO manifest_jobs (manifest, job_key, position) "
        f"VALUES ('{manifest}', '{letter * 64}', {position})"
        for manifest, letter, position in (
            ("/one.yaml", "a", 0), ("/one.yaml", "b", 1), ("/two.yaml", "c", 0),
            ("/two.yaml", "b", 1),
        )
    ),
    *(
        "INSERT INTO attempts (job_key, run_id, provider, model, outcome, counted, started_at) "
        f"VALUES ('{letter * 64}', 'r', 'x', 'm', 'succeeded', true, '2026-12-01')"
        for letter in "ab"
    ),
    "INSERT INTO outputs (job_key, attempt_id, image_index, path, sha256, size_bytes, width, "
    f"height, format) VALUES ('{'a' * 64}', 1, 1, '/out/a.png', 'd', 1, 1, 1, 'PNG')",
]  # fmt: skip
_LINKS_0008 = [
    ("/one.yaml", "a" * 64, 0), ("/one.yaml", "b" * 64, 1),
    ("/two.yaml", "c" * 64, 0), ("/two.yaml", "b" * 64, 1),
]  # fmt: skip


def run_sql(url: str, *statements: str) -> list[tuple[Any, ...]]:
    """The statements' rows (of the last one), on SQLite with foreign keys on, as the runner."""
    if "://" not in url:
        with sqlite3.connect(url) as db:
            db.execute("PRAGMA foreign_keys=ON")
            return [tuple(row) for statement in statements for row in db.execute(statement)]
    import anyio

    async def main() -> list[tuple[Any, ...]]:
        engine = create_async_engine(database_url(url, Path.cwd()))
        rows: list[tuple[Any, ...]] = []
        async with engine.begin() as connection:
            for statement in statements:
                result = await connection.exec_driver_sql(statement)
                rows = [tuple(row) for row in result] if result.returns_rows else []
        await engine.dispose()
        return rows

    return anyio.run(main)


@pytest.mark.parametrize("server", [False, True], ids=["sqlite", "postgresql"])
def test_migrating_to_0010_keeps_every_job_its_folder_and_which_manifests_list_it(
    server: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    import anyio

    url = str(request.getfixturevalue("pg_database") if server else tmp_path / "old.db")
    alembic(url, monkeypatch, ("upgrade", "0008"))
    run_sql(url, *_AT_0008)

    async def migrate_and_read() -> dict[str, list[str]]:
        store = await open_store(database_url(url, tmp_path))  # migrates, as a run does
        try:
            listed = {m: await store.export_rows(m) for m in ("/one.yaml", "/two.yaml")}
            specs = await store.specs_page("/two.yaml", ["pending"], -1, 10)
        finally:
            await store.close()
        folders = {m: [f"{s.key[0]}:{s.output_dir}" for _, s in specs] for m in ["folders"]}
        return {m: [row.key[0] for row in rows] for m, rows in listed.items()} | folders

    assert anyio.run(migrate_and_read) == {
        "/one.yaml": ["a", "b"], "/two.yaml": ["c", "b"], "folders": ["c:/other", "b:/out"]
    }  # fmt: skip
    assert run_sql(url, "SELECT path FROM folders ORDER BY path") == [("/other",), ("/out",)]
    links = run_sql(
        url,
        "SELECT m.path, j.job_key, j.position FROM manifest_jobs j "
        "JOIN manifests m ON m.id = j.manifest_id ORDER BY m.path, j.position",
    )
    assert links == _LINKS_0008
    counts = "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM attempts), " + (
        "(SELECT count(*) FROM outputs)"
    )
    assert run_sql(url, counts) == [(3, 2, 1)]
    viewed = "SELECT job_key, attempts, output_paths FROM job_overview ORDER BY job_key"
    assert [(key[0], n, paths) for key, n, paths in run_sql(url, viewed)] == [
        ("a", 1, "/out/a.png"), ("b", 1, None), ("c", 0, None),
    ]  # fmt: skip
    if not server:
        assert run_sql(url, "PRAGMA foreign_key_check") == []
        (made,) = run_sql(url, "SELECT sql FROM sqlite_master WHERE name = 'manifest_jobs'")
        assert "WITHOUT ROWID" in made[0]
        times = "SELECT typeof(j.created_at), v.created_at FROM jobs j JOIN job_overview v " + (
            "ON v.job_key = j.key LIMIT 1"
        )
        assert run_sql(url, times) == [("integer", "2026-12-01 00:00:00.000000")]

    alembic(url, monkeypatch, ("downgrade", "0008"))
    back = "SELECT manifest, job_key, position FROM manifest_jobs ORDER BY manifest, position"
    assert run_sql(url, back) == _LINKS_0008
    folders = "SELECT substr(key, 1, 1), output_dir FROM jobs ORDER BY key"
    assert run_sql(url, folders) == [("a", "/out"), ("b", "/out"), ("c", "/other")]
    if not server:
        assert run_sql(url, "SELECT DISTINCT created_at FROM jobs") == [
            ("2026-12-01 00:00:00.000000",)
        ]


@pytest.mark.slow  # a PostgreSQL server
def test_postgresql_migrations_upgrade_downgrade_upgrade(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_migrations_round_trip(pg_database, monkeypatch)


async def test_postgresql_store_claims_exactly_the_batch_asked_for(pg_database: str) -> None:
    opened = await open_store(pg_database.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        await opened.sync_manifest("m", [spec(i) for i in range(5)])
        until = datetime.now(UTC) + timedelta(minutes=1)
        first = await opened.claim_many("m", "p", "me", until, 2)
        second = await opened.claim_many("m", "p", "me", until, 2)
        assert [job.spec.key for job in [*first, *second]] == [spec(i).key for i in range(4)]
        states = await opened.job_states("m")
        assert sorted(states.values()) == ["pending"] + ["running"] * 4
    finally:
        await opened.close()


# -- size ----------------------------------------------------------------------------

TABLES_PER_JOB = ("jobs", "manifest_jobs", "manifests")


def bytes_per_job(db: Path, jobs: int) -> dict[str, float]:
    """Each b-tree (table or index) of the tables that grow with the jobs, with the bytes it
    uses per job: its pages less their free space, as SQLite's dbstat counts them."""
    with sqlite3.connect(db) as con:
        try:
            rows = con.execute(
                "SELECT s.name, sum(s.pgsize - s.unused) FROM dbstat s "
                "JOIN sqlite_schema m ON m.name = s.name "
                f"WHERE m.tbl_name IN {TABLES_PER_JOB} GROUP BY s.name"
            ).fetchall()
        except sqlite3.OperationalError as exc:  # a SQLite built without dbstat
            pytest.skip(f"no dbstat: {exc}")
    return {str(name): used / jobs for name, used in rows}


async def test_a_job_synced_from_a_manifest_takes_at_most_600_bytes(fake: FakeProvider) -> None:
    from runner.app import context

    jobs = 300
    # Paths as short as a project's folder may be (the bytes grow with them): pytest's own
    # folder would add some 90 bytes a job, twice its name.
    with tempfile.TemporaryDirectory(prefix="size-") as folder:
        workspace = Workspace(Path(folder), fake.base_url)
        for i in range(jobs):
            workspace.image(f"photos/holiday-{i:03d}.png")
        prompt = "Turn the sky into a warm sunrise, keep the people as they are."
        manifest = workspace.manifest([{"image": "photos/*.png", "prompt": prompt}])
        async with context.opened(await context.parse(manifest), options()) as session:
            assert session.new_jobs == jobs

        used = bytes_per_job(workspace.root / "jobs.db", jobs)
    assert sum(used.values()) <= 600, used


# -- claiming --------------------------------------------------------------------------

CLAIMER = textwrap.dedent(
    """
    import anyio, json, sys
    from datetime import UTC, datetime, timedelta
    from runner.records import FailureKind
    from runner.store.engine import open_store

    async def main(url, owner):
        store = await open_store(url)
        taken = []
        while job := await store.claim("m", "p", owner, datetime.now(UTC) + timedelta(minutes=5)):
            taken.append(job.spec.key)
            await store.fail(job.spec.key, owner, "done", FailureKind.ATTEMPTS)
        await store.close()
        print(json.dumps(taken))

    anyio.run(main, sys.argv[1], sys.argv[2])
    """
)


@pytest.mark.slow  # several processes
def test_several_processes_never_claim_the_same_job(tmp_path: Path) -> None:
    import anyio

    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"

    async def seed() -> None:
        opened = await open_store(url)
        await opened.sync_manifest("m", [spec(i) for i in range(300)])
        await opened.close()

    anyio.run(seed)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, url, f"owner{n}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    results = [process.communicate(timeout=60) for process in processes]
    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr  # no "database is locked"
    taken = [json.loads(stdout) for stdout, _ in results]
    everything = [key for keys in taken for key in keys]
    assert len(everything) == len(set(everything)) == 300
    assert sum(1 for keys in taken if keys) >= 2  # the work really was shared


async def test_claim_many_takes_exactly_the_batch_in_order(store: tuple[SqlStore, Clock]) -> None:
    db, clock = store
    await db.sync_manifest("m", [spec(i) for i in range(5)])
    batch = await db.claim_many("m", "p", "me", clock.now + timedelta(minutes=1), 3)
    assert [job.spec.key for job in batch] == [spec(i).key for i in range(3)]
    assert sorted((await db.job_states("m")).values()) == ["pending"] * 2 + ["running"] * 3


async def test_claim_follows_manifest_order_and_provider(store: tuple[SqlStore, Clock]) -> None:
    db, clock = store
    specs = [spec(i, provider="a" if i % 2 else "b") for i in range(6)]
    await db.sync_manifest("m", specs)
    until = clock.now + timedelta(minutes=1)
    keys = []
    while job := await db.claim("m", "a", "me", until):
        keys.append(job.spec.key)
    assert keys == [specs[1].key, specs[3].key, specs[5].key]
    assert await db.claim("other-manifest", "b", "me", until) is None


async def test_expired_lease_is_claimable_and_its_attempt_abandoned(
    store: tuple[SqlStore, Clock],
) -> None:
    db, clock = store
    await db.sync_manifest("m", [spec(1)])
    await db.start_run(RunInfo("dead", "m", "host", 1, "tag"))
    await db.start_run(RunInfo("alive", "m", "host", 2, "tag"))
    job = await db.claim("m", "p", "dead", clock.now + timedelta(seconds=60))
    assert job is not None
    await db.begin_attempt(job.spec.key, "dead", "p", "gpt-image-2")

    assert await db.claim("m", "p", "alive", clock.now + timedelta(seconds=60)) is None
    assert await db.held_elsewhere("m", "p", "alive") == 1
    clock.now += timedelta(seconds=61)
    again = await db.claim("m", "p", "alive", clock.now + timedelta(seconds=60))

    assert again is not None and again.spec.key == job.spec.key
    assert again.attempts_this_round == 1  # the lost attempt may have been billed: it counts
    rows = await db.export_rows("m")
    assert rows[0].status == "running"


async def test_dead_runs_release_their_jobs_at_once(store: tuple[SqlStore, Clock]) -> None:
    db, clock = store
    await db.sync_manifest("m", [spec(1), spec(2)])
    await db.start_run(RunInfo("crashed", "m", "host", 999_999, "tag"))
    held = await db.claim("m", "p", "crashed", clock.now + timedelta(hours=1))
    assert held is not None
    attempt = await db.begin_attempt(held.spec.key, "crashed", "p", "m")

    assert await db.reclaim_dead_runs(["crashed"]) == 1

    states = await db.job_states("m")
    assert set(states.values()) == {"pending"}
    assert [r.id for r in await db.unfinished_runs("host")] == []
    await db.finish_attempt(attempt, AttemptRecord(outcome=Outcome.SUCCEEDED))  # no crash


async def test_payment_answer_gives_the_attempt_back(store: tuple[SqlStore, Clock]) -> None:
    db, clock = store
    await db.sync_manifest("m", [spec(1)])
    await db.start_run(RunInfo("r", "m", "host", 1, "tag"))
    job = await db.claim("m", "p", "r", clock.now + timedelta(minutes=1))
    assert job is not None
    attempt = await db.begin_attempt(job.spec.key, "r", "p", "m")
    await db.finish_attempt(attempt, AttemptRecord(outcome=Outcome.PAYMENT, counted=False))
    await db.release(job.spec.key, "r")

    (row,) = await db.export_rows("m")
    assert (row.status, row.attempts) == ("pending", 0)


async def test_digest_cache_round_trip(store: tuple[SqlStore, Clock]) -> None:
    from runner.manifest.digests import DigestEntry

    db, _ = store
    entries = [DigestEntry(f"/x/{i}", i, i * 10, f"{i:064x}") for i in range(3)]
    await db.save_digests(entries)
    await db.save_digests([DigestEntry("/x/1", 5, 50, "f" * 64)])
    loaded = await db.digests_for(["/x/0", "/x/1", "/x/2"])
    assert loaded["/x/0"] == entries[0] and loaded["/x/1"].sha256 == "f" * 64


async def test_ending_a_run_releases_what_it_still_holds(store: tuple[SqlStore, Clock]) -> None:
    db, clock = store
    await db.sync_manifest("m", [spec(1), spec(2)])
    await db.start_run(RunInfo("interrupted", "m", "host", 1, "tag"))
    job = await db.claim("m", "p", "interrupted", clock.now + timedelta(hours=1))
    assert job is not None
    await db.begin_attempt(job.spec.key, "interrupted", "p", "m")

    await db.end_run("interrupted", 75, "interrupted")

    assert set((await db.job_states("m")).values()) == {"pending"}
    assert await db.claim("m", "p", "next", clock.now + timedelta(hours=1)) is not None


async def test_concurrent_writes_share_transactions(tmp_path: Path) -> None:
    import anyio
    from sqlalchemy import event

    opened = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")
    begins: list[int] = []
    event.listen(opened._engine.sync_engine, "begin", lambda conn: begins.append(1))
    try:
        await opened.sync_manifest("m", [spec(i) for i in range(40)])
        await opened.start_run(RunInfo("r", "m", "host", 1, "tag"))
        begins.clear()
        until = datetime.now(UTC) + timedelta(minutes=5)
        claimed: list[str] = []

        async def claim_one() -> None:
            job = await opened.claim("m", "p", "r", until)
            assert job is not None
            claimed.append(job.spec.key)

        async with anyio.create_task_group() as group:
            for _ in range(40):
                group.start_soon(claim_one)

        assert sorted(claimed) == sorted(spec(i).key for i in range(40))  # all distinct
        assert len(begins) < 40 / 4  # many claims per transaction
    finally:
        await opened.close()


async def test_a_failing_write_rolls_back_its_whole_batch(store: tuple[SqlStore, Clock]) -> None:
    import anyio

    from runner.errors import WriteFailed
    from runner.store.batching import GroupCommit

    db, _ = store
    commit = GroupCommit(db._engine.begin)
    outcomes: dict[str, object] = {}

    async def create(conn: Any) -> None:
        await conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS scratch (v INTEGER)")

    await commit.run(create)

    async def insert_value(conn: Any) -> str:
        await conn.exec_driver_sql("INSERT INTO scratch VALUES (1)")
        return "inserted"

    async def broken(conn: Any) -> None:
        await conn.exec_driver_sql("INSERT INTO no_such_table VALUES (1)")

    async def attempt(name: str, write: Any) -> None:
        try:
            outcomes[name] = await commit.run(write)
        except Exception as exc:
            outcomes[name] = exc

    await commit._lock.acquire()  # hold the lock so that all three queue into one batch
    async with anyio.create_task_group() as group:
        group.start_soon(attempt, "first", insert_value)
        group.start_soon(attempt, "broken", broken)
        group.start_soon(attempt, "last", insert_value)
        await anyio.wait_all_tasks_blocked()
        commit._lock.release()

    assert isinstance(outcomes["first"], WriteFailed) and isinstance(outcomes["last"], WriteFailed)
    assert not isinstance(outcomes["broken"], WriteFailed)  # its own error, not the batch's

    async def count(conn: Any) -> int:
        return int((await conn.exec_driver_sql("SELECT COUNT(*) FROM scratch")).scalar())

    assert await commit.run(count) == 0


async def test_a_batch_runs_to_its_end_even_if_its_leader_is_cancelled(
    store: tuple[SqlStore, Clock],
) -> None:
    import anyio

    from runner.store.batching import GroupCommit

    db, _ = store
    commit = GroupCommit(db._engine.begin)
    await commit.run(lambda conn: conn.exec_driver_sql("CREATE TABLE scratch (v INTEGER)"))
    started = anyio.Event()

    async def slow(conn: Any) -> None:
        started.set()
        await anyio.sleep(0.05)
        await conn.exec_driver_sql("INSERT INTO scratch VALUES (1)")

    async def quick(conn: Any) -> int:
        await conn.exec_driver_sql("INSERT INTO scratch VALUES (2)")
        return 42

    results: list[int] = []
    leader = anyio.CancelScope()

    async def lead() -> None:
        with leader:
            await commit.run(slow)
        results.append(-1 if leader.cancelled_caught else 0)  # 0: its write was not cut off

    async def follow() -> None:
        results.append(await commit.run(quick))

    async with anyio.create_task_group() as group:
        await commit._lock.acquire()
        group.start_soon(lead)
        await anyio.wait_all_tasks_blocked()
        group.start_soon(follow)
        await anyio.wait_all_tasks_blocked()
        commit._lock.release()  # the leader takes both writes into one batch
        await started.wait()
        leader.cancel()  # mid-batch

    assert leader.cancel_called
    assert sorted(results) == [0, 42]  # the batch finished: both calls returned normally
    rows = await commit.run(lambda conn: conn.exec_driver_sql("SELECT v FROM scratch ORDER BY v"))
    assert [r[0] for r in rows] == [1, 2]  # and the whole batch was committed


def test_schema_head_constant_matches_the_migration_scripts() -> None:
    from alembic.script import ScriptDirectory

    from runner.store.engine import SCHEMA_HEAD, migrations_dir

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_HEAD


def test_a_new_sqlite_database_is_made_as_the_migrations_make_it(tmp_path: Path) -> None:
    # The snapshot a new file is made from is what Alembic's migrations build, DDL for DDL
    # (`python -m runner.store.fresh` writes it again after a new migration).
    import anyio

    from runner.store import fresh
    from runner.store.engine import SCHEMA_HEAD

    migrated = fresh._migrated_dump()
    assert fresh.SNAPSHOT.read_text(encoding="utf-8") == migrated, (
        "runner/store/fresh_sqlite.sql is behind the migrations: "
        "run `.venv/bin/python -m runner.store.fresh`"
    )

    async def made() -> None:
        store = await open_store(f"sqlite:///{tmp_path / 'new.db'}")
        await store.close()

    anyio.run(made)
    with sqlite3.connect(tmp_path / "new.db") as made_db:
        assert fresh.dump(made_db) == migrated
        assert made_db.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (SCHEMA_HEAD,)
        ]
    # Alembic agrees that it is at head: nothing to migrate, nothing the tables lack.
    engine = create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    with engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert context.get_current_revision() == SCHEMA_HEAD
        assert compare_metadata(context, metadata) == []
