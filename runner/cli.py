"""The `runner` command: parse arguments, call `app`, render the result. No business logic.

One error boundary (`_guard`): known errors become one line on stderr and an exit code,
never a traceback. RUNNER_DEBUG=1 re-raises them for a traceback.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click
from rich.console import Console
from rich.table import Table

from . import app
from .config import ENV_DB, ENV_MAX_ATTEMPTS, RetrySettings, RunSettings
from .errors import ManifestError, RunnerError
from .models import ExportRow, Summary

T = TypeVar("T")
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

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


@contextmanager
def _guard() -> Iterator[None]:
    try:
        yield
    except (ManifestError, RunnerError) as exc:
        if os.environ.get("RUNNER_DEBUG"):
            raise
        err.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
        raise SystemExit(app.EXIT_USAGE if isinstance(exc, ManifestError) else 1) from None


def _run_async(function: Callable[[], Awaitable[T]]) -> T:
    with _guard():
        try:
            return anyio.run(function)
        except KeyboardInterrupt:
            # The run has put back what it held; nothing is lost.
            err.print("interrupted: run the same command again to resume (exit 75)")
            raise SystemExit(app.EXIT_EARLY) from None


@click.group(
    context_settings={
        "help_option_names": ["-h", "--help"],
        # Every flag also reads RUNNER_<COMMAND>_<FLAG>, e.g. RUNNER_RUN_VERBOSE=1.
        "auto_envvar_prefix": "RUNNER",
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
    default=RetrySettings().max_attempts,
    show_default=True,
    help="HTTP attempts per job, the first one included.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every finished job.")
def run(manifest: Path, db: str | None, max_attempts: int, verbose: bool) -> None:
    """Send every job that is not done yet, then exit (see exit codes above)."""
    _setup_logging(verbose)
    options = app.Options(db=db, settings=RunSettings(retry=RetrySettings(max_attempts)))
    outcome = _run_async(lambda: app.run(manifest, options))
    _print_summary(outcome.summary, err)
    for stop in outcome.stops:
        err.print(f"[bold red]stopped {stop.provider} ({stop.kind}):[/] {stop.message}")
    err.print(_exit_hint(outcome.exit_code))
    raise SystemExit(outcome.exit_code)


def _exit_hint(code: int) -> str:
    return {
        app.EXIT_OK: "all jobs succeeded (exit 0)",
        app.EXIT_FAILED: "some jobs failed (exit 1): see `runner export`; `runner retry` re-queues",
        app.EXIT_PAYMENT: "payment required (exit 3): top up, then run the same command again",
        app.EXIT_AUTH: "credentials rejected (exit 4): fix the API key, then run again",
        app.EXIT_EARLY: "stopped with work left (exit 75): run the same command again later",
    }.get(code, f"exit {code}")


@main.command()
@MANIFEST
@DB
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(manifest: Path, db: str | None, as_json: bool) -> None:
    """Jobs per state, tokens used and cost so far."""
    summary = _run_async(lambda: app.status(manifest, app.Options(db=db)))
    if as_json:
        click.echo(json.dumps(status_document(summary)))
    else:
        _print_summary(summary, out)


def status_document(summary: Summary) -> dict[str, Any]:
    totals = summary.totals
    return {
        "counts": dict(summary.counts),
        "usage": {
            "input_tokens": totals.input_tokens,
            "output_tokens": totals.output_tokens,
            "total_tokens": totals.total_tokens,
        },
        "cost_usd": round(totals.cost_usd, 6),
        "last_run": summary.last_run,
    }


def _print_summary(summary: Summary, console: Console) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    for state, count in summary.counts.items():
        table.add_row(state, str(count))
    totals = summary.totals
    table.add_row("tokens", f"{totals.total_tokens:,} ({totals.input_tokens:,} in, "
                  f"{totals.output_tokens:,} out)")  # fmt: skip
    table.add_row("cost", f"${totals.cost_usd:,.4f}")
    last = summary.last_run
    if last:
        ended = last["ended_at"] or "still running (or killed)"
        reason = f": {last['stop_reason']}" if last["stop_reason"] else ""
        table.add_row("last run", f"{ended}, exit {last['exit_code']}{reason}")
    console.print(table)


@main.command()
@MANIFEST
@DB
@click.option("--job", "key", metavar="KEY", help="Only the job whose key starts with KEY.")
def retry(manifest: Path, db: str | None, key: str | None) -> None:
    """Move failed jobs back to pending (their history is kept)."""
    count = _run_async(lambda: app.retry(manifest, app.Options(db=db), key))
    out.print(f"{count} failed job{'s' if count != 1 else ''} moved back to pending")


@main.command()
@MANIFEST
@DB
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl",
              show_default=True)  # fmt: skip
@click.option("-o", "--output", type=click.File("w", encoding="utf-8"), default="-",
              help="File to write (default: standard output).")  # fmt: skip
def export(manifest: Path, db: str | None, fmt: str, output: Any) -> None:
    """One row per job: inputs, status, attempts, error, usage, cost, outputs."""
    rows = _run_async(lambda: app.export(manifest, app.Options(db=db)))
    (_write_csv if fmt == "csv" else _write_jsonl)(rows, output)


def export_record(row: ExportRow) -> dict[str, Any]:
    usage = asdict(row.usage)
    cost = usage.pop("cost_usd")
    return {
        "key": row.key,
        "image": row.image,
        "mask": row.mask,
        "prompt": row.prompt,
        "provider": row.provider,
        "model": row.model,
        "params": dict(row.params),
        "status": row.status,
        "attempts": row.attempts,
        "error": row.error,
        "usage": usage,
        "cost_usd": round(cost, 8),
        "outputs": list(row.outputs),
    }


def _write_jsonl(rows: Sequence[ExportRow], stream: Any) -> None:
    for row in rows:
        stream.write(json.dumps(export_record(row), ensure_ascii=False) + "\n")


CSV_COLUMNS = (
    "key",
    "image",
    "mask",
    "prompt",
    "provider",
    "model",
    "params",
    "status",
    "attempts",
    "error",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cost_usd",
    "outputs",
)


def _write_csv(rows: Sequence[ExportRow], stream: Any) -> None:
    writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in rows:
        record = export_record(row)
        usage = record.pop("usage")
        record["params"] = json.dumps(record["params"], sort_keys=True)
        record["outputs"] = ";".join(record["outputs"])
        writer.writerow({**record, **usage})


@main.command()
@MANIFEST
def validate(manifest: Path) -> None:
    """Check the manifest and every job's files as `run` would; send nothing."""
    result = _run_async(lambda: app.validate(manifest))
    jobs = result.manifest.jobs
    for check in result.bad:
        err.print(f"{result.manifest.path}: jobs[{check.entry}] {check.image}: {check.problem}")
    out.print(f"{len(jobs)} jobs, {len(jobs) - len(result.bad)} ready, {len(result.bad)} "
              f"would fail without being sent")  # fmt: skip
    unpriced = f" ({result.unpriced} jobs with no known price left out)" if result.unpriced else ""
    out.print(
        f"estimated cost if every ready job is sent: ${result.estimated_cost_usd:,.2f}{unpriced}"
        " (an estimate from typical token counts; jobs already done in the database are"
        " not sent again)"
    )
    raise SystemExit(1 if result.bad else 0)


@main.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False),
              default=Path("runner-demo"), show_default=True,
              help="Where the demo's manifest, images and outputs go.")  # fmt: skip
def demo(directory: Path) -> None:
    """Run the example manifest offline against the built-in fake provider."""
    from .demo import run_demo

    _setup_logging(verbose=False)
    with _guard():
        code = run_demo(directory, out)
    raise SystemExit(code)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # Library chatter (httpx logs every request at INFO) is not the user's business.
    for noisy in ("httpx", "httpcore", "alembic", "aiosqlite", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
