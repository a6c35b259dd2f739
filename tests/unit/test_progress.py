"""Progress reporting: snapshot arithmetic, plain/JSON cadence on an injected clock,
quiet mode, the rich bar, and the factory. No sleeps: the clocks are moved by hand."""

from __future__ import annotations

import io
import json
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from runner.cli.progress import (
    JsonReporter,
    PlainReporter,
    QuietReporter,
    RichReporter,
    Snapshot,
    format_money,
    live_line,
    make_reporter,
)
from runner.redact import REDACTED

START = datetime(2026, 11, 21, 3, 0, 0, tzinfo=UTC)


class Clocks:
    """One hand-moved time, read both as monotonic seconds and as a UTC wall clock."""

    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def wall(self) -> datetime:
        return START + timedelta(seconds=self.t)


def snap(**overrides: Any) -> Snapshot:
    values: dict[str, Any] = {
        "total": 500,
        "succeeded": 118,
        "failed": 2,
        "in_flight": 4,
        "retries_waiting": 3,
        "spent_usd": 4.80,
        "estimated_total_usd": 20.0,
        "elapsed_s": 600.0,
    }
    values.update(overrides)
    return Snapshot(**values)


def plain(clocks: Clocks, interval_s: float = 60.0) -> tuple[PlainReporter, io.StringIO]:
    out = io.StringIO()
    return PlainReporter(out, clocks.monotonic, interval_s, wall_clock=clocks.wall), out


def json_reporter(clocks: Clocks, interval_s: float = 60.0) -> tuple[JsonReporter, io.StringIO]:
    out = io.StringIO()
    return JsonReporter(out, clocks.monotonic, interval_s, wall_clock=clocks.wall), out


def strict_json(line: str) -> dict[str, Any]:
    def refuse(constant: str) -> Any:
        raise AssertionError(f"non-JSON constant {constant} in {line!r}")

    record = json.loads(line, parse_constant=refuse)
    assert isinstance(record, dict)
    return record


# --- Snapshot arithmetic ---------------------------------------------------------------


def test_snapshot_rate_and_eta() -> None:
    s = snap()
    assert s.done == 120
    assert s.jobs_per_minute == pytest.approx(12.0)  # 120 jobs in 10 minutes
    assert s.eta_s == pytest.approx(380 / 12.0 * 60)  # 380 left at 12/min


def test_eta_is_none_when_nothing_is_done_yet() -> None:
    s = snap(succeeded=0, failed=0, elapsed_s=300.0)
    assert s.jobs_per_minute == 0.0
    assert s.eta_s is None


def test_rate_is_zero_while_elapsed_is_tiny() -> None:
    s = snap(succeeded=3, failed=0, elapsed_s=0.001)
    assert s.jobs_per_minute == 0.0
    assert s.eta_s is None


def test_eta_is_zero_when_everything_is_done() -> None:
    assert snap(succeeded=498, failed=2).eta_s == 0.0


def test_jobs_done_before_the_run_count_towards_done_but_not_the_rate() -> None:
    s = snap(done_before=100)
    assert s.done == 220
    assert s.jobs_per_minute == pytest.approx(12.0)
    assert s.eta_s == pytest.approx(280 / 12.0 * 60)


@pytest.mark.parametrize(
    ("usd", "text"),
    [(4.8, "$4.80"), (20, "$20.00"), (1234.5, "$1,234.50"), (0.04, "$0.0400"), (0, "$0.0000")],
)
def test_money(usd: float, text: str) -> None:
    assert format_money(usd) == text


def test_unknown_money_is_a_question_mark() -> None:
    assert format_money(None) == "?"
    assert format_money(math.nan) == "?"


# --- Plain lines -----------------------------------------------------------------------


def test_plain_progress_line_has_every_figure() -> None:
    clocks = Clocks()
    reporter, out = plain(clocks)
    reporter.update(snap())  # no start: the first update prints at once
    assert out.getvalue() == (
        "2026-11-21T03:00:00Z progress 120/500 done (this run: 118 ok, 2 failed) 12.0 jobs/min "
        "eta 31m40s in_flight=4 retries_waiting=3 spent=$4.80 est_total=$20.00\n"
    )


