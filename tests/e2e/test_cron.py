"""README's crontab line, run as cron runs it: `/bin/sh -c` with an empty environment.

The line is read from README.md itself, so the recipe a user copies is the one tested; only
its two example folders are replaced by this test's folders.
"""

from __future__ import annotations

import fcntl
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import API_KEY, Workspace

from runner.testing import FakeProvider

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("flock") is None, reason="flock(1) is not installed"),
]

README = Path(__file__).resolve().parents[2] / "README.md"
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ exit (\d+)$")


def crontab_command(data: Path) -> str:
    """The command part of README's crontab line, with cron's own rewriting applied."""
    block = README.read_text().split("```cron\n", 1)[1].split("```", 1)[0]
    (line,) = [line for line in block.splitlines() if line and not line.startswith("#")]
    command = line.split(None, 5)[5]  # after minute, hour, day, month, weekday
    assert "%" not in command.replace("\\%", ""), "a bare % would be cut by cron"
    runner = Path(sys.executable).with_name("runner")
    assert runner.exists()
    return (
        command.replace("\\%", "%")
        .replace("/opt/runner/.venv/bin/runner", str(runner))
        .replace("/data/edits", str(data))
    )


def as_cron(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["env", "-i", "/bin/sh", "-c", command],
        capture_output=True, text=True, timeout=120, check=False, cwd="/",
    )  # fmt: skip


def test_the_readme_crontab_line_works_as_written(workspace: Workspace, fake: FakeProvider) -> None:
    jobs = [{"image": workspace.image(f"c{i}.png"), "prompt": f"cron {i}"} for i in range(3)]
    workspace.manifest(jobs, profile={"api_key_env": "COMETAPI_KEY"})
    env_file = workspace.root / "runner.env"
    env_file.write_text(f"COMETAPI_KEY={API_KEY}\n")
    env_file.chmod(0o600)
    command = crontab_command(workspace.root)

    first = as_cron(command)
    assert first.returncode == 0, first.stderr
    log = (workspace.root / "runner.log").read_text()
    assert STAMP.match(log.splitlines()[-1]).group(1) == "0", log  # type: ignore[union-attr]
    assert re.search(r"^\d{4}-\d\d-\d\dT\S+Z started 3 jobs$", log, re.M), log
    assert len(list((workspace.root / "out").glob("*.png"))) == 3
    assert API_KEY not in log

    # While another run holds the lock, the night is skipped with 75 ("run again later").
    with (workspace.root / ".runner.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        skipped = as_cron(command)
    assert skipped.returncode == 0
    last = (workspace.root / "runner.log").read_text().splitlines()[-1]
    assert STAMP.match(last).group(1) == "75", last  # type: ignore[union-attr]
    assert fake.requests_total == 3
