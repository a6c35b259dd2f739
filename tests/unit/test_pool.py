"""The pool's races, over the in-memory store and an in-process provider: no HTTP, no
SQLite, no real sleeps. Each test stages an interleaving that HTTP timing cannot."""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import FakeClock, png_bytes

from runner.dialects.openai.rules import LIMITS
from runner.engine.attempt import Sending
from runner.engine.budget import LimitGuard, ResolvedLimits
from runner.engine.pacing import ProviderGate
from runner.engine.pool import Pool
from runner.engine.ports import Files, Lane
from runner.errors import (
    InputChanged,
    InputError,
    LeaseLost,
    PaymentRequired,
    PermanentJobError,
    ProviderPaced,
    RetryableError,
)
from runner.files.uploads import ReadAhead
from runner.records import (
    AttemptRecord,
    EditRequest,
    EditResult,
    ImageLimits,
    ImagePart,
    InputFile,
    JobSpec,
    Outcome,
    OutputRef,
    ReplyFacts,
    ReplyImage,
)
from runner.settings import RetrySettings, RunSettings
from runner.store.memory import MemoryStore
from runner.store.protocol import RunInfo

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
PNG = png_bytes((8, 8))
Answer = Callable[[EditRequest], Awaitable[EditResult]]


def spec(n: int) -> JobSpec:
    return JobSpec(
        key=f"{n:02d}" + "k" * 62, entry=n, image=Path(f"/in/{n}.png"), mask=None,
        prompt=f"job {n}", provider="p", model="gpt-image-2", params={},
        output_dir=Path("/out"), output_name="{stem}",
    )  # fmt: skip


def ok() -> EditResult:
    return EditResult((ReplyImage(PNG, "PNG", 8, 8),), usage=None, request_id=None)


class Provider:
    """Answers each request with the next step of its job's script (a result or an error);
    `hook` runs first, to stage what happens while the request is out."""

    name = "p"

    def __init__(self, scripts: dict[str, list[Any]] | None = None) -> None:
        self.scripts = scripts or {}
        self.sent: list[str] = []
        self.hook: Callable[[str], Awaitable[None]] | None = None

    def limits_for(self, model: str) -> ImageLimits:
        return LIMITS

    def check_request(self, request: EditRequest) -> None:
        pass

    async def edit(self, request: EditRequest) -> EditResult:
        key = request.prompt
        self.sent.append(key)
        if self.hook is not None:
            await self.hook(key)
        script = self.scripts.get(key, [])
        if script and isinstance(script[0], Exception):
            raise script.pop(0)  # not through a local: that would be a cycle of the fake's own
        step = script.pop(0) if script else ok()
        assert isinstance(step, EditResult)
        return step


def prepare(job: JobSpec, limits: ImageLimits) -> EditRequest:
    return EditRequest(job.model, job.prompt, ImagePart("i.png", "image/png", PNG), None, {})


WRITTEN: list[str] = []  # the output name template of every write, in order


def write(job: JobSpec, images: Any) -> tuple[OutputRef, ...]:
    WRITTEN.append(job.output_name)
    return (OutputRef(0, job.output_dir / f"{job.entry}.png", "00" * 32, 1, 8, 8, "PNG"),)


FILES = Files(prepare, write, free_space=lambda folder: 10**12)


async def pool_over(
    store: MemoryStore,
    provider: Provider,
    *,
    jobs: int,
    concurrency: int = 1,
    limits: LimitGuard | None = None,
    max_attempts: int = 5,
    files: Files = FILES,
) -> tuple[Pool, ProviderGate, list[JobSpec]]:
    specs = [spec(n) for n in range(jobs)]
    await store.sync_manifest("m", specs)
    await store.start_run(RunInfo("r", "m", "host", 1, "tag"))
    gate = ProviderGate("p", FakeClock())
    pool = Pool(
        store,
        {"p": Lane(provider, gate, concurrency)},
        manifest="m",
        owner="r",
        # poll_s: how often it looks again while another runner holds a job (real time).
        settings=RunSettings(retry=RetrySettings(max_attempts=max_attempts), poll_s=0.01),
        files=files,
        wall_clock=lambda: NOW,
        clock=FakeClock(),
        limits=limits,
    )
    return pool, gate, specs


