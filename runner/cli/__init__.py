"""The `runner` command: parse arguments, call `app`, render the result. No business logic.

One error boundary (`_guard`): known errors become one line on stderr and an exit code,
never a traceback. RUNNER_DEBUG=1 re-raises them for a traceback.

Each command imports what it uses when it runs (`runner.app` and the rest load the HTTP,
SQL and image libraries): `runner --help` and a mistyped flag answer at once.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar, cast

import click

from runner.errors import (
    ExitCode,
    ManifestError,
    MissingDriver,
    NewerSchema,
    RunnerError,
    StoreError,
)
from runner.records import JobState, ProgressReporter
from runner.settings import (
    DEFAULT_CONCURRENCY,
    DEFAULT_GRACE_S,
    DEFAULT_LEASE_S,
    DEFAULT_MAX_ATTEMPTS,
    ENV_CONCURRENCY,
    ENV_DB,
    ENV_DEBUG,
    ENV_MAX_ATTEMPTS,
    SETTING_FLAGS,
    env_name,
)

if TYPE_CHECKING:
    from rich.console import Console

    from runner import app

T = TypeVar("T")


# Wide enough that no record is ever wrapped, short of rich's own limits.
UNWRAPPED_WIDTH = 100_000


def err() -> Console:
    """Standard error through rich (imported on first use: rich takes a while to load)."""
    return _console(sys.stderr)


def out() -> Console:
    return _console(sys.stdout)


def _console(stream: TextIO) -> Console:
    """A terminal gets rich's layout at its width. Anything else (a pipe, a file, cron's
    mail) gets no wrapping at all: one record per line and whole paths, for grep and cut."""
    from rich.console import Console

    if stream.isatty():
        return Console(file=stream, highlight=False)
    return Console(
        file=cast(TextIO, _TrimmedLines(stream)),
        highlight=False,
        width=UNWRAPPED_WIDTH,
        soft_wrap=True,
    )


class _TrimmedLines(io.TextIOBase):
    """Writes to `stream` without the spaces rich pads table cells with at line ends."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(_LINE_END_SPACES.sub("\n", text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False


_LINE_END_SPACES = re.compile(r"[ \t]+\n")


MANIFEST = click.argument(
    "manifest", type=click.Path(path_type=Path, dir_okay=False), metavar="MANIFEST"
)
DB = click.option(
    "--db",
    envvar=ENV_DB,
    show_envvar=True,
    metavar="PATH_OR_URL",
    help="Database file or SQLAlchemy URL (default: <manifest stem>.db beside the manifest).",
)


ErrorSink = Callable[[ExitCode, str], None]


@contextmanager
def _guard(also: ErrorSink | None = None) -> Iterator[None]:
    """Known errors: one line on stderr (and to `also`, e.g. the JSON event stream)."""
    try:
        yield
    except (ManifestError, RunnerError) as exc:
        if os.environ.get(ENV_DEBUG):
            raise
        from rich.markup import escape

        from runner.redact import redact

        message, code = redact(str(exc)), _exit_code_for(exc)
        err().print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
        if also is not None:
            also(code, message)
        raise SystemExit(code) from None


def _exit_code_for(exc: RunnerError) -> ExitCode:
    if isinstance(exc, ManifestError | NewerSchema | MissingDriver):  # nothing sent: fix, rerun
        return ExitCode.USAGE
    if isinstance(exc, StoreError):  # a full disk, a lost server: the work is kept for later
        return ExitCode.EARLY
    return ExitCode.FAILED


def _run_async(function: Callable[[], Awaitable[T]], also: ErrorSink | None = None) -> T:
    import anyio

    with _guard(also):
        try:
            return anyio.run(function)
        except KeyboardInterrupt:
            # The run has put back what it held; nothing is lost.
            err().print("interrupted: run the same command again to resume (exit 75)")
            raise SystemExit(ExitCode.EARLY) from None


@click.group(
    context_settings={
        "help_option_names": ["-h", "--help"],
        "show_default": True,
    }
)
@click.version_option(package_name="runner")
def main() -> None:
    """Run thousands of paid image edits from a YAML manifest: resumable, 402-safe.

    Exit codes of `run`: 0 all succeeded, 1 some failed, 2 usage or manifest error
    (nothing sent), 3 payment required (top up, run again), 4 credentials rejected,
    75 stopped early with work left (run again).
    """


