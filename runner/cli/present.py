"""How results look: `status` as a table or JSON, `export` as JSONL or CSV, job lists.

Pure functions from domain data to text or plain dicts; the CLI decides where they go.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from runner.cli.progress import one_line
from runner.manifest.durations import format_duration
from runner.money import format_usd
from runner.records import ExportRow, Summary, short_key

# Money in JSON: to 1/100 of a cent, as the tables show it; a per-job cost can be a few
# thousandths of a dollar, so whole cents would lose it.
MONEY_PLACES = 4


def status_document(summary: Summary) -> dict[str, Any]:
    totals = summary.totals
    last_run = summary.last_run
    if last_run is not None:  # the process tag is for the runner's own checks, not a person
        last_run = {k: v for k, v in last_run.items() if k != "process_tag"}
    return {
        "counts": dict(summary.counts),
        "usage": {
            "input_tokens": totals.input_tokens,
            "output_tokens": totals.output_tokens,
            "total_tokens": totals.total_tokens,
        },
        "cost_usd": round(totals.cost_usd, MONEY_PLACES),
        "last_run": last_run,
        "providers": {
            name: {k: _money(k, v) for k, v in asdict(account).items()}
            for name, account in summary.providers.items()
        },
        "failed_by_kind": dict(summary.failed_by_kind),
        "never_run": summary.never_run,
        "fleet": [dict(entry) for entry in summary.fleet],
        "batches": [dict(batch) for batch in summary.batches],
        "duplicates": summary.duplicates,
    }


def _money(name: str, value: Any) -> Any:
    if name.endswith("_usd") and isinstance(value, float):
        return round(value, MONEY_PLACES)
    return value


# What each kind of failure means and what to do, for `status` (models.FailureKind).
_FAILURE_HELP = {
    "input": "bad input, nothing sent: fix the file or prompt",
    "refused": "refused by the provider: see `runner jobs --state failed`",
    "attempts": "out of attempts: `runner retry` re-queues",
    "unanswered": "no reply in time, may have been billed; not re-sent automatically: "
    "`runner retry` sends again (consider a larger timeout_s)",
    "output": "reply could not be written: free space or fix permissions, then `runner retry`",
}


def _failed_line(summary: Summary) -> str:
    failed = summary.counts.get("failed", 0)
    parts = [
        f"{count} {_FAILURE_HELP.get(kind, kind)}"
        for kind, count in sorted(summary.failed_by_kind.items())
        if kind != "unknown"
    ]
    return f"{failed} ({'; '.join(parts)})" if parts else str(failed)


def print_summary(summary: Summary, console: Console) -> None:
    console.print(summary_table(summary))


def summary_table(summary: Summary) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    for state, count in summary.counts.items():
        if state == "submitted" and not count:
            continue  # batch mode's state: shown where batches are used
        table.add_row(state, _failed_line(summary) if state == "failed" else str(count))
    totals = summary.totals
    table.add_row("tokens", f"{totals.total_tokens:,} ({totals.input_tokens:,} in, "
                  f"{totals.output_tokens:,} out)")  # fmt: skip
    table.add_row("cost", format_usd(totals.cost_usd, 4, fixed=True))
    last = summary.last_run
    if summary.never_run:
        table.add_row("last run", "never: no database yet (`runner run` makes it)")
    elif last:
        table.add_row("last run", _last_run_text(last))
    for entry in summary.fleet:
        table.add_row("runner", _fleet_text(entry))
    for batch in summary.batches:
        table.add_row("batch", _batch_text(batch))
    if summary.duplicates:
        table.add_row(
            "duplicates",
            f"{summary.duplicates} entries or table rows repeat another's image, mask, prompt "
            "and params exactly: the same job, sent and paid once",
        )
    for name, account in summary.providers.items():
        table.add_row(f"{name} spend", format_usd(account.cost_usd, 4, fixed=True))
        balance = _balance(account.balance_usd, account.balance_diem, account.balance_after_usd)
        if balance:
            table.add_row(f"{name} balance", f"{balance} (as of {account.balance_seen_at})")
    return table


def _batch_text(batch: Mapping[str, Any]) -> str:
    """`batch_abc (openai-night): in_progress, 2000 lines (1200 done, 3 failed), created
    01:02, expires 01:02 tomorrow`."""
    expires = f", expires {_local_time(batch['expires_at'])}" if batch["expires_at"] else ""
    return (
        f"{batch['id']} ({batch['provider']}): {batch['status']}, {batch['lines']} lines "
        f"({batch['completed']} done, {batch['failed']} failed), created "
        f"{_local_time(batch['created_at'])}{expires}"
    )


def _fleet_text(entry: Mapping[str, Any]) -> str:
    """`nightbox pid 81234 (run 5d92a1b3c4): live, heartbeat 3s ago, 12 jobs in hand, 4
    requests out (comet 4)`."""
    where = f"{entry['host']} pid {entry['pid']} (run {short_key(entry['run_id'])})"
    if entry["state"] == "reclaimed":
        return f"{where}: died; its jobs were taken back"
    if entry["state"] == "dead":
        return f"{where}: dead (no such process); the next run takes back its jobs"
    out = entry["in_flight"]
    sent = ", ".join(f"{provider} {n}" for provider, n in out.items())
    requests = f", {sum(out.values())} requests out ({sent})" if out else ", no request out"
    age = format_duration(entry["heartbeat_age_s"])
    silent = " (silent: likely gone; its jobs go to others when their leases lapse)"
    state = "live" if entry["state"] == "live" else "silent" + silent
    return f"{where}: {state}, heartbeat {age} ago, {entry['jobs_in_hand']} jobs in hand{requests}"


def _last_run_text(run: Mapping[str, Any]) -> str:
    started = _local_time(run["started_at"])
    state = run.get("state")
    if run["ended_at"]:
        reason = f": {run['stop_reason']}" if run["stop_reason"] else ""
        return f"ended {_local_time(run['ended_at'])}, exit {run['exit_code']}{reason}"
    if state == "running":
        return f"running now (since {started}, pid {run.get('pid')})"
    if state == "dead":
        return (
            f"started {started}, died without finishing (pid {run.get('pid')} is gone); "
            "its jobs go back to pending on the next run"
        )
    return f"started {started} on {run.get('host')}, not ended (running there, or died)"


def _local_time(iso: str) -> str:
    """`2026-11-21 04:12:09 +0100`: the stored UTC time, in this machine's zone."""
    from datetime import datetime

    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def _balance(usd: float | None, diem: float | None, after: float | None) -> str | None:
    parts = []
    if after is not None:
        parts.append(f"${after:,.4f} wallet credit")
    if usd is not None:
        parts.append(format_usd(usd, 4, fixed=True))
    if diem is not None:
        parts.append(f"{diem:,.4f} DIEM")
    return ", ".join(parts) or None


