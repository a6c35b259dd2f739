"""How a run reports progress: a live bar on a terminal, a summary line now and then for
cron and pipes, one JSON object a line for log shippers, or nothing but errors.

The pool builds a `Snapshot` (counts, spend, elapsed time from its own clock) and hands it
to a `ProgressReporter`; the reporters only format. Plain and JSON reporters write a line
on `start`, then at most one progress line every `interval_s` (by the injected monotonic
clock), and always one on `finish`; events are written at once. Event fields whose names
look like credentials are redacted, although none should ever be passed here.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.text import Text

from runner.manifest.durations import format_duration
from runner.money import format_usd
from runner.records import ProgressReporter, Snapshot
from runner.redact import redact_fields
from runner.settings import WallClock

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_STYLES = {"error": "bold red", "warning": "yellow", "info": "dim"}

Monotonic = Callable[[], float]  # a Clock's `monotonic`


def format_money(usd: float | None) -> str:
    """A running total: `$4.80`, `$1,234.50`; under a dollar four places (`$0.0400`)."""
    return format_usd(usd, 4, fixed=True)


def format_eta(eta_s: float | None) -> str:
    return "unknown" if eta_s is None else format_duration(eta_s)


def utc_stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def one_line(text: object) -> str:
    """Control characters (newlines, terminal escapes) escaped: one line, no terminal tricks."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))


def summary(s: Snapshot) -> str:
    """`120/500 done (this run: 118 ok, 2 failed) 14.2 jobs/min eta 26m45s ...`: the first
    count is the whole manifest's, the ones in brackets and the spend this run's."""
    line = (
        f"{s.done}/{s.total} done (this run: {s.succeeded} ok, {s.failed} failed) "
        f"{s.jobs_per_minute:.1f} jobs/min eta {format_eta(s.eta_s)} "
        f"in_flight={s.in_flight} retries_waiting={s.retries_waiting} "
        f"spent={format_money(s.spent_usd)} est_total={format_money(s.estimated_total_usd)}"
    )
    return f"{line} paused: {one_line(s.paused)}" if s.paused else line


def _plain_value(value: object) -> str:
    text = one_line(value)
    return json.dumps(text) if not text or re.search(r"[\s\"=]", text) else text


def _finite(value: Any, depth: int = 0) -> Any:
    """NaN and infinities (in lists and dicts too) become None, as JSON has neither;
    nesting deeper than a few levels (or circular) is written as its text."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict | list | tuple) and depth >= 8:
        return str(value)
    if isinstance(value, dict):
        return {str(k): _finite(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v, depth + 1) for v in value]
    return value


def _rounded(value: float | None, places: int) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, places)


class _LineReporter:
    """Timing and writing for the line reporters; subclasses only format lines.

    A line on `start`, then at most one progress line per `interval_s` by `clock`, one
    on `finish` whatever the interval, and every event at once."""

    def __init__(
        self,
        stream: TextIO,
        clock: Monotonic = time.monotonic,
        interval_s: float = 60.0,
        *,
        wall_clock: WallClock = lambda: datetime.now(UTC),
    ) -> None:
        self._stream = stream
        self._clock = clock
        self._wall_clock = wall_clock
        self._interval_s = interval_s
        self._last: float | None = None

    def _write(self, kind: str, body: dict[str, Any]) -> None:
        self._stream.write(self._format(utc_stamp(self._wall_clock()), kind, body) + "\n")
        self._stream.flush()

    def _format(self, ts: str, kind: str, body: dict[str, Any]) -> str:
        raise NotImplementedError

    def start(self, total: int) -> None:
        self._last = self._clock()
        self._write("started", {"total": total})

    def update(self, snapshot: Snapshot) -> None:
        now = self._clock()
        if self._last is None or now - self._last >= self._interval_s:
            self._last = now
            self._write("progress", {"snapshot": snapshot})

    def event(self, level: str, message: str, **fields: Any) -> None:
        self._write(level.lower(), {"message": message, "fields": redact_fields(fields)})

    def finish(self, snapshot: Snapshot, outcome: str) -> None:
        self._write("finished", {"outcome": outcome, "snapshot": snapshot})

    def close(self) -> None:
        pass


class PlainReporter(_LineReporter):
    """`2026-11-21T03:00:00Z progress 120/500 done (...)`: plain lines for cron and pipes."""

    def _format(self, ts: str, kind: str, body: dict[str, Any]) -> str:
        if kind == "started":
            return f"{ts} started {body['total']} jobs"
        if kind == "progress":
            return f"{ts} progress {summary(body['snapshot'])}"
        if kind == "finished":
            s: Snapshot = body["snapshot"]
            outcome, took = _plain_value(body["outcome"]), format_duration(s.elapsed_s)
            return f"{ts} finished outcome={outcome} in {took} {summary(s)}"
        pairs = "".join(f" {k}={_plain_value(v)}" for k, v in body["fields"].items())
        return f"{ts} {kind.upper()} {one_line(body['message'])}{pairs}"


class JsonReporter(_LineReporter):
    """One JSON object a line (never NaN or Infinity: unknown numbers are null)."""

    def _format(self, ts: str, kind: str, body: dict[str, Any]) -> str:
        record: dict[str, Any] = {"ts": ts, "event": kind}
        if "snapshot" in body:
            record.update(snapshot_fields(body.pop("snapshot")))
        extra = body.pop("fields", {})
        record.update(body)
        record.update((f"{k}_" if k in record else k, v) for k, v in extra.items())
        try:
            return json.dumps(_finite(record), allow_nan=False, default=str)
        except (TypeError, ValueError) as exc:  # e.g. a circular field: still one JSON line
            return json.dumps({"ts": ts, "event": kind, "unencodable": str(exc)})


def snapshot_fields(s: Snapshot) -> dict[str, Any]:
    return {
        "done": s.done,
        "total": s.total,
        "succeeded": s.succeeded,
        "failed": s.failed,
        "in_flight": s.in_flight,
        "jobs_per_min": _rounded(s.jobs_per_minute, 2),
        "eta_s": _rounded(s.eta_s, 1),
        "retries_waiting": s.retries_waiting,
        "spent_usd": _rounded(s.spent_usd, 6),
        "estimated_total_usd": _rounded(s.estimated_total_usd, 6),
        "elapsed_s": _rounded(s.elapsed_s, 1),
        "paused": s.paused,
    }


class QuietReporter:
    """`--quiet`: no start, progress or finish lines and no info or warning events; only
    events of level "error" are written (plain, or JSON when `as_json`), so that cron
    mails only when something went wrong. The exit status still tells the outcome."""

    def __init__(
        self,
        stream: TextIO,
        *,
        wall_clock: WallClock = lambda: datetime.now(UTC),
        as_json: bool = False,
    ) -> None:
        kind = JsonReporter if as_json else PlainReporter
        self._errors = kind(stream, wall_clock=wall_clock)

    def start(self, total: int) -> None:
        pass

    def update(self, snapshot: Snapshot) -> None:
        pass

    def event(self, level: str, message: str, **fields: Any) -> None:
        if level.lower() == "error":
            self._errors.event(level, message, **fields)

    def finish(self, snapshot: Snapshot, outcome: str) -> None:
        pass

    def close(self) -> None:
        pass


BAR_WIDTH = 20


def live_line(s: Snapshot, width: int) -> str:
    """The text beside the bar, at most `width` characters: `88/300 done` always, then the
    fields in order of value, each dropped (from the last) when the terminal is too narrow:
    ETA, a pause, this run's counts and spend, elapsed time, rate, estimate, retries."""
    this_run = f"this run: {s.succeeded} ok"
    this_run += f", {s.failed} failed" if s.failed else ""
    spent = format_money(s.spent_usd)
    candidates: list[tuple[str, ...]] = [  # each: the field, then shorter forms of it
        (f"eta {format_eta(s.eta_s)}",),
        (f"paused: {one_line(s.paused)}", f"paused: {one_line(s.paused)[:24]}…")
        if s.paused
        else (),
        (f"{this_run}, {spent}", f"this run {spent}", spent),
        (f"{format_duration(s.elapsed_s)} elapsed",),
        (f"{s.jobs_per_minute:.1f} jobs/min",),
        (f"est. {format_money(s.estimated_total_usd)}",),
        (f"retries waiting {s.retries_waiting}",) if s.retries_waiting else (),
    ]
    line = f"{s.done}/{s.total} done"
    for forms in candidates:
        for form in forms:
            if len(line) + 3 + len(form) <= width:
                line += " · " + form
                break
    return line