@main.command()
@MANIFEST
@DB
@click.option(
    "--max-attempts",
    type=click.IntRange(1, 100),
    envvar=ENV_MAX_ATTEMPTS,
    show_envvar=True,
    default=DEFAULT_MAX_ATTEMPTS,
    show_default=True,
    help="HTTP attempts per job, the first one included.",
)
@click.option(
    "--deadline",
    metavar="WHEN",
    help="Take no new job after this: a duration (6h, 90m) or a clock time (07:30).",
)
@click.option(
    "--max-jobs", type=click.IntRange(min=1), metavar="N", help="Send at most N jobs in this run."
)
@click.option(
    "--max-cost",
    type=click.FloatRange(min=0, min_open=True),
    metavar="USD",
    help="Take no job that could take this run's spend over USD.",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=DEFAULT_GRACE_S,
    metavar="SECONDS",
    help="After SIGINT/SIGTERM, how long requests already sent may take to finish.",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "plain", "json"]),
    default="auto",
    help="auto: a live display on a terminal, plain lines otherwise.",
)
@click.option(
    "--progress-interval",
    type=click.FloatRange(min=1),
    default=60.0,
    metavar="SECONDS",
    help="How often plain and json logs print a progress line.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    envvar=ENV_CONCURRENCY,
    show_envvar=True,
    metavar="N",
    help="Requests in flight per provider, over each profile's `concurrency` "
    f"(default: the manifest's, else {DEFAULT_CONCURRENCY}).",
)
@click.option(
    "--lease",
    type=click.FloatRange(min=1),
    default=DEFAULT_LEASE_S,
    metavar="SECONDS",
    help="How long a claimed job stays this run's without a heartbeat (renewed every third "
    "of it): after a crash or a pause, other runners take its jobs after this long.",
)
@click.option(
    "--wait",
    is_flag=True,
    help="mode: batch profiles: look at open batches again and again (30 s, doubling to "
    "10 min) until they end or the deadline comes, instead of exiting 75 to be run again.",
)
@click.option(
    "--keep-files",
    is_flag=True,
    help="mode: batch profiles: leave uploaded images and batch files at the provider "
    "(by default they are deleted once no open batch needs them).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress; errors and the result only.")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="-v: the runner's debug records (every finished job); -vv: libraries' too.",
)
def run(
    manifest: Path,
    db: str | None,
    max_attempts: int,
    deadline: str | None,
    max_jobs: int | None,
    max_cost: float | None,
    grace: float,
    log_format: str,
    progress_interval: float,
    concurrency: int | None,
    lease: float,
    wait: bool,
    keep_files: bool,
    quiet: bool,
    verbose: int,
) -> None:  # fmt: skip
    """Send every job that is not done yet, then exit (see exit codes above)."""
    from rich.markup import escape

    from runner import app
    from runner.cli import present
    from runner.cli.progress import make_reporter
    from runner.records import RunLimits
    from runner.redact import redact
    from runner.settings import RetrySettings, RunSettings

    # JSON events are data: they go to stdout, for `| jq`; human logs stay on stderr.
    as_json = log_format == "json"
    reporter = make_reporter(
        log_format=log_format,
        quiet=quiet,
        stream=sys.stdout if as_json else sys.stderr,
        is_tty=sys.stderr.isatty(),
        interval_s=progress_interval,
    )
    _setup_logging(verbose, reporter)
    options = app.Options(
        db=db,
        settings=RunSettings(retry=RetrySettings(max_attempts), lease_s=lease),
        limits=RunLimits(deadline, max_jobs, max_cost),
        grace_s=grace,
        concurrency=concurrency,
        reporter=reporter,
        handle_signals=True,
        wait=wait,
        keep_files=keep_files,
    )
    try:
        outcome = _run_async(lambda: app.run(manifest, options), _json_result if as_json else None)
    finally:
        reporter.close()
    if as_json:
        click.echo(json.dumps(_outcome_document(outcome)))
    else:
        for stop in outcome.stops:
            if stop.kind == "signal":  # said when it came; the verdict below says the rest
                continue
            where = "run" if stop.provider == "*" else stop.provider
            message = escape(redact(stop.message))
            err().print(f"[bold red]stopped {where} ({stop.kind}):[/] {message}")
        report = outcome.report
        table = present.run_table(
            outcome.summary,
            succeeded=report.succeeded,
            failed_by_kind=report.failed_by_kind,
            retries=report.retries,
            spent_usd=report.spent_usd,
            elapsed_s=outcome.elapsed_s,
            verdict=_exit_hint(outcome.exit_code, outcome.summary.counts.get("cancelled", 0)),
        )
        err().print(table)
    raise SystemExit(outcome.exit_code)


