"""`mode: batch` end to end against the fake's Files and Batch APIs over real HTTP, with a
real SQLite file: submit, exit 75, collect; half the live price; a batch that expires half
done; error lines; a crash between creating a batch and recording it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from conftest import API_KEY, KEY_ENV, Workspace, options
from helpers import FakeClock, invoke

from runner import app
from runner.errors import ExitCode
from runner.records import RunLimits
from runner.testing import FakeProvider


def thirty_jobs(workspace: Workspace) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    for i in range(30):
        job: dict[str, Any] = {"image": workspace.image(f"photos/p{i}.png"), "prompt": f"edit {i}"}
        if i % 3 == 0:
            job["mask"] = workspace.mask(f"masks/p{i}.png")
        if i == 7:
            job["params"] = {"n": 2}
        jobs.append(job)
    return jobs


def batch_manifest(
    workspace: Workspace, jobs: list[dict[str, Any]], name: str = "jobs.yaml"
) -> Path:
    return workspace.manifest(jobs, name=name, profile={"mode": "batch"})


def costs(workspace: Workspace, db: str = "jobs.db") -> dict[str, float]:
    rows = workspace.db(db).execute(
        "SELECT job_key, cost_usd FROM attempts WHERE outcome = 'succeeded'"
    )
    return dict(rows)


async def test_submit_then_collect_at_half_the_live_price(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = thirty_jobs(workspace)
    manifest = batch_manifest(workspace, jobs)

    first = await app.run(manifest, options())

    assert first.exit_code == ExitCode.EARLY
    assert first.summary.counts["submitted"] == 30
    assert any(
        "30 jobs in 1 batch at OpenAI; run again to collect" in s.message for s in first.stops
    )
    assert fake.requests_total == 0  # nothing went to the live endpoint
    assert fake.batch.batches_created == 1
    images = fake.batch.live_files("vision")
    assert len(images) == 30 + 1  # each input once; the ten masks are one picture, sent once

    second = await app.run(manifest, options())

    assert second.exit_code == ExitCode.OK
    assert second.summary.counts["succeeded"] == 30
    assert fake.batch.batches_created == 1 and fake.batch.lines_billed == 30
    outputs = workspace.db().execute("SELECT COUNT(*) FROM outputs").fetchone()[0]
    assert outputs == 31  # one job asked for two images
    for path, digest in workspace.db().execute("SELECT path, sha256 FROM outputs"):
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest
    # Files at the provider are cleaned up once nothing open needs them.
    assert fake.batch.live_files() == []

    # The same jobs live: each batch line cost half of what its live twin cost.
    live = workspace.manifest(jobs, name="live.yaml", database="live.db")
    assert (await app.run(live, options())).exit_code == ExitCode.OK
    batch_costs, live_costs = costs(workspace), costs(workspace, "live.db")
    assert batch_costs.keys() == live_costs.keys() and len(batch_costs) == 30
    for key, cost in batch_costs.items():
        assert abs(cost - live_costs[key] / 2) < 1e-12

    third = await app.run(manifest, options())  # nothing left: nothing sent
    assert third.exit_code == ExitCode.OK and fake.batch.batches_created == 1


async def test_a_batch_that_expires_half_done_keeps_its_half_and_resubmits_the_rest(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"e{i}.png"), "prompt": f"e {i}"} for i in range(10)]
    manifest = batch_manifest(workspace, jobs)
    fake.batch.expire_after = 5

    assert (await app.run(manifest, options())).exit_code == ExitCode.EARLY
    fake.batch.expire_after = None
    collected = await app.run(manifest, options())  # collects 5, submits the other 5

    assert collected.exit_code == ExitCode.EARLY
    assert collected.summary.counts["succeeded"] == 5
    assert collected.summary.counts["submitted"] == 5
    assert fake.batch.batches_created == 2

    done = await app.run(manifest, options())
    assert done.exit_code == ExitCode.OK and done.summary.counts["succeeded"] == 10
    assert fake.batch.lines_billed == 10 and set(fake.paid.values()) == {1}  # none twice


async def test_error_lines_retryable_resubmitted_permanent_failed_quota_stops(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"x{i}.png"), "prompt": f"x {i}"} for i in range(6)]
    manifest = batch_manifest(workspace, jobs)
    fake.batch.line_faults = {0: "rate_limit", 1: "bad_request", 2: "server_error"}

    assert (await app.run(manifest, options())).exit_code == ExitCode.EARLY
    fake.batch.line_faults = {}
    second = await app.run(manifest, options())

    assert second.summary.counts["succeeded"] == 3
    assert second.summary.counts["failed"] == 1  # the 400
    assert second.summary.counts["submitted"] == 2  # the 429 and the 500, in a new batch
    failed = workspace.db().execute("SELECT error, failure_kind FROM jobs WHERE status = 'failed'")
    error, kind = failed.fetchone()
    assert (kind == "refused" and "Invalid" in error) or "invalid" in error.lower()

    third = await app.run(manifest, options())
    assert third.exit_code == ExitCode.FAILED  # one job failed for good, the rest succeeded
    assert third.summary.counts["succeeded"] == 5


async def test_a_quota_line_stops_the_provider_with_exit_3(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"q{i}.png"), "prompt": f"q {i}"} for i in range(4)]
    manifest = batch_manifest(workspace, jobs)
    fake.batch.line_faults = {1: "payment"}

    assert (await app.run(manifest, options())).exit_code == ExitCode.EARLY
    fake.batch.line_faults = {}
    collected = await app.run(manifest, options())

    assert collected.exit_code == ExitCode.PAYMENT
    assert collected.summary.counts["succeeded"] == 3
    assert collected.summary.counts["pending"] == 1  # not billed: sent again after a top-up
    assert fake.batch.batches_created == 1  # the stop held back the next batch

    after = await app.run(manifest, options())  # after the top-up: submitted again
    assert after.exit_code == ExitCode.EARLY and fake.batch.batches_created == 2


async def test_unknown_and_duplicate_custom_ids_are_ignored(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"d{i}.png"), "prompt": f"d {i}"} for i in range(3)]
    manifest = batch_manifest(workspace, jobs)
    fake.batch.junk_lines = True

    await app.run(manifest, options())
    collected = await app.run(manifest, options())

    assert collected.exit_code == ExitCode.OK and collected.summary.counts["succeeded"] == 3
    assert workspace.db().execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == 3


async def test_a_batch_created_but_never_recorded_is_adopted_not_sent_again(
    workspace: Workspace, fake: FakeProvider
) -> None:
    """The run died between `POST /batches` and recording its answer: the row is there
    with status `creating` and no provider id; the next run finds the batch by its tag."""
    jobs = [{"image": workspace.image(f"c{i}.png"), "prompt": f"c {i}"} for i in range(4)]
    manifest = batch_manifest(workspace, jobs)
    assert (await app.run(manifest, options())).exit_code == ExitCode.EARLY
    with workspace.db() as db:  # as if the answer had never been recorded
        db.execute("UPDATE batches SET provider_batch_id = NULL, status = 'creating'")

    collected = await app.run(manifest, options())

    assert collected.exit_code == ExitCode.OK
    assert collected.summary.counts["succeeded"] == 4
    assert fake.batch.batches_created == 1 and fake.batch.lines_billed == 4


async def test_a_batch_that_was_never_created_goes_back_to_pending(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"n{i}.png"), "prompt": f"n {i}"} for i in range(3)]
    manifest = batch_manifest(workspace, jobs)
    assert (await app.run(manifest, options())).exit_code == ExitCode.EARLY
    fake.batch.batches.clear()  # the provider never heard of it
    with workspace.db() as db:
        db.execute(
            "UPDATE batches SET provider_batch_id = NULL, status = 'creating', "
            "run_id = 'another-run'"
        )

    again = await app.run(manifest, options())

    assert again.summary.counts["submitted"] == 3  # sent again, in a new batch
    assert fake.batch.batches_created == 2
    lost = workspace.db().execute("SELECT status FROM batches ORDER BY created_at").fetchall()
    assert next(row[0] for row in lost) == "lost"


def test_status_json_lists_open_batches(workspace: Workspace, fake: FakeProvider) -> None:
    jobs = [{"image": workspace.image(f"s{i}.png"), "prompt": f"s {i}"} for i in range(2)]
    manifest = batch_manifest(workspace, jobs)
    env = {KEY_ENV: API_KEY, "RUNNER_DB": None}
    ran = invoke("run", manifest, env=env)
    assert ran.returncode == ExitCode.EARLY
    assert "2 jobs in 1 batch at OpenAI; run again to collect" in ran.stderr

    status = json.loads(invoke("status", manifest, "--json", env=env).stdout)
    (batch,) = status["batches"]
    assert batch["provider"] == "fake" and batch["lines"] == 2
    assert batch["id"].startswith("batch_") and batch["status"] in (
        "validating",
        "in_progress",
        "completed",
    )
    human = invoke("status", manifest, env=env).stdout
    assert batch["id"] in human


async def test_wait_polls_until_the_batches_end_in_one_run(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"w{i}.png"), "prompt": f"w {i}"} for i in range(3)]
    manifest = batch_manifest(workspace, jobs)
    clock = FakeClock()

    outcome = await app.run(manifest, replace(options(clock), wait=True))

    assert outcome.exit_code == ExitCode.OK and outcome.summary.counts["succeeded"] == 3
    assert clock.sleeps and clock.sleeps[0] == 30.0  # looked again after 30 s, not at once


async def test_a_402_on_upload_stops_with_exit_3_and_sends_nothing(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"u{i}.png"), "prompt": f"u {i}"} for i in range(3)]
    manifest = batch_manifest(workspace, jobs)
    fake.batch.payment_on_upload = True

    outcome = await app.run(manifest, options())

    assert outcome.exit_code == ExitCode.PAYMENT
    assert outcome.summary.counts["pending"] == 3 and fake.batch.batches_created == 0


async def test_a_batch_the_provider_refuses_fails_its_jobs_with_the_reason(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"v{i}.png"), "prompt": f"v {i}"} for i in range(2)]
    manifest = batch_manifest(workspace, jobs)
    fake.batch.fail_validation = True

    await app.run(manifest, options())
    collected = await app.run(manifest, options())

    assert collected.exit_code == ExitCode.FAILED and collected.summary.counts["failed"] == 2
    errors = {row[0] for row in workspace.db().execute("SELECT error FROM jobs")}
    assert errors == {"the provider refused its batch: line 1: body.model is invalid"}
    assert fake.batch.batches_created == 1  # not sent again and again


async def test_max_cost_counts_submitted_lines_at_their_batch_estimate(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"m{i}.png"), "prompt": f"m {i}"} for i in range(10)]
    manifest = batch_manifest(workspace, jobs)
    # gpt-image-2's static estimate is $0.1029 a job live, so $0.05145 a batch line.
    limits = RunLimits(max_cost_usd=0.16)

    outcome = await app.run(manifest, replace(options(), limits=limits))

    assert outcome.summary.counts["submitted"] == 3  # 0.154 fits under 0.16; 0.206 would not
    assert outcome.summary.counts["pending"] == 7
    assert any(stop.kind == "limit" for stop in outcome.stops)
    estimates = workspace.db().execute("SELECT SUM(estimate_usd) FROM batch_lines").fetchone()[0]
    assert abs(estimates - 3 * 0.1029 / 2) < 1e-9


def test_cancel_submitted_cancels_at_the_provider_and_the_rest_end_cancelled(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"k{i}.png"), "prompt": f"k {i}"} for i in range(3)]
    manifest = batch_manifest(workspace, jobs)
    env = {KEY_ENV: API_KEY, "RUNNER_DB": None}
    fake.batch.delay = 3600  # still running when cancelled
    assert invoke("run", manifest, env=env).returncode == ExitCode.EARLY

    cancelled = invoke("cancel", manifest, "--state", "submitted", env=env)

    assert cancelled.returncode == 0 and "3 submitted jobs" in cancelled.stdout
    assert [b.status for b in fake.batch.batches.values()] == ["cancelled"]
    after = invoke("run", manifest, env=env)
    assert after.returncode == ExitCode.OK  # nothing left to do: all cancelled
    states = {row[0] for row in workspace.db().execute("SELECT status FROM jobs")}
    assert states == {"cancelled"} and fake.batch.lines_billed == 0


async def test_keep_files_leaves_the_uploads_at_the_provider(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"f{i}.png"), "prompt": f"f {i}"} for i in range(2)]
    manifest = batch_manifest(workspace, jobs)
    kept = replace(options(), keep_files=True)

    await app.run(manifest, kept)
    await app.run(manifest, kept)

    purposes = sorted(f.purpose for f in fake.batch.live_files())
    assert purposes == ["batch", "batch_output", "vision", "vision"]


async def test_validate_shows_batch_prices(workspace: Workspace, fake: FakeProvider) -> None:
    jobs = [{"image": workspace.image(f"p{i}.png"), "prompt": f"p {i}"} for i in range(4)]
    batch = await app.validate(batch_manifest(workspace, jobs))
    live = await app.validate(workspace.manifest(jobs, name="live.yaml"))

    assert live.estimated_cost_usd > 0
    assert abs(batch.estimated_cost_usd - live.estimated_cost_usd / 2) < 1e-9


async def test_an_output_file_that_cannot_be_read_keeps_the_batch_for_the_next_run(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"g{i}.png"), "prompt": f"g {i}"} for i in range(3)]
    manifest = batch_manifest(workspace, jobs)
    await app.run(manifest, options())
    (batch,) = fake.batch.batches.values()
    fake.batch.get(batch.id)  # run it now
    saved = fake.batch.files[batch.output_file_id or ""]
    fake.batch.files.pop(saved.id)  # the provider loses the file for a while: a 404

    stuck = await app.run(manifest, options())

    assert stuck.exit_code == ExitCode.EARLY
    assert any("could not collect batch" in s.message for s in stuck.stops)
    assert stuck.summary.counts["submitted"] == 3  # kept: nothing re-sent, nothing lost
    fake.batch.files[saved.id] = saved
    done = await app.run(manifest, options())
    assert done.exit_code == ExitCode.OK and fake.batch.batches_created == 1


async def test_a_retryable_line_that_keeps_failing_fails_after_max_attempts(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image("r.png"), "prompt": "r"}]
    manifest = batch_manifest(workspace, jobs)
    fake.batch.line_faults = {0: "server_error"}

    codes = [(await app.run(manifest, options(max_attempts=2))).exit_code for _ in range(3)]

    assert codes == [ExitCode.EARLY, ExitCode.EARLY, ExitCode.FAILED]
    error, kind = workspace.db().execute("SELECT error, failure_kind FROM jobs").fetchone()
    assert kind == "attempts" and error.startswith("gave up after 2 batch attempts")
    assert fake.batch.batches_created == 2


async def test_batch_mode_on_postgresql(
    workspace: Workspace, fake: FakeProvider, pg_database: str
) -> None:
    jobs = [{"image": workspace.image(f"pg{i}.png"), "prompt": f"pg {i}"} for i in range(4)]
    manifest = batch_manifest(workspace, jobs)
    fake.batch.line_faults = {0: "server_error"}
    on_pg = replace(options(), db=pg_database)

    first = await app.run(manifest, on_pg)
    fake.batch.line_faults = {}
    second = await app.run(manifest, on_pg)
    third = await app.run(manifest, on_pg)

    assert first.summary.counts["submitted"] == 4
    assert second.summary.counts["succeeded"] == 3 and second.summary.counts["submitted"] == 1
    assert third.exit_code == ExitCode.OK and third.summary.counts["succeeded"] == 4
    assert fake.batch.batches_created == 2 and set(fake.paid.values()) == {1}


async def test_a_provider_that_wants_another_upload_purpose_gets_it(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"pu{i}.png"), "prompt": f"pu {i}"} for i in range(3)]
    manifest = batch_manifest(workspace, jobs)
    fake.batch.refused_purposes = {"vision"}

    submitted = await app.run(manifest, options())

    assert submitted.summary.counts["submitted"] == 3
    purposes = sorted(f.purpose for f in fake.batch.live_files())  # the batch is still open
    assert purposes == ["batch", "user_data", "user_data", "user_data"]
    collected = await app.run(manifest, options())
    assert collected.exit_code == ExitCode.OK and collected.summary.counts["succeeded"] == 3


async def test_uploads_side_by_side_all_learn_the_refused_purpose(fake: FakeProvider) -> None:
    """Several uploads refused at once must not leave the client with no purpose to try."""
    import anyio
    import httpx

    from runner.dialects.openai.batch import OpenAIBatchClient

    fake.batch.refused_purposes = {"vision"}
    answers: list[str] = []
    async with httpx.AsyncClient() as http:
        client = OpenAIBatchClient(fake.base_url, API_KEY, http)

        async def upload(i: int) -> None:
            answers.append(str((await client.upload_image(b"x" * (i + 1), f"{i}.png"))["purpose"]))

        async with anyio.create_task_group() as group:
            for i in range(6):
                group.start_soon(upload, i)
        answers.append(str((await client.upload_image(b"late", "late.png"))["purpose"]))

    assert answers == ["user_data"] * 7


class Recorder:
    """A progress reporter that keeps what it was shown."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.snapshots: list[Any] = []
        self.finished: list[str] = []

    def start(self, total: int) -> None:
        self.started.append(total)

    def update(self, snapshot: Any) -> None:
        self.snapshots.append(snapshot)

    def event(self, level: str, message: str, **fields: Any) -> None:
        pass

    def finish(self, snapshot: Any, outcome: str) -> None:
        self.snapshots.append(snapshot)
        self.finished.append(outcome)

    def close(self) -> None:
        pass


async def test_the_progress_display_shows_batch_prices(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"pr{i}.png"), "prompt": f"pr {i}"} for i in range(4)]
    manifest = batch_manifest(workspace, jobs)
    shown = Recorder()

    await app.run(manifest, replace(options(), reporter=shown))

    assert shown.started == [4] and shown.finished == ["stopped"]
    first, last = shown.snapshots[0], shown.snapshots[-1]
    live = await app.validate(workspace.manifest(jobs, name="live.yaml", database="live.db"))
    assert abs(first.estimated_total_usd - live.estimated_cost_usd / 2) < 1e-9  # batch prices
    assert last.in_flight == 4 and "4 jobs in 1 batch at OpenAI" in last.paused

    collected = Recorder()
    await app.run(manifest, replace(options(), reporter=collected))
    done = collected.snapshots[-1]
    assert collected.finished == ["completed"] and done.succeeded == 4
    assert done.spent_usd > 0 and abs(done.estimated_total_usd - done.spent_usd) < 1e-9