# Why requests were sent again (engine.retry.retry_cause), for the end-of-run table.
_RETRY_CAUSES = {
    "429": "rate limit (429)",
    "5xx": "server error (5xx)",
    "network": "network",
    "timeout": "no reply in time",
    "other": "bad reply",
}
_FAILURE_SHORT = {
    "input": "bad input",
    "refused": "refused by the provider",
    "attempts": "out of attempts",
    "unanswered": "no reply in time",
    "output": "output not written",
    "row": "unusable table row",
}


def run_table(
    summary: Summary,
    *,
    succeeded: int,
    failed_by_kind: Mapping[str, int],
    retries: Mapping[str, int],
    spent_usd: float,
    elapsed_s: float,
    verdict: str,
) -> Table:
    """What one run did, then where the whole manifest stands, then the verdict."""
    table = Table(show_header=False, box=None, pad_edge=False)
    failed = sum(failed_by_kind.values())
    table.add_row("succeeded", str(succeeded))
    table.add_row("failed", _counted(failed, failed_by_kind, _FAILURE_SHORT))
    table.add_row("retries", _counted(sum(retries.values()), retries, _RETRY_CAUSES))
    table.add_row(
        "spent", f"{format_usd(spent_usd, 4, fixed=True)} in {format_duration(elapsed_s)}"
    )
    counts = summary.counts
    total = sum(counts.values())
    done = counts.get("succeeded", 0) + counts.get("failed", 0) + counts.get("cancelled", 0)
    rest = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    table.add_row("manifest", f"{done}/{total} done" + (f": {rest}" if rest else ""))
    table.add_row("result", verdict)
    return table