def test_plain_lines_come_at_the_interval_and_not_more_often() -> None:
    clocks = Clocks()
    reporter, out = plain(clocks, interval_s=60.0)
    reporter.start(500)
    for t in (0.0, 1.0, 30.0, 59.9, 60.0, 61.0, 100.0, 119.9, 120.0, 179.0, 200.0):
        clocks.t = t
        reporter.update(snap(elapsed_s=max(t, 1.0)))
    lines = out.getvalue().splitlines()
    assert lines[0] == "2026-11-21T03:00:00Z started 500 jobs"
    stamps = [line.split()[0] for line in lines if " progress " in line]
    assert stamps == ["2026-11-21T03:01:00Z", "2026-11-21T03:02:00Z", "2026-11-21T03:03:20Z"]


def test_plain_finish_always_prints_even_inside_the_interval() -> None:
    clocks = Clocks()
    reporter, out = plain(clocks)
    reporter.start(500)
    clocks.t = 5.0
    reporter.update(snap())
    assert " progress " not in out.getvalue()
    reporter.finish(snap(succeeded=498, failed=2, elapsed_s=1800.0), "completed")
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("2026-11-21T03:00:05Z finished outcome=completed in 30m00s ")
    assert "500/500 done (this run: 498 ok, 2 failed)" in last
    assert "eta 0s" in last


def test_plain_unknown_eta_and_estimate() -> None:
    reporter, out = plain(Clocks())
    reporter.update(snap(succeeded=0, failed=0, estimated_total_usd=None, spent_usd=0.04))
    assert "eta unknown" in out.getvalue()
    assert "spent=$0.0400 est_total=?" in out.getvalue()


def test_plain_paused_reason_is_shown() -> None:
    reporter, out = plain(Clocks())
    reporter.update(snap(paused="venice paused 12s (rate limit)"))
    assert out.getvalue().rstrip().endswith("paused: venice paused 12s (rate limit)")


def test_plain_events_are_one_line_each_and_immediate() -> None:
    clocks = Clocks()
    reporter, out = plain(clocks)
    reporter.start(500)
    clocks.t = 1.0
    reporter.event("warning", "provider venice stopped: 402\nbalance", provider="venice")
    reporter.event("error", "job failed", job="ab12cd34", reason="moderation blocked")
    lines = out.getvalue().splitlines()
    assert lines[1:] == [
        "2026-11-21T03:00:01Z WARNING provider venice stopped: 402\\nbalance provider=venice",
        '2026-11-21T03:00:01Z ERROR job failed job=ab12cd34 reason="moderation blocked"',
    ]


def test_fields_named_like_credentials_are_redacted() -> None:
    reporter, out = plain(Clocks())
    secret = "sk-test-SECRET-7f3a9c2e51"
    reporter.event("info", "hello", api_key=secret, authorization=f"Bearer {secret}", key="ab12")
    text = out.getvalue()
    assert secret not in text
    assert f"api_key={REDACTED}" in text
    assert "key=ab12" in text  # a job's content key is not a credential


# --- JSON lines ------------------------------------------------------------------------


def test_json_progress_record_has_the_fields() -> None:
    clocks = Clocks()
    reporter, out = json_reporter(clocks)
    reporter.start(500)
    clocks.t = 60.0
    reporter.update(snap())
    started, progress = (strict_json(line) for line in out.getvalue().splitlines())
    assert started == {"ts": "2026-11-21T03:00:00Z", "event": "started", "total": 500}
    assert progress["ts"] == "2026-11-21T03:01:00Z"
    assert progress["event"] == "progress"
    assert (progress["done"], progress["total"]) == (120, 500)
    assert (progress["succeeded"], progress["failed"]) == (118, 2)
    assert progress["jobs_per_min"] == 12.0
    assert progress["eta_s"] == 1900.0
    assert progress["retries_waiting"] == 3
    assert progress["spent_usd"] == 4.8
    assert progress["estimated_total_usd"] == 20.0