def new_store() -> MemoryStore:
    return MemoryStore(lambda: NOW)


async def states(store: MemoryStore) -> dict[str, str]:
    return {key[:2]: state for key, state in (await store.job_states("m")).items()}


async def outcomes(store: MemoryStore, key: str) -> list[tuple[str, bool]]:
    rows = await store.export_rows("m")
    assert any(r.key == key for r in rows)
    return [
        (a.outcome, a.counted)
        for a in sorted(store._t.attempts.values(), key=lambda a: a.id)
        if a.job_key == key
    ]


async def test_a_402_while_another_attempt_is_being_recorded_sends_nothing_more() -> None:
    store = new_store()
    provider = Provider({"job 0": [PaymentRequired("HTTP 402: top up", status_code=402)]})
    pool, gate, specs = await pool_over(store, provider, jobs=2, concurrency=2)
    real_begin = store.begin_attempt

    async def begin_after_the_402(key: str, owner: str, prov: str, model: str, **lease: Any) -> Any:
        if key == specs[1].key:  # job 1's record is being written when job 0's 402 lands
            while not gate.stopped:
                await anyio.sleep(0)
        return await real_begin(key, owner, prov, model, **lease)

    store.begin_attempt = begin_after_the_402  # type: ignore[method-assign]
    with anyio.fail_after(5):
        report = await pool.run()

    assert provider.sent == ["job 0"]  # job 1 was never sent
    assert [s.kind for s in report.stops] == ["payment"]
    assert await states(store) == {"00": "pending", "01": "pending"}
    assert await outcomes(store, specs[0].key) == [("payment", False)]
    # Either its record went in before the stop and says it was not sent, or the store
    # already knew of the stop (`stop_provider`) and refused to record it at all.
    assert await outcomes(store, specs[1].key) in ([("not_sent", False)], [])


async def test_a_limit_reached_with_retries_waiting_lets_admitted_jobs_finish() -> None:
    store = new_store()
    flaky = [RetryableError("HTTP 500", status_code=500)]
    provider = Provider({"job 0": list(flaky), "job 1": list(flaky)})
    guard = LimitGuard(ResolvedLimits(max_jobs=2), lambda: NOW)
    pool, _, _ = await pool_over(store, provider, jobs=4, concurrency=2, limits=guard)

    with anyio.fail_after(5):
        report = await pool.run()

    assert sorted(provider.sent) == ["job 0", "job 0", "job 1", "job 1"]  # retried, no others
    assert report.succeeded == 2
    assert [s.kind for s in report.stops] == ["limit"]
    assert await states(store) == {
        "00": "succeeded", "01": "succeeded", "02": "pending", "03": "pending"
    }  # fmt: skip


class Choosy(Provider):
    """Refuses job 0's request before it is sent (a model rule, as Venice's catalogue)."""

    def check_request(self, request: EditRequest) -> None:
        if request.prompt == "job 0":
            raise InputError("prompt", "not for this model")


async def test_every_job_gives_back_the_bytes_pre_flight_held_for_its_send() -> None:
    # Pre-flight's bytes wait for the first send within a run-wide allowance; a job that
    # ends without a send taking them (refused, failed, stopped by a limit) must give them
    # back, or the allowance would run dry and hold memory for nothing.
    allowance = ReadAhead(100 * len(PNG))

    def holding(job: JobSpec, limits: ImageLimits) -> EditRequest:
        source = InputFile(Path("/in/i.png"), len(PNG), "00" * 32)
        part = ImagePart("i.png", "image/png", b"", source, allowance.hold(PNG))
        return EditRequest(job.model, job.prompt, part, None, {})

    store = new_store()
    provider = Choosy({"job 1": [PermanentJobError("refused", status_code=400)]})
    guard = LimitGuard(ResolvedLimits(max_jobs=3), lambda: NOW)
    files = Files(holding, write, free_space=lambda folder: 10**12)
    pool, _, _ = await pool_over(store, provider, jobs=5, limits=guard, files=files)

    with anyio.fail_after(5):
        report = await pool.run()

    assert provider.sent == ["job 1", "job 2", "job 3"]  # job 0 refused, job 4 over the limit
    assert (report.succeeded, report.failed) == (2, 2)
    assert allowance.room == 100 * len(PNG)


