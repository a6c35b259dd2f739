"""SIGINT and SIGTERM for the whole life of the `runner` process, in three phases.

Python's defaults (KeyboardInterrupt anywhere, death by SIGTERM) give tracebacks, exit
143 or click's "Aborted!" depending on the instant a signal lands. One handler installed
before anything heavy is imported gives every instant a rule instead:

- **starting** (from process start until the pool may send, and for the whole of commands
  that send nothing): the process exits 75 with one line. Nothing was sent, so nothing is
  lost; SQLite's journal undoes a write cut short.
- **sending** (`runner run` while the pool works): each signal is handed to the run,
  which decides (the first halts intake and lets requests out finish within the grace
  period, the second abandons them at once, later ones are ignored). The process never
  dies under a request whose reply may already be paid for.
- **finishing** (the pool has stopped; the outcome is known): signals are ignored so the
  results are recorded and the real exit code is returned.

Only the standard library is imported here: the handler must be in place before the heavy
imports of the rest of the package, which take most of a second.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from enum import Enum
from types import FrameType
from typing import TYPE_CHECKING

from runner.errors import ExitCode

if TYPE_CHECKING:  # asyncio itself takes a tenth of a second to import
    import asyncio

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Phase(Enum):
    STARTING = "starting"
    SENDING = "sending"
    FINISHING = "finishing"


class SignalRouter:
    """Owns the process's SIGINT/SIGTERM handlers; one per process (`ROUTER`)."""

    def __init__(self, write: Callable[[str], None] | None = None) -> None:
        self.phase = Phase.STARTING
        self.installed = False
        self._write = write or _write_stderr
        self._deliver: Callable[[int], None] | None = None
        self._ignored_told = False

    def install(self) -> None:
        for signum in HANDLED:
            signal.signal(signum, self.handle)
        self.installed = True

    def exiting(self) -> None:
        """The exit code is decided: from here to the end of the process, signals change
        nothing. SIG_IGN, because Python's finalization puts back the default handlers (a
        signal then would kill the process) but leaves ignored signals ignored."""
        for signum in HANDLED:
            signal.signal(signum, signal.SIG_IGN)

    def handle(self, signum: int, frame: FrameType | None = None) -> None:
        name = signal.Signals(signum).name
        if self.phase is Phase.SENDING and self._deliver is not None:
            self._deliver(signum)
        elif self.phase is Phase.FINISHING:
            if not self._ignored_told:
                self._ignored_told = True
                self._write(f"{name} ignored: the run is recording its results and exiting\n")
        else:
            self._write(f"interrupted by {name} before anything was sent: run the same "
                        f"command again (exit {ExitCode.EARLY})\n")  # fmt: skip
            # SystemExit, not KeyboardInterrupt: asyncio re-raises both out of its loop,
            # but click turns KeyboardInterrupt into "Aborted!" and exit 1.
            raise SystemExit(ExitCode.EARLY)

    @asynccontextmanager
    async def sending(self) -> AsyncIterator[asyncio.Queue[int]]:
        """While the body runs, signals arrive on the queue instead of ending the process;
        after it, the process is finishing and ignores them."""
        import asyncio

        installed_here = not self.installed
        previous = {signum: signal.getsignal(signum) for signum in HANDLED}
        if installed_here:
            self.install()  # a library caller asked for signal handling without the CLI
        loop = asyncio.get_running_loop()
        received: asyncio.Queue[int] = asyncio.Queue()

        # A Python signal handler runs in the main thread between two bytecodes, possibly
        # inside the event loop's own code: only call_soon_threadsafe is safe to use there.
        def deliver(signum: int) -> None:
            loop.call_soon_threadsafe(received.put_nowait, signum)

        self._deliver = deliver
        self.phase = Phase.SENDING
        try:
            yield received
        finally:
            self.phase = Phase.FINISHING
            self._deliver = None
            if installed_here:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
                self.installed = False
                self.phase = Phase.STARTING


def _write_stderr(text: str) -> None:
    # os.write, not print: a handler may run in the middle of another write to sys.stderr.
    with suppress(OSError):
        os.write(2, text.encode("utf-8", "replace"))


ROUTER = SignalRouter()