def _counted(total: int, parts: Mapping[str, int], names: Mapping[str, str]) -> str:
    if not total:
        return "0"
    detail = ", ".join(
        f"{n} {names.get(kind, kind)}" for kind, n in sorted(parts.items(), key=lambda i: -i[1])
    )
    return f"{total} ({detail})"


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
        "price": dict(row.price) if row.price else None,
        "balance_usd": row.balance_usd,
    }


def write_jsonl(rows: Sequence[ExportRow], stream: Any) -> None:
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
    "price",
    "balance_usd",
)


def write_csv(rows: Sequence[ExportRow], stream: Any) -> None:
    writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in rows:
        record = export_record(row)
        usage = record.pop("usage")
        record["params"] = json.dumps(record["params"], sort_keys=True)
        record["outputs"] = ";".join(record["outputs"])
        record["price"] = json.dumps(record["price"], sort_keys=True) if record["price"] else ""
        writer.writerow({**record, **usage})


def jobs_table(rows: Sequence[ExportRow], base: Path) -> Table:
    """One row per job; paths relative to `base` (the manifest's folder) where inside it."""
    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("key", "state", "tries", "cost"):
        table.add_column(column, no_wrap=True)
    for column in ("image", "prompt", "output", "reason"):
        table.add_column(column, overflow="fold", ratio=2 if column == "reason" else 1)
    for row in rows:
        table.add_row(*(escape(cell) for cell in job_cells(row, base)))
    return table


def job_cells(row: ExportRow, base: Path) -> tuple[str, ...]:
    """A job as the list shows it (`JobLines.HEADER`); paths relative to `base` (the
    manifest's folder) where inside it."""
    outputs = row.outputs
    output = _relative(outputs[0], base) if outputs else ""
    output += f" (+{len(outputs) - 1})" if len(outputs) > 1 else ""
    return (
        short_key(row.key),
        row.status,
        str(row.attempts),
        format_usd(row.usage.cost_usd, 4, fixed=True),
        _relative(row.image, base),
        one_line(row.prompt),
        output,
        one_line(row.error or ""),
    )


