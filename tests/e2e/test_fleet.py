"""Several `runner run` processes on one PostgreSQL database (issue 16): started at the same
moment on a fresh database, they migrate once, enqueue the manifest once, split the jobs and
pay for each once. Skips where no PostgreSQL server answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import API_KEY, KEY_ENV, Workspace

from runner.testing import FakeProvider

pytestmark = pytest.mark.slow


def start(manifest: Path, db: str, folder: Path) -> subprocess.Popen[str]:
    """A runner in a working folder of its own, sharing only the database URL."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(manifest), "--db", db,
         "--log-format", "plain"],
        env={**os.environ, KEY_ENV: API_KEY, "RUNNER_DB": ""}, cwd=folder,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_three_runners_started_at_once_on_a_fresh_database_share_the_work(
    workspace: Workspace, fake: FakeProvider, pg_database: str
) -> None:
    jobs = [{"image": workspace.image(f"f{i}.png"), "prompt": f"edit {i}"} for i in range(12)]
    manifest = workspace.manifest(jobs, profile={"concurrency": 2})
    fake.latency = 0.3

    runners = [start(manifest, pg_database, workspace.root / f"host{i}") for i in range(3)]
    results = [(r.wait(timeout=120), *r.communicate()) for r in runners]

    for code, _, stderr in results:
        assert code == 0, stderr
        assert "Traceback" not in stderr and "IntegrityError" not in stderr
    assert len(fake.paid) == 12 and set(fake.paid.values()) == {1}  # each job paid once
    assert len(list((workspace.root / "out").glob("*.png"))) == 12
    status = subprocess.run(
        [sys.executable, "-m", "runner", "status", str(manifest), "--db", pg_database, "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert '"succeeded": 12' in status.stdout
