"""kill -9 in the middle of `runner run`, then run again: nothing lost, nothing corrupt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import API_KEY, KEY_ENV, Workspace, options, sha256

from runner import app
from runner.errors import ExitCode
from runner.testing import FakeProvider

pytestmark = pytest.mark.slow


def wait_for(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


@pytest.mark.parametrize("kill_after_paid", [2, 5])
async def test_kill_9_then_rerun_loses_nothing(
    workspace: Workspace, fake: FakeProvider, kill_after_paid: int
) -> None:
    jobs = [{"image": workspace.image(f"p{i}.png"), "prompt": f"edit {i}"} for i in range(8)]
    jobs[3]["mask"] = workspace.mask("m.png")
    manifest = workspace.manifest(jobs)
    fake.latency = 0.25
    environment = {**os.environ, KEY_ENV: API_KEY}
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(manifest)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: sum(fake.paid.values()) >= kill_after_paid)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    db = workspace.db()
    done_before = db.execute("SELECT COUNT(*) FROM jobs WHERE status='succeeded'").fetchone()[0]
    assert done_before < len(jobs), "the kill came too late to test anything"
    # A temp file as the killed process would leave it mid-write.
    out = workspace.root / "out"
    out.mkdir(exist_ok=True)
    (out / f".p0-deadbeef.png.{process.pid}-abc123.runner-tmp").write_bytes(b"half a png")

    started = time.monotonic()
    outcome = await app.run(manifest, options())

    assert time.monotonic() - started < 20, "waited for the dead run's leases to expire"
    assert outcome.exit_code == ExitCode.OK
    rows = db.execute(
        "SELECT j.key, j.status, COUNT(o.id) AS outputs FROM jobs j "
        "LEFT JOIN outputs o ON o.job_key = j.key GROUP BY j.key"
    ).fetchall()
    assert [(r["status"], r["outputs"]) for r in rows] == [("succeeded", 1)] * len(jobs)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    recorded = dict(db.execute("SELECT path, sha256 FROM outputs").fetchall())
    assert sorted(map(Path, recorded)) == files  # no temp, partial or orphan file
    assert all(sha256(Path(path)) == digest for path, digest in recorded.items())
    # Only a job in flight at the kill may have been paid twice, and the record says so.
    paid_twice = {f for f, n in fake.paid.items() if n > 1}
    assert all(n <= 2 for n in fake.paid.values())
    abandoned = db.execute(
        "SELECT COUNT(DISTINCT job_key) FROM attempts WHERE outcome = 'abandoned'"
    ).fetchone()[0]
    # Concurrency 2: at most two requests out, and at most two answered replies still being
    # written and recorded in the background (their records say in flight until then).
    assert len(paid_twice) <= abandoned <= 4
    dead_run = db.execute("SELECT stop_reason FROM runs ORDER BY started_at LIMIT 1").fetchone()
    assert "died" in dead_run[0]


def test_ctrl_c_exits_75_and_frees_its_jobs_at_once(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"p{i}.png"), "prompt": f"edit {i}"} for i in range(6)]
    manifest = workspace.manifest(jobs)
    fake.latency = 0.3
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(manifest)],
        env={**os.environ, KEY_ENV: API_KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: sum(fake.paid.values()) >= 1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 75, stderr
    assert "Traceback" not in stderr and "run the same command again" in stderr
    db = workspace.db()
    assert db.execute("SELECT COUNT(*) FROM jobs WHERE status='running'").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM attempts WHERE outcome='in_flight'").fetchone()[0] == 0
    rerun = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(manifest)],
        env={**os.environ, KEY_ENV: API_KEY},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr
