"""Soak: N jobs through a provider in a storm of faults, this runner next to a baseline.

    .venv/bin/python bench/soak.py                       # 2,000 jobs, issue 8's fault mix
    .venv/bin/python bench/soak.py --jobs 500 --baseline none

The storm (issue 8, item 5): 30 % rate limits (429), 10 % server errors (500), 5 % connection
resets, 5 % truncated replies and 5 % empty 200s, from one fake provider (`FakeProvider`, in
this process, over real HTTP). Each contender is a child process that runs `runner run`'s use
case (`app.run`) on a fresh copy of the manifest, with a clock whose waits return at once, so
backoffs cost no wall time; everything else (HTTP, SQLite, files) is real.

The baseline is another revision of the runner (default: 9c5caac, the last commit before
issue 8), checked out into a temporary git worktree and imported from there.

Figures per contender: jobs succeeded / failed / pending, requests sent, requests per job,
how many times the most-paid job was paid, attempts by outcome, and wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from runner.testing import FakeProvider  # noqa: E402

API_KEY = "soak-key"
KEY_ENV = "SOAK_FAKE_KEY"
STORM = {"rate_limit": 0.30, "server_error": 0.10, "reset": 0.05, "truncate": 0.05,
         "empty_200": 0.05}  # fmt: skip
DEFAULT_BASELINE = "9c5caac"

# Runs `app.run` with waits that return at once; works with any revision that has
# app.run(path, app.Options(clock=...)).
DRIVER = r"""
import json, sys, time
from pathlib import Path
import anyio, anyio.lowlevel
from runner import app

class InstantClock:
    def __init__(self): self.now = 0.0
    def monotonic(self): return self.now
    async def sleep(self, seconds):
        self.now += seconds
        await anyio.lowlevel.checkpoint()

started = time.monotonic()
outcome = anyio.run(app.run, Path(sys.argv[1]), app.Options(clock=InstantClock()))
print(json.dumps({"exit_code": outcome.exit_code, "counts": dict(outcome.summary.counts),
                  "seconds": time.monotonic() - started}))
"""


def write_manifest(folder: Path, base_url: str, jobs: int, concurrency: int) -> Path:
    Image.new("RGB", (64, 48), (200, 120, 40)).save(folder / "photo.png")
    lines = [
        "providers:",
        f"  fake: {{dialect: openai, base_url: '{base_url}', api_key_env: {KEY_ENV}, "
        f"concurrency: {concurrency}}}",
        "output_dir: out",
        "jobs:",
        *(f"  - {{image: photo.png, prompt: 'soak job {i}'}}" for i in range(jobs)),
    ]
    manifest = folder / "jobs.yaml"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@contextlib.contextmanager
def checkout(revision: str) -> Iterator[Path]:
    """A temporary worktree of `revision`, to import that runner from."""
    folder = Path(tempfile.mkdtemp(prefix="soak-baseline-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), revision],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)],
                       check=False, capture_output=True)  # fmt: skip


def run_contender(
    name: str, code: Path, fake: FakeProvider, args: argparse.Namespace
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"soak-{name}-") as tmp:
        folder = Path(tmp)
        manifest = write_manifest(folder, fake.base_url, args.jobs, args.concurrency)
        fake.reset_counters()
        env = {**os.environ, KEY_ENV: API_KEY, "PYTHONPATH": str(code), "RUNNER_DB": ""}
        done = subprocess.run([sys.executable, "-c", DRIVER, str(manifest)], env=env,
                              capture_output=True, text=True, check=False, cwd=code)  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"{name} crashed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        db = sqlite3.connect(folder / "jobs.db")
        outcomes = dict(db.execute("SELECT outcome, COUNT(*) FROM attempts GROUP BY outcome"))
        paid = fake.paid
        return {
            "name": name,
            **result,
            "requests": fake.requests_total,
            "requests_per_job": fake.requests_total / args.jobs,
            "max_paid_per_job": max(paid.values(), default=0),
            "paid_twice": sum(1 for n in paid.values() if n > 1),
            "attempts_by_outcome": outcomes,
        }


def print_table(results: list[dict[str, Any]], jobs: int) -> None:
    rows = [
        ("succeeded", lambda r: r["counts"].get("succeeded", 0)),
        ("failed", lambda r: r["counts"].get("failed", 0)),
        ("pending", lambda r: r["counts"].get("pending", 0)),
        ("exit code", lambda r: r["exit_code"]),
        ("requests sent", lambda r: r["requests"]),
        ("requests per job", lambda r: f"{r['requests_per_job']:.2f}"),
        ("jobs paid twice", lambda r: r["paid_twice"]),
        ("wall seconds", lambda r: f"{r['seconds']:.1f}"),
    ]
    print(f"\nsoak: {jobs} jobs, storm {STORM}")
    print(f"{'':24}" + "".join(f"{r['name']:>18}" for r in results))
    for label, value in rows:
        print(f"{label:24}" + "".join(f"{value(r)!s:>18}" for r in results))
    for r in results:
        print(f"{r['name']}: attempts by outcome {r['attempts_by_outcome']}")
    naive = 0.55**5 * jobs
    print(f"expected failures if every failure used an attempt: 0.55^5 x {jobs} = {naive:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--baseline", default=DEFAULT_BASELINE,
                        help="git revision to compare with, or 'none'")  # fmt: skip
    args = parser.parse_args()
    results = []
    with FakeProvider(api_key=API_KEY, fault_mix=STORM, seed=args.seed) as fake:
        results.append(run_contender("runner", REPO, fake, args))
        if args.baseline != "none":
            with checkout(args.baseline) as code:
                results.append(run_contender(f"baseline {args.baseline}", code, fake, args))
    print_table(results, args.jobs)


if __name__ == "__main__":
    main()