async def steal_while_out(store: MemoryStore, key: str) -> None:
    """Our lease lapses while the request is out (a paused laptop): another runner takes
    the job."""
    store._t.jobs[key].lease_expires_at = NOW - timedelta(seconds=1)
    taken = await store.claim_many("m", "p", "other", NOW + timedelta(minutes=2), 1)
    assert [j.spec.key for j in taken] == [key]


async def run_beside_the_other_runner(pool: Pool, store: MemoryStore, key: str) -> dict[str, Any]:
    """Run the pool; once our attempt has its answer, note the job's row, then let the
    other runner finish the job (so our pool, which waits for it, can end)."""
    seen: dict[str, Any] = {}
    settled = anyio.Event()  # our pool has written what the answer meant for the job
    real_fail, real_complete, real_finish = store.fail, store.complete, store.finish_attempt

    async def fail(*args: Any, **kwargs: Any) -> None:
        await real_fail(*args, **kwargs)
        settled.set()

    async def complete(*args: Any, **kwargs: Any) -> bool:
        recorded = await real_complete(*args, **kwargs)
        settled.set()
        return recorded

    async def finish_attempt(ticket: Any, record: AttemptRecord) -> None:
        await real_finish(ticket, record)
        if record.outcome is Outcome.SUCCEEDED:  # a paid reply kept aside: nothing follows
            settled.set()

    store.fail, store.complete = fail, complete  # type: ignore[method-assign]
    store.finish_attempt = finish_attempt  # type: ignore[method-assign]

    async def other_runner() -> None:
        await settled.wait()
        row = store._t.jobs[key]
        seen.update(status=row.status, owner=row.lease_owner, error=row.error)
        try:  # the other runner sends the job only if it still holds it
            ticket = await store.begin_attempt(key, "other", "p", "m")
        except LeaseLost:
            seen["other sent"] = False
            return
        seen["other sent"] = True
        await real_complete(key, "other", ticket, AttemptRecord(Outcome.SUCCEEDED), [])

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(other_runner)
            seen["report"] = await pool.run()
    return seen


async def test_a_job_whose_lease_was_taken_is_left_to_its_new_holder() -> None:
    store = new_store()
    provider = Provider({"job 0": [PermanentJobError("HTTP 400: bad", status_code=400)]})
    pool, _, specs = await pool_over(store, provider, jobs=1)
    await store.start_run(RunInfo("other", "m", "host2", 2, "tag"))
    provider.hook = lambda key: steal_while_out(store, specs[0].key)

    seen = await run_beside_the_other_runner(pool, store, specs[0].key)

    # Our failure did not land on a job another runner now holds.
    assert (seen["status"], seen["owner"], seen["error"]) == ("running", "other", None)
    assert seen["other sent"] is True


async def test_a_success_after_the_lease_was_taken_is_paid_but_not_recorded_over_the_holder() -> (
    None
):
    store = new_store()
    provider = Provider()
    pool, _, specs = await pool_over(store, provider, jobs=1)
    await store.start_run(RunInfo("other", "m", "host2", 2, "tag"))
    provider.hook = lambda key: steal_while_out(store, specs[0].key)
    WRITTEN.clear()

    seen = await run_beside_the_other_runner(pool, store, specs[0].key)

    assert (seen["status"], seen["owner"]) == ("running", "other")  # the holder's to finish
    assert seen["other sent"] is True
    assert seen["report"].succeeded == 0
    (ours, theirs) = [a for a in store._t.attempts.values() if a.job_key == specs[0].key]
    assert ours.outcome == "succeeded" and ours.record is not None  # on record as paid
    assert "another runner holds this job" in (ours.record.error_message or "")
    assert WRITTEN == ["{stem}.lost-r"]  # a name of its own, never the holder's
    assert theirs.run_id == "other"


