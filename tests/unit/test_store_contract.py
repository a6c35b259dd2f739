"""MemoryStore is the SQL store's twin: one scenario through every Store verb, run on both
(SqlStore over a real SQLite file), must leave both saying exactly the same things."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from runner.errors import LeaseLost, ProviderBusy, ProviderPaced, StopNotice, StoppedElsewhere
from runner.manifest.digests import DigestEntry
from runner.records import (
    AttemptRecord,
    FailureKind,
    JobSpec,
    JobState,
    Outcome,
    OutputRef,
    ReplyFacts,
    Usage,
)
from runner.store.engine import open_store
from runner.store.memory import MemoryStore
from runner.store.protocol import RunInfo, Store

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
LEASE = NOW + timedelta(minutes=2)
KEY = "sk-contract-SECRET-1234567890"


def clock() -> datetime:
    return NOW


def spec(n: int, provider: str = "p") -> JobSpec:
    return JobSpec(
        key=f"{n:02d}" + "k" * 62, entry=n, image=Path(f"/in/{n}.png"), mask=None,
        prompt=f"edit {n}", provider=provider, model="m", params={"n": 1, "size": "auto"},
        output_dir=Path("/out"), output_name="{stem}",
    )  # fmt: skip


def output(n: int) -> OutputRef:
    return OutputRef(0, Path(f"/out/{n}.png"), "ab" * 32, 10, 4, 4, "PNG")


PAID = AttemptRecord(
    outcome=Outcome.SUCCEEDED, latency_ms=5, http_status=200, request_id=f"req {KEY}",
    usage=Usage(input_tokens=10, output_tokens=20, total_tokens=30, raw='{"t":30}'),
    cost_usd=0.5, facts=ReplyFacts(balance_usd=9.5, balance_after_usd=9.0),
)  # fmt: skip


async def scenario(store: Store) -> dict[str, Any]:
    """Every verb, with what each answered; the final reports too."""
    seen: dict[str, Any] = {}
    jobs = [spec(1), spec(2), spec(3), spec(4), spec(5, provider="q")]
    seen["new"] = await store.sync_manifest("m", jobs)
    seen["new again"] = await store.sync_manifest("m", jobs)
    await store.start_run(RunInfo("r1", "m", "host", 1, "tag"))
    await store.start_run(RunInfo("r2", "m", "host", 2, "tag"))
    await store.start_run(RunInfo("r3", "m", "other-host", 3, "tag"))
    first = await store.claim_many("m", "p", "r1", LEASE, 2)
    seen["claimed"] = [(j.spec.key[:2], j.attempts_this_round, j.unanswered) for j in first]
    # Job 1: a timeout, then a paid success with outputs.
    ticket = await store.begin_attempt(jobs[0].key, "r1", "p", "m")
    await store.finish_attempt(ticket, AttemptRecord(Outcome.TIMEOUT, error_message=KEY))
    ticket = await store.begin_attempt(jobs[0].key, "r1", "p", "m")
    await store.complete(jobs[0].key, "r1", ticket, PAID, [output(1)])
    # Job 2: a counted failure, an uncounted 402, then failed for good.
    ticket = await store.begin_attempt(jobs[1].key, "r1", "p", "m")
    await store.finish_attempt(ticket, AttemptRecord(Outcome.RETRYABLE, http_status=500))
    ticket = await store.begin_attempt(jobs[1].key, "r1", "p", "m")
    await store.finish_attempt(ticket, AttemptRecord(Outcome.PAYMENT, counted=False))
    await store.fail(jobs[1].key, "r1", f"gave up {KEY}", FailureKind.ATTEMPTS)
    await store.fail(jobs[1].key, "r2", "not ours", FailureKind.INPUT)  # left alone
    seen["held elsewhere"] = await store.held_elsewhere("m", "p", "r2")
    second = await store.claim_many("m", "p", "r2", LEASE, 5)
    seen["claimed 2"] = [(j.spec.key[:2], j.attempts_this_round, j.unanswered) for j in second]
    # Job 3: weather renews its attempts, then it goes back with a fresh set.
    ticket = await store.begin_attempt(jobs[2].key, "r2", "p", "m")
    await store.finish_attempt(ticket, AttemptRecord(Outcome.RETRYABLE))
    await store.renew_attempts(jobs[2].key, "r2")
    await store.release(jobs[2].key, "r2", fresh_attempts=True)
    # Job 4: left in flight when its run dies.
    late = await store.begin_attempt(jobs[3].key, "r2", "p", "m")
    seen["unfinished"] = [r.id for r in await store.unfinished_runs("host")]
    seen["reclaimed"] = await store.reclaim_dead_runs(["r2"])
    seen["reclaimed none"] = await store.reclaim_dead_runs([])
    seen["late unknown"] = await store.record_late(jobs[3].key, 999, PAID, [])
    seen["late"] = await store.record_late(jobs[3].key, late.id, PAID, [output(4)])
    seen["late again"] = await store.record_late(jobs[3].key, late.id, PAID, [])
    again = await store.claim_many("m", "p", "r1", NOW - timedelta(seconds=1), 5)
    seen["claimed 3"] = [(j.spec.key[:2], j.attempts_this_round, j.unanswered) for j in again]
    # Leases that lapsed are taken (and their unanswered attempts abandoned) when nothing
    # pending is left.
    await store.begin_attempt(jobs[2].key, "r1", "p", "m")
    stolen = await store.claim_many("m", "p", "r3", NOW + timedelta(hours=1), 5)
    seen["stolen"] = [(j.spec.key[:2], j.attempts_this_round) for j in stolen]
    # Job 5 (another provider): a timeout counts as a blind re-send on its next claim.
    q = await store.claim_many("m", "q", "r3", LEASE, 1)
    ticket = await store.begin_attempt(q[0].spec.key, "r3", "q", "m")
    await store.finish_attempt(ticket, AttemptRecord(Outcome.TIMEOUT))
    await store.release(q[0].spec.key, "r3")
    seen["blind re-sends"] = [
        (j.spec.key[:2], j.attempts_this_round, j.unanswered)
        for j in await store.claim_many("m", "q", "r3", LEASE, 1)
    ]
    await store.renew_leases("r3", LEASE)
    await store.end_run("r1", 75, f"stopped {KEY}")
    seen["retry"] = await store.retry("m")
    seen["retry one"] = await store.retry("m", jobs[0].key[:4])  # succeeded: not moved
    seen["cancel"] = await store.cancel("m", None, [JobState.PENDING])
    seen["retry cancelled"] = await store.retry("m", jobs[4].key[:4])
    await store.set_prices({jobs[4].key: '{"per_edit_usd": 0.04}', jobs[0].key: '{"x": 1}'})
    await store.save_catalogue("https://v/models", f"body {KEY}")
    seen["catalogue"] = await store.load_catalogue("https://v/models")
    seen["no catalogue"] = await store.load_catalogue("https://other")
    await store.save_digests(
        [DigestEntry("/in/1.png", 10, 5, "aa"), DigestEntry("/in/1.png", 11, 6, "bb")]
    )
    seen["digests"] = dict(await store.digests_for(["/in/1.png", "/in/2.png"]))
    seen["summary"] = asdict(await store.summary("m"))
    seen["export"] = [asdict(row) for row in await store.export_rows("m")]
    every = [state.value for state in JobState]
    first = await store.export_page("m", every, -1, 2)
    rest = await store.export_page("m", every, first[-1][0], 100)
    assert [asdict(row) for _, row in [*first, *rest]] == seen["export"]  # the same, paged
    cancelled = await store.export_page("m", ["cancelled"], -1, 100)
    seen["export pages"] = [
        [(position, row.key) for position, row in first],
        [(position, row.status) for position, row in rest],
        [(position, row.key, row.status) for position, row in cancelled],
    ]
    seen["states"] = dict(await store.job_states("m"))
    seen["succeeded_costs"] = dict(await store.succeeded_costs("m"))
    seen["outputs"] = sorted(await store.output_paths())
    seen.update(await chunked_syncs(store))
    # Another manifest's jobs in the database now (and one of m's jobs in it too): m's
    # counts, totals and spend stay m's own.
    seen["counts"] = dict(await store.state_counts("m"))
    await store.sync_manifest("other", [spec(n) for n in (2, 95, 96)])
    seen["summary, the database shared"] = asdict(await store.summary("m"))
    seen["counts, the database shared"] = dict(await store.state_counts("m"))
    # Claims while the sync of "c" is under way take only what is synced so far (`below`): the
    # failed row at position 0 is skipped, and nothing at position 3 or later comes.
    below = await store.claim_many("c", "p", "r3", LEASE, 5, below=3)
    seen["claimed below"] = [(j.spec.key[:2], j.attempts_this_round) for j in below]
    seen["claimed on"] = [j.spec.key[:2] for j in await store.claim_many("c", "p", "r3", LEASE, 2)]
    return seen


async def listed(store: Store, manifest: str) -> list[str]:
    every = {state.value for state in JobState}
    return [s.key[:2] for _, s in await store.specs_page(manifest, every, -1, 100)]


async def chunked_syncs(store: Store) -> dict[str, Any]:
    """A long manifest is synced a chunk at a time; a re-sync in other chunks moves, drops
    and adds jobs exactly as one whole sync would."""
    seen: dict[str, Any] = {}
    first = [spec(n) for n in range(70, 80)]
    for start in range(0, len(first), 3):
        await store.sync_manifest("c", first[start : start + 3], start=start, final=False)
    await store.sync_manifest("c", [], start=len(first), final=True)
    seen["chunked"] = await listed(store, "c")
    kept = [spec(n) for n in reversed(range(70, 80)) if n not in (73, 77)]
    second = [spec(90), *kept, spec(91)]
    new = 0
    for start in range(0, len(second), 4):
        new += await store.sync_manifest("c", second[start : start + 4], start=start, final=False)
    await store.sync_manifest("c", [], start=len(second), final=True)
    seen["resynced"] = (await listed(store, "c"), new)
    page = await store.specs_page("c", {JobState.PENDING.value}, 2, 3)
    seen["page"] = [(position, s.key[:2]) for position, s in page]
    seen["state counts"] = dict(await store.state_counts("m"))
    seen["rejected"] = list(await store.reject_rows({spec(90).key: "t.csv: row 1: bad"}))
    seen["rejected again"] = list(await store.reject_rows({spec(90).key: "t.csv: row 1: bad"}))
    seen["retried"] = await store.retry("c")  # an unusable row stays failed
    await store.save_digests([DigestEntry("/in/a.png", 1, 2, "aa" * 32)])
    seen["digests_for"] = dict(await store.digests_for(["/in/a.png", "/in/none.png"]))
    return seen


async def sql_store(tmp_path: Path) -> Store:
    return await open_store(f"sqlite+aiosqlite:///{tmp_path / 'twin.db'}", clock)


async def memory_store(tmp_path: Path) -> Store:
    return MemoryStore(clock)


async def run(make: Callable[[Path], Any], tmp_path: Path) -> dict[str, Any]:
    store = await make(tmp_path)
    try:
        return await scenario(store)
    finally:
        await store.close()


async def test_the_memory_store_answers_every_verb_as_the_sql_store_does(
    tmp_path: Path,
) -> None:
    expected = await run(sql_store, tmp_path)
    got = await run(memory_store, tmp_path)

    for step in expected:
        assert got[step] == expected[step], step
    assert expected["claimed"][0] == ("01", 0, 0)
    assert KEY not in repr(expected)  # provider texts are redacted by both
    assert expected["succeeded_costs"]  # the scenario has a paid success to report
    assert expected["chunked"] == [str(n) for n in range(70, 80)]
    resynced = ["90", "79", "78", "76", "75", "74", "72", "71", "70", "91"]
    assert expected["resynced"] == (resynced, 2)
    assert expected["page"] == [(3, "76"), (4, "75"), (5, "74")]
    assert list(expected["digests_for"]) == ["/in/a.png"]
    assert expected["rejected"] == [spec(90).key] and expected["rejected again"] == []
    assert expected["retried"] == 0
    assert expected["summary, the database shared"] == expected["summary"]
    assert expected["counts, the database shared"] == expected["counts"]
    assert sum(expected["counts"].values()) == 5
    assert expected["claimed below"] == [("79", 0), ("78", 0)]
    assert expected["claimed on"] == ["76", "75"]
    assert sum(expected["summary"]["counts"].values()) == 5


@pytest.mark.parametrize("make", [sql_store, memory_store])
async def test_a_success_after_the_job_was_taken_over_is_paid_but_not_the_jobs_result(
    make: Callable[[Path], Any], tmp_path: Path
) -> None:
    store = await make(tmp_path)
    key = spec(1).key
    try:
        await store.sync_manifest("m", [spec(1)])
        for owner in ("old", "new"):
            await store.start_run(RunInfo(owner, "m", "host", 1, "tag"))
        await store.claim_many("m", "p", "old", NOW - timedelta(seconds=1), 1)
        ticket = await store.begin_attempt(key, "old", "p", "m")
        await store.claim_many("m", "p", "new", LEASE, 1)  # the lease had lapsed
        assert await store.holds(key, "new") and not await store.holds(key, "old")
        assert await store.complete(key, "old", ticket, PAID, [output(1)]) is False
        await store.fail(key, "old", "late", FailureKind.ATTEMPTS)  # not over it either
        assert (await store.job_states("m"))[key] == "running"  # still the holder's
        assert await store.output_paths() == frozenset()
        theirs = await store.begin_attempt(key, "new", "p", "m")
        assert await store.complete(key, "new", theirs, PAID, [output(2)]) is True
        assert await store.output_paths() == frozenset({"/out/2.png"})  # one result
        (row,) = await store.export_rows("m")
        assert row.usage.cost_usd == 2 * (PAID.cost_usd or 0)  # both replies were paid
    finally:
        await store.close()


@pytest.mark.parametrize("make", [sql_store, memory_store])
async def test_an_attempt_is_recorded_only_while_the_job_is_still_held(
    make: Callable[[Path], Any], tmp_path: Path
) -> None:
    await fencing(await make(tmp_path))


@pytest.mark.slow  # a PostgreSQL server
async def test_the_sql_store_on_postgresql_answers_as_on_sqlite_and_fences_sends(
    tmp_path: Path, pg_database: str
) -> None:
    async def pg_store(_: Path) -> Store:
        return await open_store(
            pg_database.replace("postgresql://", "postgresql+asyncpg://"), clock
        )

    expected = await run(sql_store, tmp_path)
    got = await run(pg_store, tmp_path)
    for step in expected:
        assert got[step] == expected[step], step
    await fencing(await pg_store(tmp_path))
    await stopping(await pg_store(tmp_path))
    await concurrency(await pg_store(tmp_path))
    await budget(await pg_store(tmp_path))
    await pacing(await pg_store(tmp_path))


async def fencing(store: Store) -> None:
    """A manifest and runs of its own, so that it can follow `scenario` on one database."""
    job, key = spec(9), spec(9).key
    try:
        await store.sync_manifest("fence", [job])
        for owner in ("paused", "other"):
            await store.start_run(RunInfo(owner, "fence", "host", 1, "tag"))
        # The runner slept past its lease: nobody has taken the job yet, but anyone may.
        await store.claim_many("fence", "p", "paused", NOW - timedelta(seconds=1), 1)
        with pytest.raises(LeaseLost):
            await store.begin_attempt(key, "paused", "p", "m", lease_until=LEASE)
        taken = await store.claim_many("fence", "p", "other", LEASE, 5)
        assert [held.spec.key for held in taken] == [key]
        with pytest.raises(LeaseLost):  # and now it is another runner's
            await store.begin_attempt(key, "paused", "p", "m", lease_until=LEASE)
        await store.begin_attempt(key, "other", "p", "m", lease_until=LEASE)
        (row,) = await store.export_rows("fence")
        assert row.attempts == 1  # the paused runner's tries left no record
        await store.fail(key, "other", "bad input", FailureKind.INPUT)
        with pytest.raises(LeaseLost):  # a finished job is nobody's to send
            await store.begin_attempt(key, "other", "p", "m")
    finally:
        await store.close()


@pytest.mark.parametrize("make", [sql_store, memory_store])
async def test_a_provider_stopped_by_one_runner_is_stopped_for_all(
    make: Callable[[Path], Any], tmp_path: Path
) -> None:
    await stopping(await make(tmp_path))


async def stopping(store: Store) -> None:
    """A manifest of its own, so that it can follow `scenario` on one database."""
    jobs = [spec(7), spec(8, provider="q")]
    try:
        await store.sync_manifest("stops", jobs)
        await store.start_run(RunInfo("first", "stops", "host", 1, "tag"))
        await store.start_run(RunInfo("second", "stops", "host", 2, "tag"))
        (held,) = await store.claim_many("stops", "p", "second", LEASE, 1)
        await store.stop_provider(StopNotice("p", "payment", f"HTTP 402: top up {KEY}", 3), "first")
        await store.stop_provider(StopNotice("p", "payment", "a later 402", 3), "second")
        with pytest.raises(StoppedElsewhere) as stopped:
            await store.begin_attempt(held.spec.key, "second", "p", "m", lease_until=LEASE)
        notice = stopped.value.notice
        assert (notice.provider, notice.kind, notice.exit_code) == ("p", "payment", 3)
        assert KEY not in notice.message and "top up" in notice.message  # the first reason
        (other,) = await store.claim_many("stops", "q", "second", LEASE, 1)
        await store.begin_attempt(other.spec.key, "second", "q", "m")  # another provider
        await store.clear_provider_stops(["p"])  # a run starts after the top-up
        await store.begin_attempt(held.spec.key, "second", "p", "m", lease_until=LEASE)
    finally:
        await store.close()


@pytest.mark.parametrize("make", [sql_store, memory_store])
async def test_the_concurrency_holds_for_every_runner_together(
    make: Callable[[Path], Any], tmp_path: Path
) -> None:
    await concurrency(await make(tmp_path))


async def concurrency(store: Store) -> None:
    """A manifest of its own, so that it can follow `scenario` on one database."""
    jobs = [spec(n, provider="z") for n in (20, 21, 22)]
    try:
        await store.sync_manifest("busy", jobs)
        for owner in ("a", "b"):
            await store.start_run(RunInfo(owner, "busy", "host", 1, "tag"))
        (first,) = await store.claim_many("busy", "z", "a", LEASE, 1)
        (second,) = await store.claim_many("busy", "z", "b", LEASE, 1)
        one = await store.begin_attempt(first.spec.key, "a", "z", "m", in_flight_limit=1)
        with pytest.raises(ProviderBusy):  # runner b waits for a's request
            await store.begin_attempt(second.spec.key, "b", "z", "m", in_flight_limit=1)
        await store.begin_attempt(second.spec.key, "b", "z", "m", in_flight_limit=2)
        await store.finish_attempt(one, AttemptRecord(Outcome.RETRYABLE))
        (third,) = await store.claim_many("busy", "z", "a", NOW - timedelta(seconds=1), 1)
        await store.begin_attempt(third.spec.key, "a", "z", "m", in_flight_limit=2)
        # a's request on a lapsed lease (a runner gone) no longer holds a place
        await store.begin_attempt(first.spec.key, "a", "z", "m", in_flight_limit=2)

        # A runner's own count of its requests out stands for its attempts on record: one
        # answered but not yet recorded does not keep its next request waiting. Another
        # runner still counts both.
        await store.sync_manifest("own", [spec(n, provider="y") for n in (60, 61, 62)])
        mine = await store.claim_many("own", "y", "a", LEASE, 2)
        (theirs,) = await store.claim_many("own", "y", "b", LEASE, 1)
        await store.begin_attempt(mine[0].spec.key, "a", "y", "m", in_flight_limit=1)
        with pytest.raises(ProviderBusy):  # counted from the database: its own attempt
            await store.begin_attempt(mine[1].spec.key, "a", "y", "m", in_flight_limit=1)
        await store.begin_attempt(
            mine[1].spec.key, "a", "y", "m", in_flight_limit=1, own_in_flight=0
        )
        with pytest.raises(ProviderBusy):
            await store.begin_attempt(
                theirs.spec.key, "b", "y", "m", in_flight_limit=2, own_in_flight=0
            )
        with pytest.raises(ProviderBusy):  # b's own request out counts too
            await store.begin_attempt(
                theirs.spec.key, "b", "y", "m", in_flight_limit=3, own_in_flight=1
            )
        await store.begin_attempt(
            theirs.spec.key, "b", "y", "m", in_flight_limit=3, own_in_flight=0
        )
    finally:
        await store.close()


@pytest.mark.parametrize("make", [sql_store, memory_store])
async def test_a_budget_is_shared_by_the_runs_that_overlap(
    make: Callable[[Path], Any], tmp_path: Path
) -> None:
    await budget(await make(tmp_path))


async def budget(store: Store) -> None:
    """A manifest of its own, so that it can follow `scenario` on one database."""
    try:
        await store.sync_manifest("budget", [spec(30, provider="b")])
        for owner in ("x", "y"):
            await store.start_run(RunInfo(owner, "budget", "host", 1, "tag"))
        assert await store.reserve_budget("x", "budget", 4.0, 10.0) == (True, 0.0)
        assert await store.reserve_budget("y", "budget", 4.0, 10.0) == (True, 4.0)
        assert await store.reserve_budget("y", "budget", 4.0, 10.0) == (False, 8.0)
        (job,) = await store.claim_many("budget", "b", "x", LEASE, 1)
        ticket = await store.begin_attempt(job.spec.key, "x", "b", "m")
        await store.finish_attempt(ticket, AttemptRecord(Outcome.RETRYABLE, cost_usd=3.0))
        await store.release_budget("x", 4.0)  # x's job is over: $3 spent instead of $4 held
        assert await store.reserve_budget("y", "budget", 4.0, 10.0) == (False, 7.0)
        assert await store.reserve_budget("y", "budget", 3.0, 10.0) == (True, 7.0)
        await store.release_budget("y", 100.0)  # never below nothing
        assert await store.reserve_budget("x", "budget", 7.0, 10.0) == (True, 3.0)
    finally:
        await store.close()


@pytest.mark.parametrize("make", [sql_store, memory_store])
async def test_the_pace_and_a_pause_hold_for_the_other_live_runners(
    make: Callable[[Path], Any], tmp_path: Path
) -> None:
    await pacing(await make(tmp_path))


async def pacing(store: Store) -> None:
    """A manifest of its own, so that it can follow `scenario` on one database."""
    jobs = [spec(n, provider="r") for n in (40, 41, 42)]
    try:
        await store.sync_manifest("pace", jobs)
        for owner in ("u", "v"):
            await store.start_run(RunInfo(owner, "pace", "host", 1, "tag"))
        (a,) = await store.claim_many("pace", "r", "u", LEASE, 1)
        (b,) = await store.claim_many("pace", "r", "v", LEASE, 1)
        await store.begin_attempt(a.spec.key, "u", "r", "m", interval_s=3.0)  # takes the slot
        with pytest.raises(ProviderPaced) as paced:  # the next slot is 3 s away, for v too
            await store.begin_attempt(b.spec.key, "v", "r", "m", interval_s=3.0)
        assert paced.value.wait_s == pytest.approx(3.0)
        await store.pause_provider("r", 30.0, "u")  # a Retry-After answered to u
        with pytest.raises(ProviderPaced) as paused:  # holds v, whatever its own pace
            await store.begin_attempt(b.spec.key, "v", "r", "m")
        assert paused.value.wait_s == pytest.approx(30.0)
        await store.end_run("u", 75, None)  # u is gone: what it set holds nobody back
        await store.begin_attempt(b.spec.key, "v", "r", "m", interval_s=3.0)
    finally:
        await store.close()