def _outcome_document(outcome: app.RunOutcome) -> dict[str, Any]:
    from runner.cli import present
    from runner.redact import redact_document

    document = {
        "ts": _utc_now(),
        "event": "result",
        "exit_code": outcome.exit_code,
        "stops": [asdict(stop) for stop in outcome.stops],
        **present.status_document(outcome.summary),
    }
    return dict(redact_document(document))


def _json_result(code: ExitCode, message: str) -> None:
    """A run that could not start still ends its JSON stream with a `result` event."""
    click.echo(json.dumps({"ts": _utc_now(), "event": "result", "exit_code": code,
                           "error": message}))  # fmt: skip


def _utc_now() -> str:
    from datetime import UTC, datetime

    from runner.cli.progress import utc_stamp

    return utc_stamp(datetime.now(UTC))


def _exit_hint(code: ExitCode, cancelled: int = 0) -> str:
    if code == ExitCode.OK and cancelled:
        return f"every job done, {cancelled} of them cancelled by hand (exit 0)"
    return {
        ExitCode.OK: "all jobs succeeded (exit 0)",
        ExitCode.FAILED: "some jobs failed (exit 1): see `runner export`; `runner retry` re-queues",
        ExitCode.PAYMENT: "payment required (exit 3): top up, then run the same command again",
        ExitCode.AUTH: "credentials rejected (exit 4): fix the API key, then run again",
        ExitCode.EARLY: "stopped with work left (exit 75): run the same command again later",
    }.get(code, f"exit {code}")


@main.command()
@MANIFEST
@DB
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--watch", is_flag=True, help="Refresh in place until Ctrl-C (for a second terminal)."
)
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, metavar="SECONDS",
              help="How often --watch refreshes.")  # fmt: skip
def status(manifest: Path, db: str | None, as_json: bool, watch: bool, interval: float) -> None:
    """Jobs per state, tokens used and cost so far, and whether the last run is running."""
    from runner import app
    from runner.cli import present
    from runner.redact import redact_document

    if watch:
        _watch_status(manifest, db, interval)
    summary = _run_async(lambda: app.status(manifest, app.Options(db=db)))
    if as_json:
        click.echo(json.dumps(redact_document(present.status_document(summary))))
    else:
        present.print_summary(summary, out())


def _watch_status(manifest: Path, db: str | None, interval: float) -> None:
    """`status` again and again, redrawn in place on a terminal (a dated table per refresh
    elsewhere), until SIGINT or SIGTERM, which end it quietly with exit 0: watching sends
    nothing and holds no lock, so stopping it is the normal way out."""
    import signal
    import threading
    from datetime import datetime

    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from runner import app
    from runner.cli import present

    # The signal only asks; the loop ends between refreshes. Raising from the handler could
    # land inside a refresh, with the database open on its own thread, and hang its exit.
    stop = threading.Event()

    def quit_quietly(signum: int, frame: object) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, quit_quietly)
    console = out()

    def frame() -> Group:
        summary = _run_async(lambda: app.status(manifest, app.Options(db=db)))
        now = datetime.now().astimezone()
        head = f"{manifest} · {now:%Y-%m-%d %H:%M:%S %z} · every {interval:g} s"
        head += " · Ctrl-C to quit" if console.is_terminal else ""
        return Group(Text(head, style="dim"), present.summary_table(summary))

    if not console.is_terminal:
        while not stop.is_set():
            console.print(frame())
            stop.wait(interval)
        raise SystemExit(ExitCode.OK)
    with Live(frame(), console=console, auto_refresh=False) as live:
        while not stop.wait(interval):
            live.update(frame(), refresh=True)
    raise SystemExit(ExitCode.OK)


