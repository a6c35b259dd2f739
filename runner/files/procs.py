"""Is the runner that holds these jobs still alive? Answered without waiting for a lease.

A pid alone is not enough: after a reboot or in a fresh container the same pid belongs to
another process (often ourselves). On Linux a process is identified by the boot id plus
its start time in clock ticks since boot; elsewhere we fall back to the pid.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def hostname() -> str:
    return socket.gethostname()


def _boot_id() -> str | None:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name (field 2) may hold spaces, so split after ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else None


def process_tag(pid: int | None = None) -> str:
    """A string that names this very process across pid reuse and reboots."""
    pid = os.getpid() if pid is None else pid
    boot, start = _boot_id(), _start_ticks(pid)
    return f"{boot}:{start}" if boot and start else f"pid:{pid}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (it may not be a runner)."""
    if pid <= 0:
        return False  # kill(0) or kill(-n) would probe a process group, not a process
    if sys.platform == "win32":
        return True  # os.kill(pid, 0) terminates the process there; keep until stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except (OverflowError, OSError):
        return False
    return True


def same_process_alive(pid: int, tag: str) -> bool:
    if not pid_alive(pid):
        return False
    if tag.startswith("pid:"):
        return True
    return process_tag(pid) == tag