class JobLines:
    """The job list as lines of text, written page by page as the pages are read: rich's
    table measures every cell of every row before printing one (half a minute for 20,000
    jobs), this measures the first page and keeps those widths. `width` (a terminal's): cells
    past their share are cut with "…", one line per job; None (a pipe, a file): whole cells,
    for grep and cut."""

    HEADER = ("key", "state", "tries", "cost", "image", "prompt", "output", "reason")
    _SHARES = (0, 0, 0, 0, 2, 1, 2, 2)  # how the cut columns share a narrow terminal
    _GAP = "  "

    def __init__(self, base: Path, width: int | None) -> None:
        self._base = base
        self._width = width
        self._widths: list[int] | None = None

    def lines(self, rows: Sequence[ExportRow]) -> list[str]:
        """The lines for these rows; the first call's start with the header."""
        table = [job_cells(row, self._base) for row in rows]
        head: list[str] = []
        if self._widths is None:
            self._widths = self._measure([self.HEADER, *table])
            head = [self._line(self.HEADER)]
        return head + [self._line(cells) for cells in table]

    def _measure(self, table: Sequence[tuple[str, ...]]) -> list[int]:
        from rich.cells import cell_len

        natural = [max(cell_len(row[i]) for row in table) for i in range(len(self.HEADER))]
        if self._width is None:
            return natural
        room = self._width - len(self._GAP) * (len(natural) - 1)
        fixed = sum(n for n, share in zip(natural, self._SHARES, strict=True) if not share)
        widths = list(natural)
        cut = [i for i, share in enumerate(self._SHARES) if share]
        left = max(room - fixed, 4 * len(cut))
        # Columns that fit their share keep their width; the rest share what remains.
        while cut:
            shares = sum(self._SHARES[i] for i in cut)
            fits = [i for i in cut if natural[i] <= left * self._SHARES[i] // shares]
            if not fits:
                for i in cut:
                    widths[i] = max(4, left * self._SHARES[i] // shares)
                break
            for i in fits:
                left -= natural[i]
                cut.remove(i)
        return widths

    def _line(self, cells: Sequence[str]) -> str:
        from rich.cells import cell_len, set_cell_size

        assert self._widths is not None
        last = len(cells) - 1
        parts = []
        for i, (cell, width) in enumerate(zip(cells, self._widths, strict=True)):
            size = cell_len(cell)
            if self._width is not None and size > width:
                cell, size = set_cell_size(cell, width - 1) + "…", width
            parts.append(cell if i == last else cell + " " * (width - size))
        return self._GAP.join(parts).rstrip()


class JobListing:
    """Writes the job list to `stream` as its pages come. A terminal shows a short list
    (up to `SHORT` jobs) as a rich table whose long cells wrap, and a longer one a line per
    job cut to its width; anything else gets a line per job, whole."""

    SHORT = 200

    def __init__(self, stream: TextIO, base: Path, console: Console | None) -> None:
        self._stream = stream
        self._base = base
        self._console = console  # a terminal's
        self._lines = JobLines(base, console.width if console is not None else None)
        self._held: list[ExportRow] | None = [] if console is not None else None
        self.written = 0

    def add(self, rows: Sequence[ExportRow]) -> None:
        self.written += len(rows)
        if self._held is not None:
            self._held.extend(rows)
            if len(self._held) <= self.SHORT:
                return
            rows, self._held = self._held, None
        self._stream.write("".join(line + "\n" for line in self._lines.lines(rows)))

    def close(self) -> None:
        """Write what is held back (a short list on a terminal)."""
        if self._held and self._console is not None:
            self._console.print(jobs_table(self._held, self._base))
        self._held = None
        self._stream.flush()


def _relative(path: str, base: Path) -> str:
    """`path` relative to `base` where inside it. The paths the database keeps are absolute
    and normalised, so a prefix test says it (a Path per job made 100,000 lines slow)."""
    folder = str(base).rstrip(os.sep) + os.sep
    return path[len(folder) :] if path.startswith(folder) and len(path) > len(folder) else path


class ErrorGroups:
    """Jobs by their error text, taken a page at a time (`add`): per distinct error its
    count and a few keys, so 100,000 jobs are never held at once."""

    SHOWN_KEYS = 3

    def __init__(self) -> None:
        self._groups: dict[str, tuple[int, list[str]]] = {}

    def add(self, rows: Sequence[ExportRow]) -> None:
        for row in rows:
            if row.error:
                count, keys = self._groups.get(row.error, (0, []))
                if len(keys) < self.SHOWN_KEYS:
                    keys.append(short_key(row.key))
                self._groups[row.error] = (count + 1, keys)

    def ordered(self) -> list[dict[str, Any]]:
        """The commonest first."""
        ordered = sorted(self._groups.items(), key=lambda item: (-item[1][0], item[0]))
        return [{"count": n, "error": error, "keys": keys} for error, (n, keys) in ordered]


def error_groups_table(groups: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False)
    table.add_column("jobs", no_wrap=True, justify="right")
    table.add_column("error", overflow="fold")
    table.add_column("e.g.", no_wrap=True)
    for group in groups:
        table.add_row(
            str(group["count"]), escape(one_line(group["error"])), " ".join(group["keys"])
        )
    return table