def test_json_cadence_matches_plain() -> None:
    clocks = Clocks()
    reporter, out = json_reporter(clocks, interval_s=30.0)
    reporter.start(500)
    for t in (10.0, 29.0, 30.0, 45.0, 59.0, 60.0):
        clocks.t = t
        reporter.update(snap())
    reporter.finish(snap(), "deadline")
    events = [strict_json(line)["event"] for line in out.getvalue().splitlines()]
    assert events == ["started", "progress", "progress", "finished"]


def test_json_never_emits_nan_or_infinity() -> None:
    reporter, out = json_reporter(Clocks())
    bad = snap(
        succeeded=0,
        failed=0,
        spent_usd=math.nan,
        estimated_total_usd=math.inf,
        elapsed_s=math.inf,
    )
    reporter.update(bad)
    reporter.event("warning", "odd", ratio=math.nan, costs=[1.0, -math.inf])
    reporter.finish(bad, "stopped")
    text = out.getvalue()
    assert "NaN" not in text
    assert "Infinity" not in text
    records = [strict_json(line) for line in text.splitlines()]
    assert len(records) == 3
    assert records[0]["eta_s"] is None
    assert records[0]["spent_usd"] is None
    assert records[0]["estimated_total_usd"] is None
    assert records[1]["ratio"] is None
    assert records[1]["costs"] == [1.0, None]


def test_json_events_and_finish() -> None:
    reporter, out = json_reporter(Clocks())
    reporter.event("WARNING", "provider venice stopped", provider="venice", path=Path("/x/y"))
    reporter.event("error", "clash", ts="not mine", event="nor this", token="t0k3n")
    reporter.finish(snap(succeeded=498, failed=2), "completed")
    warning, clash, finished = (strict_json(line) for line in out.getvalue().splitlines())
    assert warning == {
        "ts": "2026-11-21T03:00:00Z",
        "event": "warning",
        "message": "provider venice stopped",
        "provider": "venice",
        "path": "/x/y",
    }
    assert (clash["ts"], clash["event"]) == ("2026-11-21T03:00:00Z", "error")
    assert (clash["ts_"], clash["event_"]) == ("not mine", "nor this")
    assert clash["token"] == REDACTED
    assert finished["event"] == "finished"
    assert finished["outcome"] == "completed"
    assert finished["done"] == 500


def test_json_circular_field_still_gives_one_json_line() -> None:
    reporter, out = json_reporter(Clocks())
    loop: list[Any] = []
    loop.append(loop)
    reporter.event("info", "circular", loop=loop)
    record = strict_json(out.getvalue())
    assert (record["event"], record["message"]) == ("info", "circular")
    assert "[...]" in json.dumps(record["loop"])  # cut off as text, not an endless recursion


# --- Quiet -----------------------------------------------------------------------------


def test_quiet_prints_nothing_but_errors() -> None:
    clocks = Clocks()
    out = io.StringIO()
    reporter = QuietReporter(out, wall_clock=clocks.wall)
    reporter.start(500)
    for t in (0.0, 60.0, 120.0, 600.0):
        clocks.t = t
        reporter.update(snap())
    reporter.event("info", "started")
    reporter.event("warning", "deprecated setting")
    reporter.finish(snap(succeeded=498, failed=2), "completed")
    assert out.getvalue() == ""
    reporter.event("error", "provider venice stopped: 401", provider="venice")
    assert out.getvalue() == (
        "2026-11-21T03:10:00Z ERROR provider venice stopped: 401 provider=venice\n"
    )


def test_quiet_json_errors_are_json() -> None:
    out = io.StringIO()
    reporter = QuietReporter(out, wall_clock=lambda: START, as_json=True)
    reporter.event("error", "boom", job="ab12")
    assert strict_json(out.getvalue())["message"] == "boom"


# --- Rich ------------------------------------------------------------------------------


def rich_console(width: int = 120) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=width), out


def test_rich_bar_shows_done_total_rate_eta_retries_and_spend() -> None:
    console, out = rich_console(width=200)
    reporter = RichReporter(console)
    reporter.start(500)
    reporter.update(snap())
    reporter.close()
    text = out.getvalue()
    assert "120/500" in text
    assert "12.0 jobs/min" in text
    assert "eta 31m40s" in text
    assert "retries waiting 3" in text
    assert "this run: 118 ok, 2 failed, $4.80" in text
    assert "est. $20.00" in text
    assert "10m00s elapsed" in text