async def test_cancelling_in_the_grace_period_abandons_and_releases_the_request() -> None:
    store = new_store()
    provider = Provider()
    out = anyio.Event()

    async def hang(key: str) -> None:
        out.set()
        await anyio.sleep_forever()

    provider.hook = hang
    pool, _, specs = await pool_over(store, provider, jobs=2)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:

            async def run() -> None:
                await pool.run()

            group.start_soon(run)
            await out.wait()
            pool.halt("signal", "SIGTERM")  # no new job; the request out may finish...
            pool.cancel_in_flight()  # ...until the grace period is over

    assert provider.sent == ["job 0"]
    assert await states(store) == {"00": "pending", "01": "pending"}
    assert await outcomes(store, specs[0].key) == [("abandoned", True)]  # may be billed
    assert pool.report.succeeded == 0


async def test_a_spent_request_window_pauses_the_other_runners_until_its_reset() -> None:
    store = new_store()
    spent = EditResult(
        (ReplyImage(PNG, "PNG", 8, 8),), usage=None, request_id=None,
        facts=ReplyFacts(rate_remaining=0, rate_reset_in_s=42.0),
    )  # fmt: skip
    provider = Provider({"job 0": [spent]})
    pool, _, _ = await pool_over(store, provider, jobs=1)
    await store.start_run(RunInfo("other", "m", "host2", 2, "tag"))
    with anyio.fail_after(5):
        await pool.run()

    await store.sync_manifest("m2", [spec(7)])
    (job,) = await store.claim_many("m2", "p", "other", NOW + timedelta(minutes=5), 1)
    with pytest.raises(ProviderPaced) as paused:  # the other runner waits for the reset
        await store.begin_attempt(job.spec.key, "other", "p", "m")
    assert paused.value.wait_s == pytest.approx(42.0)


async def test_a_sent_job_leaves_no_cycle_holding_its_upload() -> None:
    # Between full garbage collections, whatever sits in a reference cycle stays: a job's
    # upload caught in tenacity's state (it points back at its AsyncRetrying) piled up at
    # ~80 uploads, hundreds of MB on a long run. Sent and answered, a job's request must
    # go as soon as nothing uses it. (A retried job's request too.)
    store = new_store()
    provider = Provider({"job 1": [RetryableError("HTTP 500", status_code=500)]})
    pool, _, _ = await pool_over(store, provider, jobs=3)
    gc.collect()
    gc.disable()
    try:
        with anyio.fail_after(5):
            report = await pool.run()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        caught = [o for o in gc.garbage if isinstance(o, EditRequest | Sending)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert report.succeeded == 3 and provider.sent.count("job 1") == 2
    assert caught == []


async def test_an_input_changed_while_being_sent_fails_as_bad_input_with_no_attempt_used() -> None:
    store = new_store()
    changed = InputChanged("image", "/data/a.png changed since the job was queued (not sent)")
    provider = Provider({"job 0": [changed]})
    pool, _, specs = await pool_over(store, provider, jobs=1)

    with anyio.fail_after(5):
        report = await pool.run()

    assert provider.sent == ["job 0"] and report.failed == 1  # asked once, never again
    row = store._t.jobs[specs[0].key]
    assert (row.status, row.failure_kind) == ("failed", "input")
    assert "changed since the job was queued" in (row.error or "")
    # Cut off before its last byte: not delivered, so not an attempt that could be billed.
    assert await outcomes(store, specs[0].key) == [("not_sent", False)]
