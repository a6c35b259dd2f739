"""Signals at every instant of a `runner` process: exit 75 quietly, nothing paid twice.

Each test drives the installed `runner` command (the console script, as a user and cron
run it) and sends real signals; they are in the slow tier.
"""

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

pytestmark = pytest.mark.slow

SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


def runner_command() -> list[str]:
    script = Path(sys.executable).with_name("runner")
    return [str(script)] if script.exists() else [sys.executable, "-m", "runner"]


def start(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*runner_command(), *map(str, args)],
        env={**os.environ, KEY_ENV: API_KEY, "RUNNER_DB": ""},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def catches_sigterm(pid: int) -> bool:
    """True once the process has a handler for SIGTERM (the kernel's view, /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & SIGTERM_BIT)


def wait_for(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def assert_quiet_75(process: subprocess.Popen[str], stderr: str) -> None:
    assert process.returncode == 75, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr, stderr


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
@pytest.mark.parametrize("delay", [0.0, 0.1, 0.25])
def test_a_signal_while_the_command_starts_exits_75_and_sends_nothing(
    workspace: Workspace, fake: FakeProvider, delay: float
) -> None:
    jobs = [{"image": workspace.image(f"e{i}.png"), "prompt": f"edit {i}"} for i in range(3)]
    manifest = workspace.manifest(jobs)
    process = start("run", manifest, "--log-format", "plain")
    # The handler is in place before the heavy imports: from here on, any instant.
    wait_for(lambda: catches_sigterm(process.pid), timeout=10)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)

    assert_quiet_75(process, stderr)
    if delay == 0.0 or fake.requests_total == 0:  # at 0 s it is still importing
        assert fake.requests_total == 0
        assert "before anything was sent" in stderr
    if (workspace.root / "jobs.db").exists():  # what was written is consistent
        db = workspace.db()
        assert db.execute("SELECT COUNT(*) FROM jobs WHERE status='running'").fetchone()[0] == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_three_quick_signals_during_a_run_exit_75_and_keep_every_record(
    workspace: Workspace, fake: FakeProvider, signum: signal.Signals
) -> None:
    jobs = [{"image": workspace.image(f"q{i}.png"), "prompt": f"edit {i}"} for i in range(4)]
    manifest = workspace.manifest(jobs, profile={"concurrency": 2})
    fake.latency = 20
    process = start("run", manifest, "--log-format", "plain")
    wait_for(lambda: sum(fake.received.values()) >= 2)
    for _ in range(3):
        process.send_signal(signum)
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=30)

    assert_quiet_75(process, stderr)
    db = workspace.db()
    assert db.execute("SELECT COUNT(*) FROM jobs WHERE status='running'").fetchone()[0] == 0
    rows = db.execute("SELECT outcome, COUNT(*) FROM attempts GROUP BY outcome").fetchall()
    outcomes = {row[0]: row[1] for row in rows}
    assert outcomes == {"abandoned": 2}  # on record as possibly billed, no phantom
    fake.latency = 0
    rerun = subprocess.run(
        [*runner_command(), "run", str(manifest)],
        env={**os.environ, KEY_ENV: API_KEY, "RUNNER_DB": ""},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr


def test_signals_all_through_shutdown_never_kill_the_run(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"h{i}.png"), "prompt": f"edit {i}"} for i in range(6)]
    manifest = workspace.manifest(jobs, profile={"concurrency": 2})
    fake.latency = 0.6
    process = start("run", manifest, "--log-format", "plain")
    wait_for(lambda: sum(fake.received.values()) >= 2)
    process.send_signal(signal.SIGTERM)  # the first: requests out may finish (grace)
    sent = 1
    while process.poll() is None and sent < 200:  # then one every 20 ms until it exits
        time.sleep(0.02)
        process.send_signal(signal.SIGTERM if sent % 2 else signal.SIGINT)
        sent += 1
    _, stderr = process.communicate(timeout=30)

    assert_quiet_75(process, stderr)
    assert sent > 3  # the later signals did land during the shutdown
    db = workspace.db()
    assert db.execute("SELECT COUNT(*) FROM jobs WHERE status='running'").fetchone()[0] == 0
    paid = sum(fake.paid.values())
    succeeded = db.execute("SELECT COUNT(*) FROM jobs WHERE status='succeeded'").fetchone()[0]
    abandoned = db.execute("SELECT COUNT(*) FROM attempts WHERE outcome='abandoned'").fetchone()[0]
    assert succeeded + abandoned >= paid  # every paid reply is a result or on record


def test_a_signal_to_a_read_only_command_exits_75(workspace: Workspace) -> None:
    jobs = [{"image": workspace.image(f"r{i}.png"), "prompt": f"edit {i}"} for i in range(3)]
    manifest = workspace.manifest(jobs)
    process = start("status", manifest)
    wait_for(lambda: catches_sigterm(process.pid) or process.poll() is not None, timeout=10)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("status finished before the signal landed")
    assert_quiet_75(process, stderr)


def test_ctrl_c_says_once_what_happens_and_status_does_not_repeat_it(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"c{i}.png"), "prompt": f"edit {i}"} for i in range(4)]
    manifest = workspace.manifest(jobs, profile={"concurrency": 2})
    fake.latency = 1.0
    process = start("run", manifest, "--log-format", "plain")
    wait_for(lambda: sum(fake.received.values()) >= 2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)

    assert_quiet_75(process, stderr)
    told = [line for line in stderr.splitlines() if "SIGINT" in line]
    assert len(told) == 1, stderr
    assert "finishing 2 requests already sent, up to 1m00s; Ctrl-C again to stop now" in told[0]
    assert " WARNING " in told[0] and " ERROR " not in stderr
    status = subprocess.run(
        [*runner_command(), "status", str(manifest)],
        env={**os.environ, "RUNNER_DB": ""}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert "exit 75: interrupted by SIGINT" in status.stdout
    assert "finishing" not in status.stdout