def test_rich_events_print_verbatim_and_finish_summarises() -> None:
    console, out = rich_console()
    reporter = RichReporter(console)
    reporter.start(500)
    reporter.event("warning", "provider venice stopped: [bold]402[/bold]", api_key="sk-x")
    reporter.finish(snap(succeeded=498, failed=2, elapsed_s=1800.0), "completed")
    reporter.close()  # a second close is harmless
    text = out.getvalue()
    assert "WARNING provider venice stopped: [bold]402[/bold]" in text  # no markup
    assert "sk-x" not in text
    assert "finished: " not in text  # the command's end-of-run table says how it ended
    assert "500/500 done" in text
    assert "30m00s elapsed" in text


def test_rich_shows_pause_reason() -> None:
    console, out = rich_console()
    reporter = RichReporter(console)
    reporter.update(snap(paused="venice paused 12s (rate limit)"))
    reporter.close()
    assert "venice paused 12s (rate limit)" in out.getvalue()


# --- Factory ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("log_format", "quiet", "is_tty", "kind"),
    [
        ("auto", False, True, RichReporter),
        ("auto", False, False, PlainReporter),
        ("plain", False, True, PlainReporter),
        ("json", False, True, JsonReporter),
        ("json", False, False, JsonReporter),
        ("auto", True, True, QuietReporter),
        ("json", True, False, QuietReporter),
    ],
)
def test_make_reporter_picks(log_format: str, quiet: bool, is_tty: bool, kind: type) -> None:
    reporter = make_reporter(
        log_format=log_format,
        quiet=quiet,
        stream=io.StringIO(),
        is_tty=is_tty,
        clock=lambda: 0.0,
        wall_clock=lambda: START,
        interval_s=60.0,
    )
    assert type(reporter) is kind
    reporter.close()


def test_make_reporter_passes_the_interval_and_clocks() -> None:
    clocks = Clocks()
    out = io.StringIO()
    reporter = make_reporter(
        log_format="plain",
        quiet=False,
        stream=out,
        is_tty=False,
        clock=clocks.monotonic,
        wall_clock=clocks.wall,
        interval_s=10.0,
    )
    reporter.start(500)
    clocks.t = 10.0
    reporter.update(snap())
    assert out.getvalue().splitlines()[-1].startswith("2026-11-21T03:00:10Z progress 120/500")


def test_make_reporter_refuses_unknown_format() -> None:
    with pytest.raises(ValueError, match="auto, plain or json"):
        make_reporter(log_format="xml", quiet=False, stream=io.StringIO(), is_tty=False)


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_an_80_column_terminal_keeps_bar_count_eta_and_spend_on_one_line() -> None:
    console, out = rich_console(width=80)
    reporter = RichReporter(console)
    reporter.update(
        snap(total=300, done_before=83, succeeded=5, failed=0, spent_usd=0.25,
             paused="venice paused 12s (rate limit: x-ratelimit-reset-requests in the past)")
    )  # fmt: skip
    reporter.close()
    screens = [ANSI.sub("", part) for part in out.getvalue().split("\r")]
    last = [line for line in screens if "done" in line][-1].strip("\n")
    assert len(last) <= 79  # one line, never wrapped onto a second
    assert last.startswith("━") and "88/300 done" in last
    assert "eta " in last and "$0.25" in last
    assert "jobs/min" not in last  # the low-value fields went first


def test_the_live_line_drops_fields_from_the_least_useful() -> None:
    s = snap(total=300, done_before=83, succeeded=5, failed=0, spent_usd=0.25)
    wide, narrow, tiny = live_line(s, 200), live_line(s, 58), live_line(s, 34)
    assert "this run: 5 ok, $0.25" in wide and "retries waiting 3" in wide
    assert "elapsed" in wide and "jobs/min" in wide and "est. $20.00" in wide
    assert len(narrow) <= 58 and "eta" in narrow and "$0.25" in narrow
    assert "retries waiting" not in narrow and "jobs/min" not in narrow
    assert len(tiny) <= 34 and tiny.startswith("88/300 done") and "$0.25" in tiny