@main.command()
@MANIFEST
@DB
@click.option("--job", "key", metavar="KEY", help="Only the job whose key starts with KEY.")
def retry(manifest: Path, db: str | None, key: str | None) -> None:
    """Move failed jobs back to pending with a fresh set of attempts (history kept);
    with --job, a cancelled job too."""
    from runner import app

    count = _run_async(lambda: app.retry(manifest, app.Options(db=db), key))
    out().print(f"{count} job{'s' if count != 1 else ''} moved back to pending")


@main.command()
@MANIFEST
@DB
@click.option("--job", "key", metavar="KEY", help="Only the job whose key starts with KEY.")
@click.option(
    "--state",
    type=click.Choice(["pending", "failed", "submitted"]),
    default=None,
    help="Cancel every job in this state (default with no --job: pending).",
)
def cancel(manifest: Path, db: str | None, key: str | None, state: str | None) -> None:
    """Mark jobs cancelled so no run sends them (`runner retry --job KEY` undoes it)."""
    from runner import app

    if key is None and state is None:
        state = "pending"
    states = [JobState(state)] if state else [JobState.PENDING, JobState.FAILED]
    count = _run_async(lambda: app.cancel(manifest, app.Options(db=db), key, states))
    if state == "submitted":  # the provider cancels; the next run collects what finished
        out().print(
            f"{count} submitted job{'s' if count != 1 else ''} in batches cancelled at the "
            "provider; the next `runner run` collects the lines that had finished and marks "
            "the rest cancelled"
        )
        return
    out().print(f"{count} job{'s' if count != 1 else ''} cancelled")


@main.command()
@MANIFEST
@DB
@click.option(
    "--state",
    type=click.Choice([s.value for s in JobState]),
    default=None,
    help="Only jobs in this state.",
)
@click.option("--job", "key", metavar="KEY", help="Only the job whose key starts with KEY.")
@click.option(
    "--search", metavar="TEXT", help="Only jobs with TEXT in the prompt, a path or the error."
)
@click.option(
    "-n", "--limit", type=click.IntRange(min=1), metavar="N", help="Show the first N only."
)
@click.option(
    "--group-by",
    type=click.Choice(["error"]),
    default=None,
    help="One line per distinct error, with its count, instead of one per job.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def jobs(
    manifest: Path,
    db: str | None,
    state: str | None,
    key: str | None,
    search: str | None,
    limit: int | None,
    group_by: str | None,
    as_json: bool,
) -> None:  # fmt: skip
    """List the manifest's jobs: state, attempts, cost, image, prompt, output, last error."""
    from runner import app
    from runner.cli import present

    chosen = app.JobFilter(state=state, key=key, search=search)
    options = app.Options(db=db)
    if group_by == "error":
        grouping = present.ErrorGroups()
        _run_async(lambda: app.list_jobs(manifest, options, chosen, grouping.add))
        groups = grouping.ordered()
        if as_json:
            for group in groups[:limit]:
                click.echo(json.dumps(group, ensure_ascii=False))
        else:
            out().print(present.error_groups_table(groups[:limit]))
        _say_if_cut(len(groups), limit, "errors")
        return
    terminal = out() if sys.stdout.isatty() and not as_json else None
    listing = present.JobListing(sys.stdout, manifest.resolve().parent, terminal)
    show = partial(present.write_jsonl, stream=sys.stdout) if as_json else listing.add
    with _until_the_reader_leaves():
        total = _run_async(lambda: app.list_jobs(manifest, options, chosen, show, limit))
        listing.close()
    if not total and not as_json:
        out().print("no jobs" + (f" in state {state}" if state else "") +
                    (f" matching {search!r}" if search else ""))  # fmt: skip
    _say_if_cut(total, limit, "jobs")


@contextmanager
def _until_the_reader_leaves() -> Iterator[None]:
    """`runner jobs | head`: when the reader has had enough, stop quietly (exit 0), as
    `git log | head` does, instead of a traceback for the closed pipe."""
    try:
        yield
    except BrokenPipeError:
        # Python flushes stdout once more on the way out; into /dev/null, not the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None


def _say_if_cut(total: int, limit: int | None, what: str) -> None:
    if limit is not None and total > limit:
        err().print(f"showing {limit} of {total} {what} (-n/--limit)")