class RichReporter:
    """A live bar for a terminal, fitted to its width (see `live_line`); events are
    printed above the bar."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress = Progress(
            BarColumn(bar_width=BAR_WIDTH),
            TextColumn("{task.fields[stats]}"),
            console=console,
        )
        self._task: TaskID | None = None
        self._closed = False

    def start(self, total: int) -> None:
        if self._task is None:
            self._task = self._progress.add_task("running", total=total, stats="")
            self._progress.start()

    def update(self, snapshot: Snapshot) -> None:
        self.start(snapshot.total)
        assert self._task is not None
        # The bar, a space between the columns, and one column spare: a line that fills the
        # terminal exactly wraps on some terminals.
        stats = live_line(snapshot, self._console.width - BAR_WIDTH - 2)
        self._progress.update(
            self._task, total=snapshot.total, completed=snapshot.done, stats=escape(stats)
        )

    def event(self, level: str, message: str, **fields: Any) -> None:
        pairs = "".join(f" {k}={_plain_value(v)}" for k, v in redact_fields(fields).items())
        style = _STYLES.get(level.lower(), "")
        self._console.print(Text(f"{level.upper()} {one_line(message)}{pairs}", style=style))

    def finish(self, snapshot: Snapshot, outcome: str) -> None:
        """The bar's last state stays on screen; the command prints the run's table after."""
        self.update(snapshot)
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._progress.stop()


def make_reporter(
    *,
    log_format: str,
    quiet: bool,
    stream: TextIO,
    is_tty: bool,
    clock: Monotonic = time.monotonic,
    wall_clock: WallClock = lambda: datetime.now(UTC),
    interval_s: float = 60.0,
) -> ProgressReporter:
    """`auto`: the rich bar on a terminal, plain lines otherwise; `quiet` wins over all."""
    if log_format not in ("auto", "plain", "json"):
        raise ValueError(f"log format must be auto, plain or json, not {log_format!r}")
    if quiet:
        return QuietReporter(stream, wall_clock=wall_clock, as_json=log_format == "json")
    if log_format == "json":
        return JsonReporter(stream, clock, interval_s, wall_clock=wall_clock)
    if log_format == "auto" and is_tty:
        return RichReporter(Console(file=stream))
    return PlainReporter(stream, clock, interval_s, wall_clock=wall_clock)
