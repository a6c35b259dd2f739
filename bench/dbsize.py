"""The database's bytes per job: N jobs (distinct tiny PNGs, one glob) run through the fake
provider, then SQLite's `dbstat`: the bytes each table and index uses (its pages less their
free space), per job; attempts' and outputs' tables per attempt and per output.

    .venv/bin/python bench/dbsize.py                          # 300 jobs
    .venv/bin/python bench/dbsize.py --jobs 2000 --keep /tmp/dbsize

Issue 14's target: at most 600 bytes per job for the tables of jobs and of which manifest
lists them (`jobs`, `manifest_jobs`, `manifests`), their indexes included.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runner.testing import FakeProvider  # noqa: E402

API_KEY = "bench-key"
KEY_ENV = "BENCH_FAKE_KEY"
PER_JOB_TABLES = ("jobs", "manifest_jobs", "manifests")
TARGET_PER_JOB = 600
# Each table's rows are counted per what it records.
PER = {"attempts": "attempts", "outputs": "outputs"}


def make_manifest(root: Path, jobs: int, base_url: str) -> Path:
    from PIL import Image

    folder = root / "photos"
    folder.mkdir()
    for i in range(jobs):
        colour = (i % 256, (i >> 8) % 256, 7)
        Image.new("RGB", (8, 8), colour).save(folder / f"holiday-{i:05d}.png")
    manifest = root / "jobs.yaml"
    manifest.write_text(
        "providers:\n  fake:\n    dialect: openai\n"
        f"    base_url: {base_url}\n    api_key_env: {KEY_ENV}\n    concurrency: 8\n"
        "output_dir: out\njobs:\n  - image: photos/*.png\n"
        "    prompt: Turn the sky into a warm sunrise, keep the people as they are.\n"
    )
    return manifest


def used_bytes(db: Path) -> list[tuple[str, str, int]]:
    """(table, table or index name, bytes used): each b-tree's pages less their free space."""
    with sqlite3.connect(db) as con:
        return [
            (str(table), str(name), int(used))
            for table, name, used in con.execute(
                "SELECT coalesce(m.tbl_name, s.name), s.name, sum(s.pgsize - s.unused) "
                "FROM dbstat s LEFT JOIN sqlite_schema m ON m.name = s.name "
                "GROUP BY s.name ORDER BY 1, s.name != coalesce(m.tbl_name, s.name), 2"
            )
        ]


def row_counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as con:
        return {
            name: int(con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0])
            for name in ("jobs", "attempts", "outputs")
        }


def report(db: Path) -> int:
    counts = row_counts(db)
    print(", ".join(f"{n:,} {name}" for name, n in counts.items()))
    print(f"{'table':<16} {'b-tree':<38} {'bytes':>9} {'per':<9} {'bytes per':>9}")
    per_job = 0.0
    for table, name, used in used_bytes(db):
        per = PER.get(table, "jobs")
        share = used / max(counts[per], 1)
        if table in PER_JOB_TABLES:
            per_job += share
        print(f"{table:<16} {name:<38} {used:>9,} {per:<9} {share:>9.1f}")
    verdict = "ok" if per_job <= TARGET_PER_JOB else "over"
    print(f"\njobs and manifest membership: {per_job:.0f} bytes per job "
          f"(target <= {TARGET_PER_JOB}: {verdict})")  # fmt: skip
    return 0 if per_job <= TARGET_PER_JOB else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--keep", type=Path, help="make it here and keep it (to browse)")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-dbsize-") as tmp,
        FakeProvider(api_key=API_KEY, latency=0.0) as fake,
    ):
        root = Path(tmp) if args.keep is None else args.keep
        root.mkdir(parents=True, exist_ok=True)
        manifest = make_manifest(root, args.jobs, fake.base_url)
        env = {**os.environ, KEY_ENV: API_KEY, "RUNNER_DB": ""}
        done = subprocess.run(
            [sys.executable, "-m", "runner", "run", str(manifest), "--log-format", "plain"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return 2
        return report(root / "jobs.db")


if __name__ == "__main__":
    raise SystemExit(main())