@main.command()
@MANIFEST
@DB
def models(manifest: Path, db: str | None) -> None:
    """Each provider's edit models with their limits and prices (Venice: its live list)."""
    from rich.table import Table

    from runner import app

    rows, notes = _run_async(lambda: app.models(manifest, app.Options(db=db)))
    table = Table(box=None, pad_edge=False)
    for column in ("provider", "model", "limits", "price"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row.provider, row.model, row.limits, row.price)
    out().print(table)
    for note in notes:
        err().print(note)


@main.command()
@MANIFEST
@DB
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    show_default=False,
    help="The HTML file to write (default: report.html beside the manifest).",
)
@click.option(
    "--all",
    "every_job",
    is_flag=True,
    help="A card for every job; by default a batch of more than 2,000 jobs shows every "
    "failed one and an even sample of the rest (the page says which).",
)
def report(manifest: Path, db: str | None, output: Path | None, every_job: bool) -> None:
    """One HTML page: totals, failures and reasons, before/after thumbnails grouped by
    prompt, filters by state, folder and text; a click on a thumbnail shows the full-size
    pictures (linked from disk, the thumbnails are embedded)."""
    from contextlib import ExitStack

    from runner import app
    from runner.files.html_report import REPORT_MAX_JOBS, default_output

    target = output if output is not None else default_output(manifest)
    with ExitStack() as stack:
        # A bar on a terminal; elsewhere (cron mail, CI logs) a line per tenth, enough to
        # see that a long report is moving without flooding the log.
        bar = None
        if sys.stderr.isatty():
            from rich.progress import Progress

            bar = stack.enter_context(Progress(console=err(), transient=True))
        task = bar.add_task("report: thumbnails", total=None) if bar is not None else None
        printed = -1

        def on_progress(done: int, total: int) -> None:  # called from a worker thread
            nonlocal printed
            if bar is not None and task is not None:
                bar.update(task, completed=done, total=total)
                return
            tenth = done * 10 // total if total else 10
            if total and tenth > printed:
                printed = tenth
                click.echo(f"report: {done}/{total} thumbnails ({tenth * 10}%)", err=True)

        limit = None if every_job else REPORT_MAX_JOBS
        stats = _run_async(
            lambda: app.report(manifest, app.Options(db=db), target, on_progress, limit)
        )
    out().print(
        f"wrote {target} ({stats.jobs} jobs, {stats.bytes_written / 1e6:.1f} MB)", markup=False
    )


@main.command()
@MANIFEST
@DB
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet", "imagefolder"]),
              default="jsonl", show_default=True,
              help="parquet: a table (a jobs_from: table's own columns first); imagefolder: "
              "the output images plus metadata.jsonl, for datasets.load_dataset.")  # fmt: skip
@click.option("-o", "--output", type=click.Path(path_type=Path, allow_dash=True), default="-",
              help="File to write (default: stdout); a folder for imagefolder.")  # fmt: skip
def export(manifest: Path, db: str | None, fmt: str, output: Path) -> None:
    """One row per job: inputs, status, attempts, error, usage, cost, outputs."""
    from runner import app
    from runner.cli import present

    if fmt in ("parquet", "imagefolder"):
        if str(output) == "-":
            raise click.UsageError(
                f"--format {fmt} needs -o (a {'folder' if fmt == 'imagefolder' else 'file'})"
            )
        count = _run_async(lambda: app.export_dataset(manifest, app.Options(db=db), fmt, output))
        what = "images" if fmt == "imagefolder" else "rows"
        err().print(f"wrote {count} {what} to {output}", markup=False)
        return
    rows = _run_async(lambda: app.export(manifest, app.Options(db=db)))
    writer = present.write_csv if fmt == "csv" else present.write_jsonl
    if str(output) == "-":
        writer(rows, sys.stdout)
        return
    with output.open("w", encoding="utf-8", newline="") as stream:
        writer(rows, stream)


