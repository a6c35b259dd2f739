"""`runner status --watch` in a real terminal (a pty): it redraws in place as the database
changes, and Ctrl-C ends it quietly with exit 0."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import API_KEY, KEY_ENV, Workspace

from runner.testing import FakeProvider

pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def read_for(fd: int, seconds: float) -> str:
    deadline, chunks = time.monotonic() + seconds, []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                chunks.append(os.read(fd, 65536))
            except OSError:
                break
    return b"".join(chunks).decode("utf-8", "replace")


def test_status_watch_redraws_in_place_and_ctrl_c_ends_it_with_0(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"w{i}.png"), "prompt": f"w {i}"} for i in range(2)]
    manifest = workspace.manifest(jobs)
    runner = str(Path(sys.executable).with_name("runner"))
    env = {**os.environ, KEY_ENV: API_KEY, "RUNNER_DB": "", "COLUMNS": "80", "LINES": "24"}
    assert subprocess.run([runner, "jobs", str(manifest)], env=env, check=False).returncode == 0

    primary, secondary = pty.openpty()
    watcher = subprocess.Popen(
        [runner, "status", str(manifest), "--watch", "--interval", "0.2"],
        stdin=secondary, stdout=secondary, stderr=secondary, env=env, close_fds=True,
    )  # fmt: skip
    os.close(secondary)
    try:
        before = read_for(primary, 2.0)
        # Keep reading while the run goes on: a terminal nobody reads blocks its writer.
        ran = subprocess.Popen([runner, "run", str(manifest)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        during, stop_by = "", time.monotonic() + 60
        while ran.poll() is None and time.monotonic() < stop_by:
            during += read_for(primary, 0.2)
        assert ran.wait(timeout=5) == 0
        after = during + read_for(primary, 1.0)
        watcher.send_signal(signal.SIGINT)
        rest, stop_by = "", time.monotonic() + 10
        while watcher.poll() is None and time.monotonic() < stop_by:
            rest += read_for(primary, 0.1)
        assert watcher.wait(timeout=10) == 0
    finally:
        watcher.kill()
        os.close(primary)
    screen = before + after + rest
    assert "Ctrl-C to quit" in screen
    assert "\x1b[1A" in screen or "\x1b[2K" in screen  # redrawn in place, not appended
    assert re.search(r"pending\s+2\b", ANSI.sub("", before))
    assert re.search(r"succeeded\s+2\b", ANSI.sub("", after))
    assert "Traceback" not in screen and "interrupted" not in screen
