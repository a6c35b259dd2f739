"""Stopping a real `runner run` process: a graceful SIGTERM, a second signal, and two
overlapping runs (as cron makes them) on one database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import API_KEY, KEY_ENV, Workspace

from runner.testing import FakeProvider

slow = pytest.mark.slow


def cli(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *map(str, args)],
        env={**os.environ, KEY_ENV: API_KEY, "RUNNER_DB": ""},
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def paid_once(fake: FakeProvider, count: int) -> bool:
    return len(fake.paid) == count and set(fake.paid.values()) == {1}


@slow
def test_sigterm_lets_requests_in_flight_finish_then_exits_75(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"t{i}.png"), "prompt": f"edit {i}"} for i in range(8)]
    manifest = workspace.manifest(jobs, profile={"concurrency": 2})
    fake.latency = 0.8
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(manifest), "--log-format", "plain"],
        env={**os.environ, KEY_ENV: API_KEY}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while sum(fake.received.values()) < 2:  # two requests are out, mid-reply
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 75, stderr
    assert "SIGTERM" in stderr and "Traceback" not in stderr
    db = workspace.db()
    # The requests already sent were answered and kept: nothing paid is lost.
    succeeded = db.execute("SELECT COUNT(*) FROM jobs WHERE status='succeeded'").fetchone()[0]
    assert succeeded == sum(fake.paid.values()) >= 2
    assert db.execute("SELECT COUNT(*) FROM jobs WHERE status='running'").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM attempts WHERE outcome IN "
                      "('in_flight', 'abandoned')").fetchone()[0] == 0  # fmt: skip
    fake.latency = 0
    rerun = cli("run", manifest)
    assert rerun.returncode == 0, rerun.stderr
    assert paid_once(fake, 8)  # no job paid twice


@slow
def test_a_second_signal_abandons_requests_at_once_and_records_them(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"s{i}.png"), "prompt": f"edit {i}"} for i in range(4)]
    manifest = workspace.manifest(jobs, profile={"concurrency": 2})
    fake.latency = 20
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(manifest), "--log-format", "plain"],
        env={**os.environ, KEY_ENV: API_KEY}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while sum(fake.received.values()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 75, stderr
    assert time.monotonic() - started < 10  # did not wait for the 20 s replies
    db = workspace.db()
    assert db.execute("SELECT COUNT(*) FROM jobs WHERE status='running'").fetchone()[0] == 0
    abandoned = db.execute("SELECT COUNT(*) FROM attempts WHERE outcome='abandoned'").fetchone()
    assert abandoned[0] == 2  # on record as possibly billed


@slow
def test_two_overlapping_runs_split_the_work_without_lock_errors(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"o{i}.png"), "prompt": f"edit {i}"} for i in range(24)]
    manifest = workspace.manifest(jobs, profile={"concurrency": 3})
    fake.latency = 0.05
    command = [sys.executable, "-m", "runner", "run", str(manifest), "--log-format", "plain"]
    environment = {**os.environ, KEY_ENV: API_KEY}
    first = subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True)
    errors = [p.communicate(timeout=90)[1] for p in (first, second)]

    assert [first.returncode, second.returncode] == [0, 0], errors
    assert not any("locked" in e.lower() or "Traceback" in e for e in errors)
    assert paid_once(fake, 24)  # every job once, none twice
    db = workspace.db()
    by_run = db.execute("SELECT run_id, COUNT(*) FROM attempts GROUP BY run_id").fetchall()
    assert len(by_run) == 2 and all(n > 0 for _, n in by_run)  # both did some of it


@slow
def test_sigterm_while_a_long_table_is_still_read_stops_within_seconds_and_resumes(
    workspace: Workspace, fake: FakeProvider
) -> None:
    """20,000 rows: the run sends while it reads the rest of the table; SIGTERM with
    --grace 0 stops it in seconds (exit 75), and the next run finishes the sync and the
    work, paying for nothing twice."""
    import csv

    from PIL import Image

    folder = workspace.root / "many"
    folder.mkdir()
    with (workspace.root / "t.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["file", "prompt"])
        for i in range(20_000):
            Image.new("RGB", (4, 4), (i % 256, i // 256 % 256, 7)).save(folder / f"{i}.png")
            writer.writerow([f"many/{i}.png", "brighter"])
    manifest = workspace.root / "jobs.yaml"
    manifest.write_text(
        f"providers:\n  fake:\n    dialect: openai\n    base_url: {fake.base_url}\n"
        f"    api_key_env: {KEY_ENV}\n    concurrency: 2\noutput_dir: out\n"
        "jobs_from:\n  - table: t.csv\n    image: file\n    prompt: prompt\n"
    )
    fake.latency = 20
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(manifest), "--grace", "0",
         "--log-format", "plain"],
        env={**os.environ, KEY_ENV: API_KEY, "RUNNER_DB": ""}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while sum(fake.received.values()) < 1:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 75, stderr
    assert time.monotonic() - signalled < 5
    assert "the rest of the manifest is read while these are sent" in stderr
    assert "Traceback" not in stderr
    fake.latency = 0
    status = cli("status", manifest, "--json")
    assert status.returncode == 0 and '"pending": ' in status.stdout
    assert workspace.db().execute("SELECT COUNT(*) FROM manifest_jobs").fetchone()[0] == 20_000
