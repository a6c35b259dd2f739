"""Batch mode across a kill -9 (issue 12): the runner dies after `POST /batches` was
answered by the provider side but before it could record the answer; the next run adopts
that batch instead of sending its lines again."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import API_KEY, KEY_ENV, Workspace

from runner.testing import FakeProvider

pytestmark = pytest.mark.slow


def test_killed_between_creating_a_batch_and_recording_it_the_next_run_adopts_it(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"k{i}.png"), "prompt": f"kill {i}"} for i in range(6)]
    manifest = workspace.manifest(jobs, profile={"mode": "batch"})
    fake.batch.create_delay = 30.0  # the batch exists; its answer is on the way
    env = {**os.environ, KEY_ENV: API_KEY, "RUNNER_DB": ""}
    runner = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(manifest), "--log-format", "plain"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while fake.batch.batches_created == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.batch.batches_created == 1
    runner.kill()  # kill -9: the answer is never read, never recorded
    runner.communicate()
    fake.batch.create_delay = 0.0

    again = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(manifest), "--log-format", "plain"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert again.returncode == 0, again.stderr
    assert "adopted batch" in again.stderr
    assert fake.batch.batches_created == 1  # never a second batch for the same lines
    assert fake.batch.lines_billed == 6 and set(fake.paid.values()) == {1}
    states = workspace.db().execute("SELECT status, COUNT(*) FROM jobs GROUP BY status")
    assert dict(states.fetchall()) == {"succeeded": 6}
