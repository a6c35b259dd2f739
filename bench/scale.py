"""Tables at scale: a `jobs_from:` CSV of N rows (tiny images, one file each), measured.

    .venv/bin/python bench/scale.py                     # 1,000 and 100,000 rows
    .venv/bin/python bench/scale.py --rows 1000,10000   # quicker
    .venv/bin/python bench/scale.py --rows 100000 --keep /tmp/scale   # keep it to profile

For each size, each step a child process measured for wall time and peak RSS (VmHWM, read
from /proc while it runs): `validate`; the first `run` up to its first request (the fake
answers after 30 s, so the run is killed once the request arrives; it reads the rest of the
table while sending, so `status` then syncs what is left); a no-op re-run of the
finished table (the jobs are marked succeeded in the database directly: running 100,000
edits through the fake is not what is measured); `status`; `export --format parquet`.
Beside them, reading the table with pyarrow, the floor for a re-run (issue 13's targets:
peak RSS at 100,000 rows within 64 MB of 1,000 rows; the no-op re-run at most 3x reading the
table; the first request within 10 s at 100,000 rows on 2 cores).
"""

from __future__ import annotations

import argparse
import csv
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from children import compile_runner, measured  # noqa: E402

from runner.testing import FakeProvider  # noqa: E402

API_KEY = "bench-key"
KEY_ENV = "BENCH_FAKE_KEY"


def make_table(root: Path, rows: int) -> Path:
    from PIL import Image

    folder = root / "img"
    folder.mkdir()
    table = root / "train.csv"
    with table.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["row_id", "file_name", "instruction"])
        for i in range(rows):
            name = f"{i:06d}.png"
            Image.new("RGB", (8, 8), (i % 256, (i >> 8) % 256, (i >> 16) % 256)).save(folder / name)
            writer.writerow([f"r{i}", f"img/{name}", "make it brighter"])
    return table


def one_size(rows: int, keep: Path | None = None) -> dict[str, tuple[float, float]]:
    import pyarrow.csv as pacsv

    figures: dict[str, tuple[float, float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp,
        FakeProvider(api_key=API_KEY, latency=30.0) as fake,
    ):
        root = Path(tmp) if keep is None else keep / f"rows-{rows}"
        root.mkdir(parents=True, exist_ok=keep is None)
        started = time.monotonic()
        table = make_table(root, rows)
        print(f"  {rows:,} rows: table and images made in {time.monotonic() - started:.1f} s")
        manifest = root / "jobs.yaml"
        manifest.write_text(
            "providers:\n  fake:\n    dialect: openai\n"
            f"    base_url: {fake.base_url}\n    api_key_env: {KEY_ENV}\n    concurrency: 4\n"
            "output_dir: out\njobs_from:\n  - table: train.csv\n    image: file_name\n"
            "    prompt: instruction\n    id: row_id\n"
        )
        env = {**os.environ, KEY_ENV: API_KEY, "RUNNER_DB": ""}
        runner = [sys.executable, "-m", "runner"]
        done = measured([*runner, "validate", str(manifest)], env)
        figures["validate"] = (done.wall_s, done.peak_mb)
        # Its forked workers (a manifest of more than one chunk) have memory of their own.
        figures["validate, with its workers (PSS)"] = (done.wall_s, done.tree_peak_mb)
        done = measured(
            [*runner, "run", str(manifest), "--log-format", "plain"], env,
            stop_when=lambda: fake.requests_total > 0 or len(fake.received) > 0,
        )  # fmt: skip
        figures["first run: to first request"] = (done.wall_s, done.peak_mb)
        # The run sends while it reads the rest of the table, and was killed at its first
        # request: `status` syncs what is left (a whole sync, measured as such).
        done = measured([*runner, "status", str(manifest)], env)
        assert done.code == 0, done.stderr
        figures["status finishing the sync"] = (done.wall_s, done.peak_mb)
        with sqlite3.connect(root / "jobs.db") as db:
            db.execute("UPDATE jobs SET status = 'succeeded', lease_owner = NULL")
            db.execute("UPDATE runs SET ended_at = started_at, exit_code = 0")
        done = measured([*runner, "run", str(manifest), "--log-format", "plain"], env)
        assert done.code == 0, done.stderr
        figures["no-op re-run"] = (done.wall_s, done.peak_mb)
        done = measured([*runner, "status", str(manifest)], env)
        figures["status"] = (done.wall_s, done.peak_mb)
        with sqlite3.connect(root / "jobs.db") as db:  # a few failures to look for
            db.execute("UPDATE jobs SET status = 'failed', error = 'x' WHERE rowid % 1000 = 0")
        done = measured([*runner, "jobs", str(manifest), "--state", "failed"], env)
        assert done.code == 0, done.stderr
        figures["jobs --state failed"] = (done.wall_s, done.peak_mb)
        done = measured([*runner, "jobs", str(manifest), "-n", "20"], env)
        assert done.code == 0, done.stderr
        figures["jobs -n 20"] = (done.wall_s, done.peak_mb)
        done = measured([*runner, "jobs", str(manifest)], env)  # every job, not to a terminal
        assert done.code == 0, done.stderr
        figures["jobs (all, not a terminal)"] = (done.wall_s, done.peak_mb)
        out = root / "results.parquet"
        done = measured(
            [*runner, "export", str(manifest), "--format", "parquet", "-o", str(out)], env
        )
        assert done.code == 0 and out.exists(), done.stderr
        figures["export --format parquet"] = (done.wall_s, done.peak_mb)
        started = time.monotonic()
        pacsv.read_csv(table)
        figures["pyarrow reads the table"] = (time.monotonic() - started, 0.0)
        # The same in a process of its own, start-up and import included, as the
        # runner's steps are measured: the fair floor for a re-run.
        read = f"import pyarrow.csv as c; c.read_csv({str(table)!r})"
        done = measured([sys.executable, "-c", read], env)
        figures["pyarrow reads it, own process"] = (done.wall_s, done.peak_mb)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1000,100000")
    parser.add_argument(
        "--keep", type=Path, help="work in DIR/rows-N and keep it (table, manifest, database)"
    )
    args = parser.parse_args()
    sizes = [int(n) for n in args.rows.split(",")]
    compile_runner(REPO)
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    results = {rows: one_size(rows, args.keep) for rows in sizes}
    steps = list(next(iter(results.values())))
    print(f"{'step':30}" + "".join(f"{f'{n:,} rows: s / MB':>24}" for n in sizes))
    for step in steps:
        cells = "".join(
            f"{results[n][step][0]:>14.2f} / {results[n][step][1]:>6.0f}" for n in sizes
        )
        print(f"{step:30}{cells}")
    small, big = sizes[0], sizes[-1]
    peak = max(v[1] for v in results[big].values()) - max(v[1] for v in results[small].values())
    noop = results[big]["no-op re-run"][0] / max(results[big]["pyarrow reads the table"][0], 1e-9)
    fair = results[big]["no-op re-run"][0] / results[big]["pyarrow reads it, own process"][0]
    first = results[big]["first run: to first request"][0]
    checks = results[big]["validate"][0] / results[small]["validate"][0]
    print(
        f"peak RSS {big:,} vs {small:,} rows: +{peak:.0f} MB (target <= 64); no-op re-run "
        f"{noop:.0f}x reading the table in-process, {fair:.1f}x in a process of its own "
        f"(target <= 3x); first request after {first:.1f} s "
        f"(target < 10 s at 100,000 rows); validate {checks:.1f}x the {small:,}-row time "
        "(target <= 10x)"
    )


if __name__ == "__main__":
    main()
