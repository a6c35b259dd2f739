"""The installed `runner` script and `python -m runner` are the same command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)


def test_python_dash_m_and_console_script_agree() -> None:
    script = Path(sys.executable).with_name("runner")
    via_script = run(script, "--help")
    via_module = run(sys.executable, "-m", "runner", "--help")
    assert via_script.returncode == 0
    assert via_module.returncode == 0
    assert via_script.stdout == via_module.stdout
    run_help = run(sys.executable, "-m", "runner", "run", "--help").stdout
    assert "Exit codes" in via_script.stdout and "RUNNER_DB" in run_help
