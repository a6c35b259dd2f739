"""A fleet on PostgreSQL: jobs/s of 1, 2 and 3 runners, and what the database costs a job.

    .venv/bin/python bench/fleet.py                      # 300 jobs, C = 16, L = 0
    .venv/bin/python bench/fleet.py --jobs 600 --store-jobs 3000

Part 1, end to end: `runner run` processes (1 on SQLite, then 1, 2 and 3 on one PostgreSQL
database) against one zero-latency fake provider, ~1.5 MB images, C = 16 per runner. Rate =
jobs / (first attempt started → last attempt finished), read from the database.

Part 2, the database alone: 1, 2 and 3 "runners" (each its own SqlStore, as a process would
have) claim, begin an attempt and complete jobs as fast as they can, with no HTTP, images or
files. Per-verb latency percentiles and jobs/s show whether the database could be the
bottleneck: the target is claim + attempt + completion under 5 ms at the 95th percentile
below 500 claims/s.

Needs PostgreSQL on 127.0.0.1:5432 (RUNNER_TEST_PG to change); creates and drops its own
databases. On this project's machine (2 cores) the runners, the fake and PostgreSQL share
the same two cores, so part 1 measures the CPU as much as the fleet: say so with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import API_KEY, KEY_ENV, FakeServer, make_image, write_manifest

ADMIN_URL = os.environ.get("RUNNER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
IMAGE_SIDE = 700  # ~1.47 MB of incompressible PNG


async def _admin(sql: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(ADMIN_URL.replace("postgresql://", "postgres://"))
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def new_database() -> tuple[str, str]:
    name = f"runner_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f"CREATE DATABASE {name}"))
    return name, ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(name: str) -> None:
    asyncio.run(_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


# --------------------------------------------------------------------------- part 1


def _span_s(db: str) -> float:
    """First attempt started → last attempt finished, from the runner's own records."""
    query = "SELECT min(started_at), max(finished_at) FROM attempts"
    if not db.startswith("postgresql"):
        import sqlite3

        with sqlite3.connect(db) as c:
            first, last = c.execute(query).fetchone()
        return (last - first) / 1e6  # SQLite times: microseconds since 1970 (UTC)

    async def span() -> float:
        import asyncpg

        c = await asyncpg.connect(db.replace("postgresql://", "postgres://"))
        try:
            row = await c.fetchrow(query)
        finally:
            await c.close()
        return float((row[1] - row[0]).total_seconds())

    return asyncio.run(span())