@main.command()
@MANIFEST
@DB
def validate(manifest: Path, db: str | None) -> None:
    """Check the manifest and every job left to send as `run` would; send nothing, store
    nothing, need no key."""
    from runner import app
    from runner.money import format_usd
    from runner.records import entry_label

    try:
        result = _run_async(lambda: _listing_problems(app.validate(manifest, app.Options(db=db))))
    except _Problems as problems:
        for problem in problems.error.problems:
            err().print(f"error: {problem}", markup=False)
        shown = len(problems.error.problems)
        err().print(
            f"{shown} problem{'s' if shown > 1 else ''} in the manifest: nothing checked further"
        )
        raise SystemExit(ExitCode.USAGE) from None
    for note in result.notes:
        err().print(note, markup=False)
    for check in result.bad:
        where = entry_label(check.entry)
        image = f" {check.image}" if check.image else ""  # a bad table row names itself
        err().print(f"{result.path}: {where}{image}: {check.problem}", markup=False)
    left, bad = result.left, len(result.bad)
    out().print(f"{result.jobs} jobs: {result.done} done already, {left} left to "
                f"send, {bad} of them would fail without being sent")  # fmt: skip
    unpriced = f" ({result.unpriced} jobs with no known price left out)" if result.unpriced else ""
    out().print(
        f"estimated cost of what is left: {format_usd(result.estimated_cost_usd, 2)}{unpriced}"
        " (from typical token counts or per-edit prices)"
    )
    raise SystemExit(ExitCode.FAILED if result.bad else ExitCode.OK)


class _Problems(Exception):
    """Carries a manifest's problems past the one-line error boundary, to be listed."""

    def __init__(self, error: ManifestError) -> None:
        self.error = error


async def _listing_problems(work: Awaitable[T]) -> T:
    try:
        return await work
    except ManifestError as exc:
        if len(exc.problems) > 1:
            raise _Problems(exc) from None
        raise


@main.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False),
              default=Path("runner-demo"), show_default=True,
              help="Where the demo's manifest, images and outputs go.")  # fmt: skip
@click.option("--batch", is_flag=True,
              help="Through the fake's Batch API (mode: batch): submit, then collect.")  # fmt: skip
def demo(directory: Path, batch: bool) -> None:
    """Run the example manifest offline against the built-in fake provider."""
    from runner.cli.demo import run_demo

    _setup_logging(verbosity=0)
    with _guard():
        code = run_demo(directory, out(), batch)
    raise SystemExit(code)


class ReporterHandler(logging.Handler):
    """Hands log records to the progress reporter, which owns the terminal during a run."""

    def __init__(self, reporter: ProgressReporter) -> None:
        super().__init__()
        self._reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        level = "error" if record.levelno >= logging.ERROR else (
            "warning" if record.levelno >= logging.WARNING else "info")  # fmt: skip
        try:
            self._reporter.event(level, record.getMessage())
        except Exception:  # a logging call must never break the run
            self.handleError(record)


# Libraries that log at INFO or DEBUG (httpx every request, Pillow every PNG chunk):
# the user sees their records only with -vv.
THIRD_PARTY_LOGGERS = ("httpx", "httpcore", "alembic", "asyncio", "PIL",
                       "sqlalchemy", "asyncpg", "urllib3", "web3", "eth_account")  # fmt: skip


def _setup_logging(verbosity: int, reporter: ProgressReporter | None = None) -> None:
    """0: the runner's info, warnings and errors; 1 (-v): its debug records too; 2 (-vv):
    every library's debug records as well."""
    logging.basicConfig(
        level=logging.DEBUG if verbosity >= 2 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("runner").setLevel(logging.DEBUG if verbosity >= 1 else logging.INFO)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbosity >= 2 else logging.WARNING)
    root = logging.getLogger()
    if reporter is not None:
        # Warnings and errors go through the progress display (above a live bar, or as
        # plain/JSON lines), so the two never interleave on the terminal.
        root.handlers[:] = [ReporterHandler(reporter)]
    from runner.redact import protect_handlers, protect_logger

    # Whatever logger a record comes from, no key reaches the terminal or a log file.
    protect_handlers(root.handlers)
    protect_logger(logging.getLogger("runner"))


def _read_settings_from_environment(group: click.Group) -> None:
    """Give every setting flag of every command its RUNNER_<FLAG> variable, shown in
    `--help` (one scheme, named in `runner.settings`)."""
    for command in group.commands.values():
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            long_flag = next((o for o in param.opts if o.startswith("--")), None)
            if long_flag and long_flag[2:] in SETTING_FLAGS:
                param.envvar = env_name(long_flag)
                param.show_envvar = True


_read_settings_from_environment(main)
