"""Unattended operation: limits, a graceful SIGTERM, overlapping cron runs, log lines."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from conftest import API_KEY, KEY_ENV, Workspace, options
from helpers import FakeClock, Ran, invoke

from runner import app
from runner.engine.attempt import FLEET_BUSY_WAIT_S
from runner.errors import ExitCode
from runner.records import RunLimits
from runner.testing import FakeProvider

slow = pytest.mark.slow


def run(manifest: Path, opts: app.Options) -> app.RunOutcome:
    return anyio.run(app.run, manifest, opts)


def cli(*args: str | Path) -> Ran:
    return invoke(*args, env={KEY_ENV: API_KEY, "RUNNER_DB": None})


def paid_once(fake: FakeProvider, count: int) -> bool:
    return len(fake.paid) == count and set(fake.paid.values()) == {1}


def test_max_jobs_stops_with_75_and_the_rerun_finishes(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"j{i}.png"), "prompt": f"edit {i}"} for i in range(7)]
    manifest = workspace.manifest(jobs, profile={"concurrency": 2})

    first = run(manifest, app.Options(clock=FakeClock(), limits=RunLimits(max_jobs=3)))

    assert first.exit_code == ExitCode.EARLY
    assert "--max-jobs 3" in first.stops[0].message
    assert first.summary.counts["succeeded"] == 3 and first.summary.counts["pending"] == 4
    assert sum(fake.paid.values()) == 3
    second = run(manifest, options())
    assert second.exit_code == ExitCode.OK
    assert paid_once(fake, 7)


def test_max_cost_takes_no_job_that_could_cross_the_budget(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"c{i}.png"), "prompt": f"edit {i}"} for i in range(6)]
    # $1 per million tokens of every kind: each job is estimated near $0.0019 (765 image-in
    # tokens, a few prompt tokens, 1,056 output tokens at medium quality).
    pricing = {"fake": {"gpt-image-2": {"text_input": 1, "image_input": 1, "image_output": 1}}}
    manifest = workspace.manifest(
        jobs, profile={"concurrency": 1}, pricing=pricing,
        defaults={"params": {"quality": "medium"}},
    )  # fmt: skip
    budget = 0.0019 * 2.5

    first = run(manifest, app.Options(clock=FakeClock(), limits=RunLimits(max_cost_usd=budget)))

    assert first.exit_code == ExitCode.EARLY
    assert "--max-cost" in first.stops[0].message
    assert 1 <= first.summary.counts["succeeded"] <= 2
    assert first.summary.totals.cost_usd <= budget  # the budget was never crossed
    assert run(manifest, options()).exit_code == ExitCode.OK
    assert paid_once(fake, 6)


def test_the_budget_learns_what_replies_really_cost(
    workspace: Workspace, fake: FakeProvider
) -> None:
    # No quality given: estimated at "high" (4,160 output tokens, about $0.103 a job), while
    # the fake answers with medium's 1,056 (about $0.028): a quarter of the estimate.
    jobs = [{"image": workspace.image(f"b{i}.png"), "prompt": f"edit {i}"} for i in range(10)]
    manifest = workspace.manifest(jobs, profile={"concurrency": 2})
    budget = 0.32  # the ten jobs cost about $0.284; the static estimates add up to $1.03

    first = run(manifest, app.Options(clock=FakeClock(), limits=RunLimits(max_cost_usd=budget)))

    assert first.summary.counts["succeeded"] == 10, first.stops  # static: stopped after ~5
    assert first.exit_code == ExitCode.OK
    assert first.summary.totals.cost_usd <= budget
    assert paid_once(fake, 10)


def test_a_new_run_starts_from_the_last_runs_measured_costs(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"l{i}.png"), "prompt": f"edit {i}"} for i in range(12)]
    manifest = workspace.manifest(jobs, profile={"concurrency": 1})
    assert run(manifest, app.Options(clock=FakeClock(), limits=RunLimits(max_jobs=8))).exit_code
    # Four left, about $0.114: a static estimate ($0.103 each) would take two, at most.
    budget = 0.13
    second = run(manifest, app.Options(clock=FakeClock(), limits=RunLimits(max_cost_usd=budget)))
    assert second.summary.counts["succeeded"] == 12, second.stops
    assert second.report.spent_usd <= budget


def test_manifest_limits_block_applies_and_flags_win(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"m{i}.png"), "prompt": f"edit {i}"} for i in range(5)]
    manifest = workspace.manifest(jobs, limits={"max_jobs": 1})

    assert run(manifest, options()).summary.counts["succeeded"] == 1
    flagged = run(manifest, app.Options(clock=FakeClock(), limits=RunLimits(max_jobs=2)))
    assert flagged.summary.counts["succeeded"] == 3 and flagged.exit_code == ExitCode.EARLY


def test_deadline_stops_taking_jobs_and_the_rerun_finishes(
    workspace: Workspace, fake: FakeProvider
) -> None:
    # Six requests a minute: the runner's clock moves ten seconds per job, so a one-minute
    # deadline lets about six jobs start.
    clock = FakeClock()
    epoch = time.time()

    def wall() -> datetime:
        return datetime.fromtimestamp(epoch + clock.now, UTC)

    jobs = [{"image": workspace.image(f"d{i}.png"), "prompt": f"edit {i}"} for i in range(12)]
    manifest = workspace.manifest(jobs, profile={"concurrency": 1, "requests_per_minute": 6})

    first = run(manifest, app.Options(clock=clock, wall_clock=wall, limits=RunLimits("1m")))

    assert first.exit_code == ExitCode.EARLY
    assert "deadline" in first.stops[0].message
    assert 4 <= first.summary.counts["succeeded"] <= 7
    # Each request's answer ends its place in the provider's concurrency, though its record
    # is written in the background: no request waited for another's record.
    assert FLEET_BUSY_WAIT_S not in clock.sleeps
    assert run(manifest, options()).exit_code == ExitCode.OK
    assert paid_once(fake, 12)


def test_a_bad_deadline_is_a_usage_error_naming_the_flag(
    workspace: Workspace, fake: FakeProvider
) -> None:
    manifest = workspace.manifest([{"image": workspace.image("x.png"), "prompt": "p"}])
    result = cli("run", manifest, "--deadline", "tomorrowish")
    assert result.returncode == 2
    assert "--deadline" in result.stderr and "Traceback" not in result.stderr
    assert fake.requests_total == 0


def test_plain_and_json_progress_lines_when_not_on_a_terminal(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"l{i}.png"), "prompt": f"edit {i}"} for i in range(3)]
    manifest = workspace.manifest(jobs)

    plain = cli("run", manifest)
    lines = plain.stderr.splitlines()
    assert plain.returncode == 0
    assert any(" started " in line or line.split(" ")[1:2] == ["started"] for line in lines)
    finished = [line for line in lines if " finished " in line]
    assert finished and "3/3 done" in finished[0]

    fake.script = ["server_error"]
    more = [{"image": workspace.image(f"n{i}.png"), "prompt": f"more {i}"} for i in range(2)]
    manifest = workspace.manifest(jobs + more)
    as_json = cli("run", manifest, "--log-format", "json")
    # Events are data: on stdout, every line JSON with a time stamp, for `| jq`.
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    events = [r["event"] for r in records]
    assert "started" in events and "finished" in events and events[-1] == "result"
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["ts"]) for r in records)
    assert as_json.stderr == ""
    result = records[-1]
    assert result["exit_code"] == 0 and result["counts"]["succeeded"] == 5
    finished_record = next(r for r in records if r["event"] == "finished")
    assert finished_record["done"] == 5 and finished_record["total"] == 5
    assert API_KEY not in as_json.stdout and API_KEY not in plain.stderr

    quiet = cli("run", manifest, "--quiet")
    assert quiet.returncode == 0 and "progress" not in quiet.stderr