def _start(manifest: Path, db: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(manifest), "--db", db, "-q"],
        env={**os.environ, KEY_ENV: API_KEY, "RUNNER_DB": ""},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def end_to_end(runners: int, database: str, jobs: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        work = Path(tmp)
        image = work / "image.png"
        make_image(image, IMAGE_SIDE)
        server = FakeServer(0.0, work / "fake.log")
        try:
            manifest = write_manifest(work, server.base_url, image, jobs, concurrency)
            name = None
            if database == "postgresql":
                name, db = new_database()
            else:
                db = str(work / "jobs.db")
            try:
                started = time.monotonic()
                procs = [_start(manifest, db) for _ in range(runners)]
                codes = [p.wait(timeout=1800) for p in procs]
                wall = time.monotonic() - started
                if any(codes):
                    raise RuntimeError(f"runner exit codes {codes}: {procs[0].stderr}")
                span = _span_s(db)
            finally:
                if name:
                    drop_database(name)
        finally:
            server.stop()
    return {"jobs_per_s": jobs / span, "wall_jobs_per_s": jobs / wall, "span_s": span}


# --------------------------------------------------------------------------- part 2


async def store_only(runners: int, jobs: int, url: str) -> dict[str, object]:
    from runner.errors import ProviderBusy
    from runner.records import AttemptRecord, JobSpec, Outcome, OutputRef
    from runner.store.engine import open_store
    from runner.store.protocol import RunInfo

    def spec(n: int) -> JobSpec:
        return JobSpec(
            key=f"{n:064x}", entry=n, image=Path(f"/in/{n}.png"), mask=None, prompt=f"job {n}",
            provider="p", model="m", params={}, output_dir=Path("/out"), output_name="{stem}",
        )  # fmt: skip

    specs = [spec(n) for n in range(jobs)]
    stores = [await open_store(url) for _ in range(runners)]
    await stores[0].sync_manifest("bench", specs)
    lease = datetime.now(UTC) + timedelta(hours=1)
    timings: dict[str, list[float]] = {"claim": [], "begin_attempt": [], "complete": []}
    paid = AttemptRecord(outcome=Outcome.SUCCEEDED, latency_ms=1, http_status=200, cost_usd=0.01)
    busy = [0]

    async def runner(index: int) -> int:
        store, owner, done = stores[index], f"r{index}", 0
        await store.start_run(RunInfo(owner, "bench", "host", index, "tag"))
        while True:
            t0 = time.perf_counter()
            claimed = await store.claim_many("bench", "p", owner, lease, 4)
            timings["claim"].append((time.perf_counter() - t0) / max(1, len(claimed)))
            if not claimed:
                return done
            for job in claimed:
                t0 = time.perf_counter()
                while True:  # as the runner does: busy (another runner counting) → again
                    try:
                        ticket = await store.begin_attempt(
                            job.spec.key, owner, "p", "m", lease_until=lease, in_flight_limit=64
                        )
                        break
                    except ProviderBusy:
                        busy[0] += 1
                        await asyncio.sleep(0.001)
                timings["begin_attempt"].append(time.perf_counter() - t0)
                out = OutputRef(1, Path(f"/out/{job.spec.key}.png"), "0" * 64, 1, 1, 1, "PNG")
                t0 = time.perf_counter()
                await store.complete(job.spec.key, owner, ticket, paid, [out])
                timings["complete"].append(time.perf_counter() - t0)
                done += 1

    started = time.perf_counter()
    counts = await asyncio.gather(*(runner(i) for i in range(runners)))
    elapsed = time.perf_counter() - started
    for store in stores:
        await store.close()
    assert sum(counts) == jobs, counts
    per_job = [
        c + b + d
        for c, b, d in zip(
            timings["claim"], timings["begin_attempt"], timings["complete"], strict=False
        )
    ]
    return {
        "jobs_per_s": jobs / elapsed,
        "busy": busy[0],
        **{
            f"{verb}_ms": (
                1000 * statistics.median(values),
                1000 * statistics.quantiles(values, n=20)[18],
            )
            for verb, values in timings.items()
        },
        "job_ms": (
            1000 * statistics.median(per_job),
            1000 * statistics.quantiles(per_job, n=20)[18],
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--store-jobs", type=int, default=2000)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")

    print(f"\npart 1: {args.jobs} jobs, ~1.5 MB images, L = 0, C = {args.concurrency} per runner")
    print(f"{'runners':<22} {'jobs/s (span)':>14} {'jobs/s (wall)':>14} {'x 1 on SQLite':>14}")
    base = None
    for runners, database in (
        (1, "sqlite"),
        (1, "postgresql"),
        (2, "postgresql"),
        (3, "postgresql"),
    ):
        result = end_to_end(runners, database, args.jobs, args.concurrency)
        base = base or result["jobs_per_s"]
        label = f"{runners} on {database}"
        print(f"{label:<22} {result['jobs_per_s']:>14.1f} {result['wall_jobs_per_s']:>14.1f} "
              f"{result['jobs_per_s'] / base:>14.2f}")  # fmt: skip

    print(f"\npart 2: the database alone, {args.store_jobs} jobs (claim 4, attempt, complete)")
    print(f"{'runners':<10} {'jobs/s':>8} {'claim ms p50/p95':>18} {'attempt ms':>14} "
          f"{'complete ms':>14} {'per job ms':>14}")  # fmt: skip
    for runners in (1, 2, 3):
        name, url = new_database()
        try:
            r = asyncio.run(
                store_only(
                    runners, args.store_jobs, url.replace("postgresql://", "postgresql+asyncpg://")
                )
            )
        finally:
            drop_database(name)

        def pair(key: str, result: dict[str, object] = r) -> str:
            p50, p95 = result[key]  # type: ignore[misc]
            return f"{p50:.2f}/{p95:.2f}"

        print(
            f"{runners:<10} {r['jobs_per_s']:>8.0f} {pair('claim_ms'):>18} "
            f"{pair('begin_attempt_ms'):>14} {pair('complete_ms'):>14} {pair('job_ms'):>14} "
            f"(busy answers: {r['busy']})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
