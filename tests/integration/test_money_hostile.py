"""Never pay twice: blind re-sends across runs, weather that fails no job, a database that
fills up, a dead run on this host, usage no real reply has (issue 8, items 4, 5, 7, 15, 16)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import COUNTED_ATTEMPTS, Workspace, options
from helpers import FakeClock
from sqlalchemy import Engine, event

import runner.testing.openai_http
from runner import app
from runner.errors import ExitCode
from runner.files import procs
from runner.records import RunLimits
from runner.settings import RetrySettings, RunSettings
from runner.store.engine import open_store
from runner.store.protocol import RunInfo
from runner.store.sql import SqlStore
from runner.testing import FakeProvider


def paid_once(fake: FakeProvider) -> bool:
    return set(fake.paid.values()) == {1}


# --- item 4: blind re-sends counted across runs --------------------------------------------


@pytest.mark.slow  # real read timeouts
async def test_a_provider_slower_than_the_timeout_is_paid_twice_at_most_ever(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"s{i}.png"), "prompt": f"e{i}"} for i in range(3)]
    manifest = workspace.manifest(jobs, profile={"timeout_s": 0.3})
    fake.script = ["slow"] * 30

    first = await app.run(manifest, options())
    second = await app.run(manifest, options())

    assert fake.requests_total == 6  # one send and one re-send per job, over both runs
    assert first.exit_code == second.exit_code == ExitCode.FAILED
    assert second.summary.failed_by_kind == {"unanswered": 3}
    reasons = {
        row.error for row in await app.jobs(manifest, app.Options(), app.JobFilter(state="failed"))
    }
    assert len(reasons) == 1 and "`runner retry`" in (reasons.pop() or "")

    assert await app.retry(manifest, app.Options()) == 3
    fake.script = []
    third = await app.run(manifest, options())
    assert third.exit_code == ExitCode.OK  # asked for, it is sent again
    assert fake.requests_total == 9


async def test_an_earlier_runs_timeout_counts_against_the_limit(
    workspace: Workspace, fake: FakeProvider
) -> None:
    manifest = workspace.manifest(
        [{"image": workspace.image("p.png"), "prompt": "x"}], profile={"timeout_s": 0.3}
    )
    await app.jobs(manifest, app.Options())  # queues the job
    db = workspace.db()
    (key,) = db.execute("SELECT key FROM jobs").fetchone()
    db.execute(
        "INSERT INTO runs (id, manifest, host, pid, process_tag, started_at, heartbeat_at, "
        "ended_at) VALUES ('old', 'm', 'h', 1, 't', 1, 1, 1)"  # SQLite times: microseconds
    )
    db.execute(
        "INSERT INTO attempts (job_key, run_id, provider, model, outcome, counted, started_at) "
        "VALUES (?, 'old', 'fake', 'gpt-image-2', 'timeout', 1, 1)",
        (key,),
    )
    db.commit()
    fake.script = ["slow", "slow"]

    outcome = await app.run(manifest, options())

    assert fake.requests_total == 1  # the one re-send left, not two
    assert outcome.summary.failed_by_kind == {"unanswered": 1}


# --- item 5: weather never fails a job -----------------------------------------------------


async def test_rate_limits_use_no_attempts(workspace: Workspace, fake: FakeProvider) -> None:
    manifest = workspace.manifest([{"image": workspace.image("p.png"), "prompt": "x"}])
    fake.script = ["rate_limit", "overloaded"] * 4

    clock = FakeClock()
    outcome = await app.run(manifest, options(clock, max_attempts=2))

    assert outcome.exit_code == ExitCode.OK
    assert fake.requests_total == 9
    (counted,) = workspace.db().execute(f"SELECT {COUNTED_ATTEMPTS} FROM jobs").fetchone()
    assert counted == 1
    outcomes = [r[0] for r in workspace.db().execute("SELECT outcome FROM attempts ORDER BY id")]
    assert outcomes == ["throttled"] * 8 + ["succeeded"]
    assert clock.sleeps and max(clock.sleeps) > 0  # the provider was paced, not hammered


async def test_a_provider_that_only_throttles_ends_the_run_with_75(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"t{i}.png"), "prompt": f"e{i}"} for i in range(3)]
    manifest = workspace.manifest(jobs)
    fake.script = ["rate_limit"] * 500

    outcome = await app.run(manifest, options())

    assert outcome.exit_code == ExitCode.EARLY
    assert outcome.summary.counts["pending"] == 3 and outcome.summary.counts["failed"] == 0
    (notice,) = outcome.stops
    assert notice.kind == "outage" and "Rate limit" in notice.message
    assert 25 <= fake.requests_total <= 30  # the provider's streak, not 3 x 50 job tries


async def test_nothing_listening_uses_no_attempts(workspace: Workspace) -> None:
    import socket

    with socket.socket() as probe:  # a port that is certainly closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    manifest = workspace.manifest(
        [{"image": workspace.image("p.png"), "prompt": "x"}],
        profile={"base_url": f"http://127.0.0.1:{port}/v1"},
    )

    outcome = await app.run(manifest, options(max_attempts=2))

    assert outcome.exit_code == ExitCode.EARLY
    rows = workspace.db().execute("SELECT outcome, counted FROM attempts ORDER BY id").fetchall()
    assert len(rows) >= 25 and {tuple(r) for r in rows} == {("not_sent", 0)}


FAULT_MIX = {
    "rate_limit": 0.30,
    "server_error": 0.10,
    "reset": 0.05,
    "truncate": 0.05,
    "empty_200": 0.05,
}


@pytest.mark.slow  # 120 jobs through the storm, end to end
async def test_the_fault_storm_fails_no_job(workspace: Workspace) -> None:
    # Issue 8's mix: 30 % 429s, 10 % 500s, 5 % resets, 5 % truncated, 5 % empty replies.
    # A job fails 5 counted attempts in a row with a chance of (25/70)^5 = 0.6 %: without
    # telling weather from a job's own trouble, one job in 170 would fail.
    jobs = [{"image": workspace.image(f"w{i}.png"), "prompt": f"e{i}"} for i in range(120)]
    manifest = workspace.manifest(jobs, profile={"concurrency": 4})
    with FakeProvider(api_key=os.environ["RUNNER_TEST_KEY"], fault_mix=FAULT_MIX, seed=8) as fake:
        text = manifest.read_text().replace(workspace.base_url, fake.base_url)
        manifest.write_text(text)

        outcome = await app.run(manifest, options())

        assert outcome.exit_code == ExitCode.OK
        assert outcome.summary.counts["succeeded"] == 120
        assert paid_once(fake) and len(fake.paid) == 120


# --- item 7: the database's disk fills ------------------------------------------------------


@contextmanager
def database_capped_after_start(
    monkeypatch: pytest.MonkeyPatch, spare_pages: int
) -> Iterator[None]:
    """Real SQLite 'database or disk is full' once the run has started: from then on,
    each of the run's connections may grow the file by only `spare_pages` more pages
    (the limit is a connection's own setting: it is set at each transaction's start)."""
    original = SqlStore.start_run
    cap: dict[str, int] = {}

    async def start_run(self: SqlStore, run: RunInfo) -> None:
        await original(self, run)

        async def size(conn: Any) -> None:
            pages = (await conn.exec_driver_sql("PRAGMA page_count")).scalar()
            cap["pages"] = pages + spare_pages

        await self._db.run(size)

    def capped(connection: Any) -> None:
        if "pages" in cap:
            connection.exec_driver_sql(f"PRAGMA max_page_count = {cap['pages']}")

    monkeypatch.setattr(SqlStore, "start_run", start_run)
    event.listen(Engine, "begin", capped)
    try:
        yield
    finally:
        event.remove(Engine, "begin", capped)
        monkeypatch.setattr(SqlStore, "start_run", original)


async def test_a_full_database_stops_sending_and_nothing_is_paid_twice(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = [{"image": workspace.image(f"d{i}.png"), "prompt": f"e{i} " * 40} for i in range(40)]
    manifest = workspace.manifest(jobs, profile={"concurrency": 4})
    with database_capped_after_start(monkeypatch, spare_pages=2):
        first = await app.run(manifest, options())

    assert first.exit_code == ExitCode.EARLY  # no traceback: a clean stop
    assert any(stop.kind == "database" for stop in first.stops)
    sent_first = fake.requests_total
    assert 0 < sent_first < 40  # it stopped sending once a write failed

    # Space freed (the next run's connections are new).
    later = datetime.now(UTC) + timedelta(minutes=10)  # past the first run's leases
    second = await app.run(manifest, app.Options(clock=FakeClock(), wall_clock=lambda: later))

    assert second.exit_code == ExitCode.OK
    assert paid_once(fake) and len(fake.paid) == 40  # every paid reply recorded, none re-sent
    files = sorted((workspace.root / "out").glob("*.png"))
    recorded = [Path(r[0]) for r in workspace.db().execute("SELECT path FROM outputs")]
    assert sorted(recorded) == files and len(files) == 40
    assert not list((workspace.root / "out" / ".runner-unrecorded").glob("*"))


async def test_paid_replies_the_database_refused_are_recorded_by_the_next_command(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = [{"image": workspace.image(f"r{i}.png"), "prompt": f"e{i}"} for i in range(4)]
    manifest = workspace.manifest(jobs, profile={"concurrency": 1})
    original = SqlStore.complete
    completed = 0

    async def complete(self: SqlStore, *args: Any, **kwargs: Any) -> bool:
        nonlocal completed
        completed += 1
        if completed > 1:
            raise runner.errors.StoreError("database error: OperationalError: disk is full")
        return await original(self, *args, **kwargs)

    import runner.errors

    monkeypatch.setattr(SqlStore, "complete", complete)
    first = await app.run(manifest, options())
    monkeypatch.setattr(SqlStore, "complete", original)

    assert first.exit_code == ExitCode.EARLY
    sent = fake.requests_total
    assert 2 <= sent <= 3  # the second reply met the failure; at most one more was out
    kept = list((workspace.root / "out" / ".runner-unrecorded").glob("*.jsonl"))
    assert len(kept) == 1

    summary = await app.status(manifest, app.Options())  # any command records it
    assert summary.counts["succeeded"] == sent  # every paid reply, none lost
    assert not kept[0].exists()
    later = datetime.now(UTC) + timedelta(minutes=10)
    second = await app.run(manifest, app.Options(clock=FakeClock(), wall_clock=lambda: later))
    assert second.exit_code == ExitCode.OK and paid_once(fake) and fake.requests_total == 4


async def test_too_little_space_where_the_database_lives_stops_before_paying(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_folder = workspace.root / "state"
    real = shutil.disk_usage

    def usage(folder: Any) -> Any:
        if Path(folder) == db_folder:
            return real(folder)._replace(free=10 * 2**20)
        return real(folder)

    monkeypatch.setattr(shutil, "disk_usage", usage)
    manifest = workspace.manifest(
        [{"image": workspace.image("p.png"), "prompt": "x"}], database="state/jobs.db"
    )

    outcome = await app.run(manifest, options())

    assert outcome.exit_code == ExitCode.EARLY
    assert fake.requests_total == 0
    assert (
        "database folder" in outcome.stops[0].message and str(db_folder) in outcome.stops[0].message
    )
    assert outcome.summary.counts["pending"] == 1


# --- item 15: a dead run on this host, overlapping this one --------------------------------


@pytest.mark.slow  # another process
async def test_a_run_that_dies_on_this_host_gives_its_jobs_back_at_once(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"h{i}.png"), "prompt": f"e{i}"} for i in range(4)]
    manifest = workspace.manifest(jobs, profile={"concurrency": 1})
    await app.jobs(manifest, app.Options())  # queues the jobs
    other = subprocess.Popen(["sleep", "60"])  # stands in for another runner's process
    try:
        store = await open_store(f"sqlite+aiosqlite:///{workspace.root / 'jobs.db'}")
        run = RunInfo("other", str(manifest), procs.hostname(), other.pid,
                      procs.process_tag(other.pid))  # fmt: skip
        await store.start_run(run)
        lease = datetime.now(UTC) + timedelta(minutes=2)
        held = await store.claim_many(str(manifest), "fake", "other", lease, 2)
        await store.close()
        assert len(held) == 2
        fake.latency = 0.2  # the other run dies while this one works on its own jobs

        async def kill_soon() -> None:
            import anyio

            await anyio.sleep(0.1)
            other.kill()
            other.wait()

        import anyio

        settings = RunSettings(retry=RetrySettings(), poll_s=0.05)
        async with anyio.create_task_group() as group:
            group.start_soon(kill_soon)
            with anyio.fail_after(30):  # far less than the 2-minute lease
                outcome = await app.run(manifest, app.Options(settings=settings))
    finally:
        other.kill()
        other.wait()

    assert outcome.exit_code == ExitCode.OK
    assert outcome.summary.counts["succeeded"] == 4 and paid_once(fake)


# --- item 16: usage no real reply has -------------------------------------------------------


async def test_absurd_usage_is_flagged_and_costed_at_the_estimate(
    workspace: Workspace,
    fake: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    honest = runner.testing.openai_http.usage_of

    def negative(prompt: str, has_mask: bool, n: int) -> dict[str, Any]:
        usage = honest(prompt, has_mask, n)
        usage["output_tokens"] = -1_000_000_000
        return usage

    monkeypatch.setattr(runner.testing.openai_http, "usage_of", negative)
    jobs = [{"image": workspace.image(f"u{i}.png"), "prompt": f"e{i}"} for i in range(6)]
    pricing = {"fake": {"gpt-image-2": {"text_input": 1, "image_input": 1, "image_output": 1}}}
    manifest = workspace.manifest(
        jobs, profile={"concurrency": 1}, pricing=pricing,
        defaults={"params": {"quality": "medium"}},
    )  # fmt: skip
    budget = 0.0019 * 2.5  # about two jobs' estimates
    caplog.set_level(logging.WARNING, "runner")

    outcome = await app.run(
        manifest, app.Options(clock=FakeClock(), limits=RunLimits(max_cost_usd=budget))
    )

    assert outcome.exit_code == ExitCode.EARLY  # the budget still holds
    assert 1 <= fake.requests_total <= 3
    assert 0 < outcome.summary.totals.cost_usd <= budget
    rows = workspace.db().execute(
        "SELECT usage_flag, cost_usd, output_tokens FROM attempts ORDER BY id"
    )
    for flag, cost, output_tokens in rows:
        assert "output_tokens is negative" in flag
        assert cost == pytest.approx(0.0019, rel=0.1) and output_tokens is None
    assert any("jobs[0]" in r.getMessage() and "costed at its estimate" in r.getMessage()
               for r in caplog.records)  # fmt: skip


# --- item 7 on a real small disk (root only: it mounts a tmpfs) ------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 512 KB tmpfs, for the database, remountable larger; skips where mount is not allowed."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(folder)],
        capture_output=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill_disk_when(disk: Path, ready: Callable[[], bool]) -> threading.Thread:
    """A thread that, once `ready()`, writes a file until `disk` is full."""

    def fill() -> None:
        deadline = time.monotonic() + 60
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.002)
        try:
            with (disk / "filler").open("wb") as stream:
                while True:
                    stream.write(b"\0" * 65536)
                    stream.flush()
        except OSError:
            pass  # full (the write, or the close that flushes what is left): what it was for

    thread = threading.Thread(target=fill, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
async def test_a_database_on_a_small_disk_stops_before_paying(
    workspace: Workspace, fake: FakeProvider, small_disk: Path
) -> None:
    manifest = workspace.manifest(
        [{"image": workspace.image("p.png"), "prompt": "x"}], database=f"{small_disk}/jobs.db"
    )

    outcome = await app.run(manifest, options())  # default: 200 MB must be free there

    assert outcome.exit_code == ExitCode.EARLY and fake.requests_total == 0
    assert str(small_disk) in outcome.stops[0].message


@pytest.mark.slow
async def test_a_database_disk_that_fills_loses_no_paid_reply(
    workspace: Workspace, fake: FakeProvider, small_disk: Path
) -> None:
    jobs = [{"image": workspace.image(f"f{i}.png"), "prompt": f"e{i} " * 200} for i in range(60)]
    manifest = workspace.manifest(
        jobs, profile={"concurrency": 4}, database=f"{small_disk}/jobs.db"
    )
    no_floor = app.Options(clock=FakeClock(), settings=RunSettings(min_free_bytes=0))
    # Room for the schema and the sync, then the disk fills once a few requests are out
    # (at a fixed moment, whatever the schema's size or SQLite's WAL growth).
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    filler = fill_disk_when(small_disk, lambda: fake.requests_total >= 3)

    first = await app.run(manifest, no_floor)

    assert first.exit_code == ExitCode.EARLY
    assert 3 <= fake.requests_total < 60
    filler.join(timeout=10)
    (small_disk / "filler").unlink()  # space again
    later = datetime.now(UTC) + timedelta(minutes=10)  # past the first run's leases
    second = await app.run(
        manifest,
        app.Options(clock=FakeClock(), wall_clock=lambda: later, settings=no_floor.settings),
    )
    assert second.exit_code == ExitCode.OK
    assert paid_once(fake) and len(fake.paid) == 60


# --- item 17: a 200 cut short was billed all the same --------------------------------------


async def test_a_truncated_200_is_recorded_as_paid(
    workspace: Workspace, fake: FakeProvider
) -> None:
    manifest = workspace.manifest([{"image": workspace.image("p.png"), "prompt": "x"}])
    fake.script = ["truncate"]

    outcome = await app.run(manifest, options())

    assert outcome.exit_code == ExitCode.OK
    rows = workspace.db().execute("SELECT outcome, http_status, cost_usd FROM attempts ORDER BY id")
    (cut, whole) = rows.fetchall()
    assert cut[0] == "retryable" and cut[1] == 200
    assert cut[2] is not None and cut[2] > 0  # costed at the job's estimate: no usage arrived
    assert outcome.summary.totals.cost_usd == pytest.approx(cut[2] + whole[2])
