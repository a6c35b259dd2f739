"""One child process measured: wall time and its own peak RSS (shared by the benchmarks);
with the processes it starts, their peak memory together (PSS: a page two of them share
counts half to each, so forked workers are not counted twice for what they share)."""

from __future__ import annotations

import compileall
import contextlib
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def compile_runner(repo: Path) -> None:
    """Bytecode for the runner's modules and migrations, as an installed package has: with
    PYTHONDONTWRITEBYTECODE set (as on some machines and CI images) a source checkout would
    otherwise compile ~100 modules in every child, and start-up would measure that."""
    for folder in ("runner", "migrations"):
        compileall.compile_dir(repo / folder, quiet=1)


@dataclass(frozen=True)
class Measured:
    wall_s: float
    peak_mb: float
    code: int  # -9: killed once `stop_when()` held
    stderr: str
    tree_peak_mb: float = 0.0  # the child and its own children, PSS summed, sampled 10x/s


def measured(
    args: list[str],
    env: dict[str, str],
    cwd: Path | None = None,
    stop_when: Callable[[], bool] | None = None,
) -> Measured:
    """Run `args`; the peak is the child's own VmHWM, read from /proc while it runs (wait4's
    ru_maxrss would count the pages of this process, which may hold a fake and its files,
    at the fork). Its stderr goes to a file, so a chatty child never blocks on a pipe."""
    with tempfile.TemporaryFile() as errors:
        started = time.monotonic()
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=errors)
        status = Path(f"/proc/{proc.pid}/status")
        peak_kb = tree_kb = 0
        code: int | None = None
        polls = 0
        while (code := proc.poll()) is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kb = max(peak_kb, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            if polls % 10 == 0:
                tree_kb = max(tree_kb, _tree_pss_kb(proc.pid))
            polls += 1
            if stop_when is not None and stop_when():
                proc.kill()
                proc.wait()
                code = -9
                break
            time.sleep(0.01)
        wall = time.monotonic() - started
        errors.seek(0)
        text = errors.read().decode(errors="replace")
    return Measured(wall, peak_kb / 1024, code, text, tree_kb / 1024)


def _tree_pss_kb(pid: int) -> int:
    """PSS of `pid` and its children (validate's forked workers), 0 for what is gone."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):  # whichever thread forked them
        with contextlib.suppress(OSError):
            children += (task / "children").read_text().split()
    total = 0
    for one in [str(pid), *children]:
        try:
            for line in Path(f"/proc/{one}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total
