"""Several `runner run` processes on one PostgreSQL database (issue 16): started at the same
moment on a fresh database, they migrate once, enqueue the manifest once, split the jobs and
pay for each once. Skips where no PostgreSQL server answers."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path

import pytest
from conftest import API_KEY, KEY_ENV, S3Bucket, Workspace

from runner.testing import FakeProvider

pytestmark = pytest.mark.slow


def start(manifest: Path, db: str, folder: Path, *flags: str) -> subprocess.Popen[str]:
    """A runner in a working folder of its own, sharing only the database URL."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(manifest), "--db", db,
         "--log-format", "plain", *flags],
        env={**os.environ, KEY_ENV: API_KEY, "RUNNER_DB": ""}, cwd=folder,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_three_runners_started_at_once_on_a_fresh_database_share_the_work(
    workspace: Workspace, fake: FakeProvider, pg_database: str
) -> None:
    jobs = [{"image": workspace.image(f"f{i}.png"), "prompt": f"edit {i}"} for i in range(12)]
    manifest = workspace.manifest(jobs, profile={"concurrency": 2})
    fake.latency = 1.0

    runners = [start(manifest, pg_database, workspace.root / f"host{i}") for i in range(3)]
    seen: list[dict[str, object]] = []

    def three_at_work() -> bool:  # `status --json` lists each runner with its requests out
        status = subprocess.run(
            [sys.executable, "-m", "runner", "status", str(manifest), "--db", pg_database,
             "--json"], capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if status.returncode == 0:
            seen[:] = json.loads(status.stdout)["fleet"]
        live = [r for r in seen if r["state"] == "live"]
        out = sum(sum(r["in_flight"].values()) for r in live)  # type: ignore[attr-defined]
        return len(live) == 3 and out > 0

    wait_for(three_at_work, timeout=60)
    assert {r["pid"] for r in seen} == {r.pid for r in runners}
    results = [(r.wait(timeout=120), *r.communicate()) for r in runners]

    for code, _, stderr in results:
        assert code == 0, stderr
        assert "Traceback" not in stderr and "IntegrityError" not in stderr
    assert len(fake.paid) == 12 and set(fake.paid.values()) == {1}  # each job paid once
    assert fake.in_flight_peak <= 2  # the profile's concurrency, for the fleet as a whole
    assert len(list((workspace.root / "out").glob("*.png"))) == 12
    status = subprocess.run(
        [sys.executable, "-m", "runner", "status", str(manifest), "--db", pg_database, "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert '"succeeded": 12' in status.stdout


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_runner_paused_past_its_lease_records_nothing_over_the_new_holder(
    workspace: Workspace, fake: FakeProvider, request: pytest.FixtureRequest, database: str
) -> None:
    db = request.getfixturevalue("pg_database") if database == "postgresql" else "jobs.db"
    db = db if database == "postgresql" else str(workspace.root / db)
    jobs = [{"image": workspace.image(f"z{i}.png"), "prompt": f"edit {i}"} for i in range(6)]
    manifest = workspace.manifest(jobs, profile={"concurrency": 2})
    fake.latency = 1.0
    paused = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(manifest), "--db", db, "--lease", "2",
         "--log-format", "plain"],
        env={**os.environ, KEY_ENV: API_KEY, "RUNNER_DB": ""},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: sum(fake.received.values()) >= 2)  # its two requests are out
        paused.send_signal(signal.SIGSTOP)  # a laptop lid closes
        time.sleep(2.5)  # past its lease
        other = start(manifest, db, workspace.root / "other")
        _, other_errors = other.communicate(timeout=120)
        assert other.returncode == 0, other_errors
    finally:
        paused.send_signal(signal.SIGCONT)  # the lid opens: its replies are waiting
    _, stderr = paused.communicate(timeout=60)

    assert paused.returncode in (0, 75), stderr
    assert "another runner holds this job" in stderr
    status = subprocess.run(
        [sys.executable, "-m", "runner", "export", str(manifest), "--db", db],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rows = [json.loads(line) for line in status.stdout.splitlines()]
    assert [row["status"] for row in rows] == ["succeeded"] * 6
    assert all(len(row["outputs"]) == 1 for row in rows)  # one result each, the holder's
    recorded = {Path(row["outputs"][0]).name for row in rows}
    on_disk = {p.name for p in (workspace.root / "out").glob("*.png")}
    lost = on_disk - recorded
    assert recorded <= on_disk and len(lost) == 2 and all(".lost-" in n for n in lost)
    assert sorted(fake.paid.values()) == [1, 1, 1, 1, 2, 2]  # only the two that were out


def test_a_402_to_one_runner_stops_all_three_and_a_run_after_top_up_finishes(
    workspace: Workspace, fake: FakeProvider, pg_database: str
) -> None:
    jobs = [{"image": workspace.image(f"p{i}.png"), "prompt": f"edit {i}"} for i in range(30)]
    manifest = workspace.manifest(jobs, profile={"concurrency": 2})
    fake.latency = 0.2
    # One 402, to one runner's request; had the others not been told, they would have gone
    # on to finish every other job.
    fake.script = [None] * 4 + ["payment"]

    runners = [start(manifest, pg_database, workspace.root / f"h{i}") for i in range(3)]
    results = [(r.wait(timeout=120), *r.communicate()) for r in runners]

    for code, _, stderr in results:
        assert code == 3, stderr  # every runner stopped for the payment, not only one
    assert sum("stopped by another runner" in stderr for _, _, stderr in results) >= 1
    assert fake.status_counts[402] == 1
    # After the 402 no runner sent again, beyond the requests already out (two each).
    assert fake.requests_total <= 5 + 5, fake.requests_total

    after = start(manifest, pg_database, workspace.root / "after")  # after the top-up
    _, stderr = after.communicate(timeout=120)
    assert after.returncode == 0, stderr
    assert len(fake.paid) == 30 and set(fake.paid.values()) == {1}  # nothing paid twice


def test_a_runner_killed_mid_run_has_its_jobs_taken_over_within_a_lease(
    workspace: Workspace, fake: FakeProvider, pg_database: str
) -> None:
    jobs = [{"image": workspace.image(f"k{i}.png"), "prompt": f"edit {i}"} for i in range(24)]
    manifest = workspace.manifest(jobs, profile={"concurrency": 4})
    fake.latency = 0.3
    lease = 3.0
    runners = [
        start(manifest, pg_database, workspace.root / f"k{i}", "--lease", str(lease))
        for i in range(3)
    ]
    wait_for(lambda: sum(fake.paid.values()) >= 4)
    runners[0].kill()  # kill -9: no chance to put anything back
    killed_at = time.time()
    runners[0].communicate()
    survivors = [(r.wait(timeout=120), *r.communicate()) for r in runners[1:]]

    for code, _, stderr in survivors:
        assert code == 0, stderr
    export = subprocess.run(
        [sys.executable, "-m", "runner", "export", str(manifest), "--db", pg_database],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rows = [json.loads(line) for line in export.stdout.splitlines()]
    assert [row["status"] for row in rows] == ["succeeded"] * 24
    assert all(len(row["outputs"]) == 1 for row in rows)
    twice = [n for n in fake.paid.values() if n > 1]
    assert len(fake.paid) == 24 and len(twice) <= 4 and max(fake.paid.values()) <= 2
    assert fake.in_flight_peak <= 4  # the fleet kept the profile's concurrency

    async def taken_over_after() -> float:
        import asyncpg

        connection = await asyncpg.connect(pg_database.replace("postgresql://", "postgres://"))
        try:  # the first re-send of a job the killed runner had out
            started = await connection.fetchval(
                "SELECT min(b.started_at) FROM attempts a JOIN attempts b "
                "ON b.job_key = a.job_key AND b.id > a.id WHERE a.outcome = 'abandoned'"
            )
        finally:
            await connection.close()
        return float(started.replace(tzinfo=UTC).timestamp() - killed_at) if started else 0.0

    delay = asyncio.run(taken_over_after())
    assert delay <= lease + 2.0, delay  # within a lease (and a claim poll)


def test_max_cost_is_one_budget_for_three_runners(
    workspace: Workspace, fake: FakeProvider, pg_database: str
) -> None:
    jobs = [{"image": workspace.image(f"c{i}.png"), "prompt": f"edit {i}"} for i in range(30)]
    manifest = workspace.manifest(jobs, profile={"concurrency": 2},
                                  defaults={"params": {"quality": "medium"}})  # fmt: skip
    fake.latency = 0.2
    cap = 0.30  # about ten jobs at $0.0284 each

    runners = [
        start(manifest, pg_database, workspace.root / f"m{i}", "--max-cost", str(cap))
        for i in range(3)
    ]
    results = [(r.wait(timeout=120), *r.communicate()) for r in runners]

    for code, _, stderr in results:
        assert code == 75, stderr  # stopped for the budget, work left
    status = subprocess.run(
        [sys.executable, "-m", "runner", "status", str(manifest), "--db", pg_database, "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    spent = json.loads(status.stdout)["cost_usd"]
    assert 0.2 < spent <= cap, spent  # one budget, not one per runner (that would be $0.90)
    assert sum(fake.paid.values()) <= 10


def test_requests_per_minute_is_the_fleets_pace(
    workspace: Workspace, fake: FakeProvider, pg_database: str
) -> None:
    jobs = [{"image": workspace.image(f"r{i}.png"), "prompt": f"edit {i}"} for i in range(6)]
    manifest = workspace.manifest(jobs, profile={"concurrency": 4, "requests_per_minute": 60})
    runners = [start(manifest, pg_database, workspace.root / f"r{i}") for i in range(3)]
    results = [(r.wait(timeout=120), *r.communicate()) for r in runners]

    for code, _, stderr in results:
        assert code == 0, stderr
    assert len(fake.paid) == 6 and set(fake.paid.values()) == {1}
    # One request a second for the three together (each pacing alone, two would often go
    # out within a few milliseconds of each other).
    times = sorted(request.arrived_at for request in fake.requests)  # type: ignore[attr-defined]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= 0.9, gaps


def test_three_runners_share_one_bucket_and_a_killed_ones_jobs_land_there_once(
    workspace: Workspace, fake: FakeProvider, pg_database: str, s3_bucket: S3Bucket
) -> None:
    """Separate working folders sharing only the database URL and the output store (moto's
    S3 on 127.0.0.1): every job's image is in the bucket exactly once, whole, one runner
    killed on the way."""
    jobs = [{"image": workspace.image(f"s{i}.png"), "prompt": f"edit {i}"} for i in range(18)]
    manifest = workspace.manifest(
        jobs, profile={"concurrency": 3}, output_dir=f"{s3_bucket.url}/fleet"
    )
    fake.latency = 0.3
    runners = [
        start(manifest, pg_database, workspace.root / f"s{i}", "--lease", "3") for i in range(3)
    ]
    wait_for(lambda: sum(fake.paid.values()) >= 3)
    runners[0].kill()
    runners[0].communicate()
    for runner in runners[1:]:
        _, stderr = runner.communicate(timeout=120)
        assert runner.returncode == 0, stderr

    export = subprocess.run(
        [sys.executable, "-m", "runner", "export", str(manifest), "--db", pg_database],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rows = [json.loads(line) for line in export.stdout.splitlines()]
    assert [row["status"] for row in rows] == ["succeeded"] * 18
    urls = [out for row in rows for out in row["outputs"]]
    keys = [url.removeprefix(s3_bucket.url + "/") for url in urls]
    assert sorted(keys) == s3_bucket.object_keys()  # one object per job, no ~2, no leftovers
    assert all(key.startswith("fleet/s") for key in keys)
    for key in keys:
        assert s3_bucket.get(key).startswith(b"\x89PNG")
    assert not list(workspace.root.rglob("*.png.runner-tmp"))
    assert fake.in_flight_peak <= 3
