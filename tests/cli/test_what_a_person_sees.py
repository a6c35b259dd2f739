"""What a person sees of the runner in pipes, logs and scripts (issue 10): JSON events on
stdout, nothing wrapped when stdout is not a terminal, one scheme of environment variables,
`-v` that shows the runner's records and not its libraries', and a short account at the end
of a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread
import click
import pytest
from conftest import API_KEY, KEY_ENV, Workspace
from helpers import Ran, invoke
from rich.cells import cell_len

from runner import app
from runner.app import reading
from runner.cli import main as command_line
from runner.cli import present
from runner.files import procs
from runner.records import ExportRow, JobState, Summary, Totals
from runner.settings import SETTING_FLAGS, env_name
from runner.store.engine import open_store
from runner.store.protocol import RunInfo
from runner.store.sql import SqlStore
from runner.testing import FakeProvider


def runner(*args: str | Path, env: dict[str, str | None] | None = None) -> Ran:
    environment: dict[str, str | None] = {"RUNNER_DB": None, KEY_ENV: API_KEY}
    environment.update(env or {})
    return invoke(*args, env=environment)


def deep_jobs(workspace: Workspace, count: int) -> list[dict[str, str]]:
    folder = "shoots/" + "a-rather-long-folder-name-" * 4 + "/beach"
    return [
        {"image": workspace.image(f"{folder}/photo-{i}.png"), "prompt": f"warmer light {i}"}
        for i in range(count)
    ]


def test_piped_output_is_one_record_per_line_with_whole_paths(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = deep_jobs(workspace, 3)
    manifest = workspace.manifest(jobs)
    assert runner("run", manifest).returncode == 0

    listed = runner("jobs", manifest)
    lines = [line for line in listed.stdout.splitlines() if "photo-" in line]
    assert len(lines) == 3  # not one job spread over several lines
    for job in jobs:
        (line,) = [line for line in lines if job["image"] in line]  # the whole path
        assert job["prompt"] in line
        assert "out/" + Path(job["image"]).stem in line  # and where its output went

    assert not [line for line in listed.stdout.splitlines() if line != line.rstrip()]
    checked = runner("validate", manifest)
    assert len(checked.stdout.splitlines()) == 2
    assert "jobs would fail" not in checked.stdout


def test_json_events_go_to_stdout_and_a_failed_start_still_ends_with_a_result(
    workspace: Workspace, fake: FakeProvider
) -> None:
    manifest = workspace.manifest([{"image": workspace.image("a.png"), "prompt": "x"}])
    unset_key = runner("run", manifest, "--log-format", "json", env={KEY_ENV: None})
    assert unset_key.returncode == 2
    result = json.loads(unset_key.stdout.strip().splitlines()[-1])
    assert result["event"] == "result" and result["exit_code"] == 2 and result["ts"]
    assert KEY_ENV in result["error"]
    assert "error:" in unset_key.stderr  # a person reading the terminal still sees it


def test_every_setting_flag_reads_runner_flag_and_help_says_so() -> None:
    assert isinstance(command_line, click.Group)
    seen = set()
    for name, command in command_line.commands.items():
        help_text = " ".join(invoke(name, "--help", env={}).stdout.split())
        for param in command.params:
            flags = [o for o in getattr(param, "opts", []) if o.startswith("--")]
            if flags and flags[0][2:] in SETTING_FLAGS:
                seen.add(flags[0][2:])
                assert f"env var: {env_name(flags[0])}" in help_text.replace(
                    "env var: ", "env var: "
                ), (name, flags)
    assert seen == set(SETTING_FLAGS)


def test_a_setting_variable_takes_effect(workspace: Workspace, fake: FakeProvider) -> None:
    jobs = [{"image": workspace.image(f"e{i}.png"), "prompt": f"e {i}"} for i in range(3)]
    result = runner("run", workspace.manifest(jobs), env={"RUNNER_MAX_JOBS": "1"})
    assert result.returncode == 75
    assert fake.requests_total == 1


def test_an_unknown_runner_variable_is_warned_about_once(
    workspace: Workspace, fake: FakeProvider
) -> None:
    manifest = workspace.manifest([{"image": workspace.image("a.png"), "prompt": "x"}])
    # An old-style name; the manifest's own key variable (RUNNER_TEST_KEY) is the user's.
    ran = runner("run", manifest, env={"RUNNER_RUN_MAX_COST": "5"})
    assert ran.returncode == 0
    warnings = [line for line in ran.stderr.splitlines() if "RUNNER_RUN_MAX_COST" in line]
    assert len(warnings) == 1 and "did you mean RUNNER_MAX_COST?" in warnings[0]
    assert KEY_ENV not in ran.stderr


def test_verbose_shows_the_runners_records_and_libraries_only_when_very_verbose(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"v{i}.png"), "prompt": f"v {i}"} for i in range(2)]
    manifest = workspace.manifest(jobs)
    verbose = runner("run", manifest, "-v")
    assert verbose.returncode == 0
    assert "succeeded v0.png" in verbose.stderr  # the runner's debug record of each job
    assert "STREAM b'IDAT'" not in verbose.stderr  # Pillow's chatter (it reads the PNGs)

    manifest = workspace.manifest([*jobs, {"image": workspace.image("w.png"), "prompt": "w"}])
    very = runner("run", manifest, "-vv")
    assert very.returncode == 0
    assert "STREAM b'IDAT'" in very.stderr


def test_the_end_of_a_run_says_what_happened_in_a_short_table(
    workspace: Workspace, fake: FakeProvider
) -> None:
    fake.script = ["server_error"]
    jobs = [{"image": workspace.image(f"t{i}.png"), "prompt": f"t {i}"} for i in range(3)]
    ran = runner("run", workspace.manifest(jobs))
    assert ran.returncode == 0
    rows = {line.split()[0]: line for line in ran.stderr.splitlines() if line.strip()}
    assert rows["succeeded"].split()[1] == "3"
    assert "1 (1 server error (5xx))" in rows["retries"]
    assert rows["spent"].startswith("spent") and " in " in rows["spent"]
    assert "3/3 done: 3 succeeded" in rows["manifest"]
    assert "all jobs succeeded (exit 0)" in rows["result"]
    assert "finished: finished" not in ran.stderr


def test_the_run_table_counts_failures_by_reason_and_never_calls_cancelled_succeeded() -> None:
    summary = Summary(counts={"succeeded": 5, "failed": 2, "cancelled": 1}, totals=Totals())
    table = present.run_table(
        summary,
        succeeded=5,
        failed_by_kind={"refused": 1, "attempts": 1},
        retries={"429": 3, "network": 1},
        spent_usd=0.25,
        elapsed_s=75,
        verdict="every job done, 1 of them cancelled by hand (exit 0)",
    )
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "2 (1 refused by the provider, 1 out of attempts)" in text
    assert "4 (3 rate limit (429), 1 network)" in text
    assert "$0.2500 in 1m15s" in text
    assert "8/8 done: 5 succeeded, 2 failed, 1 cancelled" in text
    assert "all jobs succeeded" not in text


def test_jobs_filters_by_text_limits_and_groups_errors(
    workspace: Workspace, fake: FakeProvider
) -> None:
    fake.script = ["bad_request", "moderation", "bad_request"]
    jobs = [{"image": workspace.image(f"g{i}.png"), "prompt": f"sky {i}"} for i in range(5)]
    jobs.append({"image": workspace.image("boat.png"), "prompt": "a red ribbon"})
    manifest = workspace.manifest(jobs, profile={"concurrency": 1})
    assert runner("run", manifest).returncode == 1

    found = runner("jobs", manifest, "--search", "RIBBON")
    assert "boat.png" in found.stdout and "g0.png" not in found.stdout

    cut = runner("jobs", manifest, "-n", "2")
    assert len([line for line in cut.stdout.splitlines() if ".png" in line]) == 2
    assert "showing 2 of 6 jobs" in cut.stderr

    grouped = runner("jobs", manifest, "--group-by", "error", "--json")
    groups = [json.loads(line) for line in grouped.stdout.splitlines()]
    assert [g["count"] for g in groups] == [2, 1]  # the commonest error first
    assert all(len(key) == 10 for g in groups for key in g["keys"])


def test_a_key_prefix_names_one_job_or_says_why_not(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"k{i}.png"), "prompt": f"k {i}"} for i in range(40)]
    manifest = workspace.manifest(jobs)
    assert runner("cancel", manifest).returncode == 0  # all 40 cancelled
    listed_all = runner("jobs", manifest, "--json").stdout.splitlines()
    keys = [json.loads(line)["key"] for line in listed_all]

    # 40 keys, 16 hex digits: some first digit starts several keys.
    first = max("0123456789abcdef", key=lambda d: sum(k.startswith(d) for k in keys))
    sharing = [k for k in keys if k.startswith(first)]
    ambiguous = runner("retry", manifest, "--job", first)
    assert ambiguous.returncode == 2
    assert all(k[:10] in ambiguous.stderr for k in sharing[:10])
    assert "give more" in ambiguous.stderr and len(ambiguous.stderr.splitlines()) == 1
    missing = runner("jobs", manifest, "--job", "ffffffffffffzz")
    assert missing.returncode == 2 and "--job" in missing.stderr
    assert "no job has a key starting with" in missing.stderr

    unique = runner("retry", manifest, "--job", keys[3][:10])
    assert unique.returncode == 0 and "1 job moved back to pending" in unique.stdout
    listed = runner("jobs", manifest, "--job", keys[3][:10])
    assert keys[3][:10] in listed.stdout and "pending" in listed.stdout


def test_status_of_a_manifest_never_run_makes_no_database(workspace: Workspace) -> None:
    jobs = [{"image": workspace.image(f"s{i}.png"), "prompt": f"s {i}"} for i in range(3)]
    manifest = workspace.manifest(jobs)
    shown = runner("status", manifest)
    assert shown.returncode == 0
    assert "never" in shown.stdout and "pending" in shown.stdout
    document = json.loads(runner("status", manifest, "--json").stdout)
    assert document["never_run"] is True and document["counts"]["pending"] == 3
    assert not (workspace.root / "jobs.db").exists()


def test_status_money_is_rounded_in_json(workspace: Workspace, fake: FakeProvider) -> None:
    manifest = workspace.manifest([{"image": workspace.image("m.png"), "prompt": "m"}])
    assert runner("run", manifest).returncode == 0
    document = json.loads(runner("status", manifest, "--json").stdout)
    for value in (document["cost_usd"], document["providers"]["fake"]["cost_usd"]):
        assert value > 0 and round(value, 4) == value  # was 0.028416: exact to the 1e-6


@pytest.mark.parametrize("alive", [True, False])
async def test_status_tells_a_running_run_from_a_dead_one(
    workspace: Workspace, alive: bool
) -> None:
    manifest = workspace.manifest([{"image": workspace.image("r.png"), "prompt": "r"}])
    await app.jobs(manifest, app.Options())  # makes the database
    other = subprocess.Popen(["sleep", "60"])
    try:
        if not alive:
            other.kill()
            other.wait()
        store = await open_store(f"sqlite+aiosqlite:///{workspace.root / 'jobs.db'}")
        await store.start_run(RunInfo("r1", str(manifest), procs.hostname(), other.pid,
                                      procs.process_tag(other.pid) if alive else "pid:0"))  # fmt: skip
        await store.close()
        shown = await anyio.to_thread.run_sync(lambda: runner("status", manifest))
        as_json = await anyio.to_thread.run_sync(lambda: runner("status", manifest, "--json"))
    finally:
        other.kill()
        other.wait()
    (seen,) = json.loads(as_json.stdout)["fleet"]
    assert (seen["run_id"], seen["pid"]) == ("r1", other.pid)
    assert seen["state"] == ("live" if alive else "dead")
    assert seen["jobs_in_hand"] == 0 and seen["in_flight"] == {}
    if alive:
        assert "running now (since " in shown.stdout and f"pid {other.pid}" in shown.stdout
        assert f"pid {other.pid} (run r1): live, heartbeat" in shown.stdout
    else:
        assert "died without finishing" in shown.stdout
        assert f"pid {other.pid} (run r1): dead (no such process)" in shown.stdout
    assert "still running (or killed)" not in shown.stdout


def test_validate_needs_no_key_and_knows_what_is_done(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"d{i}.png"), "prompt": f"d {i}"} for i in range(3)]
    manifest = workspace.manifest(jobs)
    keyless = runner("validate", manifest, env={KEY_ENV: None})
    assert keyless.returncode == 0, keyless.stderr
    assert "3 left to send" in keyless.stdout
    assert f"{KEY_ENV} is not set; `runner run` will need it" in keyless.stderr

    assert runner("run", manifest).returncode == 0
    done = runner("validate", manifest, env={KEY_ENV: None})
    assert done.returncode == 0
    assert "3 jobs: 3 done already, 0 left to send" in done.stdout
    assert "estimated cost of what is left: $0.00" in done.stdout
    assert fake.requests_total == 3  # validate sent nothing


def test_validate_lists_every_manifest_problem_with_did_you_mean(workspace: Workspace) -> None:
    jobs = [
        {"image": workspace.image("a.png"), "prompt": "a", "maks": "m.png"},
        {"image": workspace.image("b.png"), "promt": "b"},
        {"image": workspace.image("c.png"), "prompt": "c", "output_nmae": "{stem}.png"},
    ]
    manifest = workspace.manifest(jobs)
    checked = runner("validate", manifest)
    assert checked.returncode == 2
    lines = checked.stderr.splitlines()
    assert any("jobs[0].maks: unknown key (did you mean 'mask'?" in line for line in lines)
    assert any("jobs[1].promt: unknown key (did you mean 'prompt'?" in line for line in lines)
    assert any("jobs[2].output_nmae: unknown key (did you mean 'output_name'?" in line
               for line in lines)  # fmt: skip
    assert "3 problems in the manifest" in lines[-1]
    # `run` still stops at the first, in one line
    ran = runner("run", manifest)
    assert ran.returncode == 2 and len(ran.stderr.strip().splitlines()) == 1


def test_models_lists_what_a_run_accepts_and_points_at_nothing_unshipped(
    workspace: Workspace,
) -> None:
    manifest = workspace.manifest([{"image": workspace.image("a.png"), "prompt": "a"}])
    listed = runner("models", manifest)
    assert listed.returncode == 0
    assert "gpt-image-2" in listed.stdout
    assert "gpt-image-1" not in listed.stdout  # retired: a run refuses it
    assert ".md" not in listed.stdout  # PROVIDERS.md is not shipped with the package
    assert "< 25 MB" in listed.stdout and "32,000 chars" in listed.stdout


def test_a_postgresql_url_without_its_driver_is_one_line_naming_the_extra(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = workspace.manifest([{"image": workspace.image("a.png"), "prompt": "a"}])
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # as if it were not installed
    ran = runner("status", manifest, "--db", "postgresql://u:secret@127.0.0.1:1/runs")
    assert ran.returncode == 2
    (line,) = ran.stderr.strip().splitlines()
    assert "pip install -e '.[postgres]'" in line and "asyncpg" in line
    assert "secret" not in line and "Traceback" not in ran.stderr


# --- the job list at scale ---------------------------------------------------------------


def listed_row(n: int, prompt: str = "make it brighter", error: str | None = None) -> ExportRow:
    return ExportRow(
        key=f"{n:064x}",
        image=f"/data/shoot/photo-{n}.png",
        mask=None,
        prompt=prompt,
        provider="fake",
        model="gpt-image-1",
        params={},
        status="failed" if error else "succeeded",
        attempts=1,
        error=error,
        usage=Totals(cost_usd=0.04),
    )


async def test_a_long_job_list_comes_a_page_at_a_time(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = [{"image": workspace.image(f"p{i}.png"), "prompt": f"p {i}"} for i in range(10)]
    manifest = workspace.manifest(jobs)
    await app.cancel(manifest, app.Options(), None, [JobState.PENDING])  # in the database
    monkeypatch.setattr(reading, "_LIST_PAGE", 4)
    read = []
    real_page = SqlStore.export_page

    async def counted(self: SqlStore, *args: Any) -> Any:
        read.append(args)
        return await real_page(self, *args)

    monkeypatch.setattr(SqlStore, "export_page", counted)
    pages: list[list[str]] = []

    def show(rows: Sequence[ExportRow]) -> None:
        pages.append([Path(row.image).name for row in rows])

    total = await app.list_jobs(manifest, app.Options(), app.JobFilter(), show)
    assert total == 10
    assert pages == [[f"p{i}.png" for i in range(j, min(j + 4, 10))] for j in (0, 4, 8)]

    pages.clear()
    read.clear()
    total = await app.list_jobs(manifest, app.Options(), app.JobFilter(), show, limit=5)
    assert (total, pages) == (10, [[f"p{i}.png" for i in range(4)], ["p4.png"]])
    assert len(read) == 2  # the rest is counted, not read

    pages.clear()
    chosen = app.JobFilter(state="succeeded")
    assert await app.list_jobs(manifest, app.Options(), chosen, show) == 0
    assert pages == []


def test_the_job_list_fits_a_terminal_and_keeps_whole_cells_in_a_pipe() -> None:
    long_prompt = "a very long instruction " * 10
    rows = [listed_row(1), listed_row(2, long_prompt, error="bad_request: nope " * 5)]

    cut = present.JobLines(Path("/data"), width=100)
    lines = cut.lines(rows)
    assert lines[0].split() == list(present.JobLines.HEADER)
    assert len(lines) == 3 and all(cell_len(line) <= 100 for line in lines)
    assert "…" in lines[2] and long_prompt.strip() not in lines[2]
    assert "shoot/photo-2.png" in lines[2]  # relative to the manifest's folder
    # One column grid: each cell starts where its header does.
    assert lines[2].index("shoot/photo-2.png") == lines[0].index("image")
    assert lines[1].index("$0.0400") == lines[0].index("cost")

    whole = present.JobLines(Path("/data"), width=None).lines(rows)
    assert long_prompt.strip() in whole[2] and "…" not in whole[2]
    assert whole[2].index("shoot/photo-2.png") == whole[0].index("image")
    # Later pages keep the first page's grid.
    more = present.JobLines(Path("/data"), width=None)
    first, second = more.lines(rows[:1]), more.lines([listed_row(3)])
    assert second[0].index("photo-3") == first[1].index("photo-1")


@pytest.mark.slow
def test_a_listing_cut_short_by_its_reader_ends_quietly(workspace: Workspace) -> None:
    # `runner jobs | head -1`: the reader leaves while pages are still being written.
    image = workspace.image("one.png")
    manifest = workspace.manifest([{"image": image, "prompt": f"p {i}"} for i in range(3000)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")} | {KEY_ENV: API_KEY}
    assert subprocess.run(
        [sys.executable, "-m", "runner", "cancel", str(manifest)], env=env, capture_output=True
    ).returncode == 0  # fmt: skip
    listing = subprocess.Popen(
        [sys.executable, "-m", "runner", "jobs", str(manifest)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert listing.stdout is not None and listing.stderr is not None
    assert listing.stdout.readline().split()[:2] == [b"key", b"state"]
    listing.stdout.close()
    assert listing.wait(timeout=60) == 0
    with listing.stderr:
        assert listing.stderr.read() == b""  # no traceback for the closed pipe


def test_errors_are_grouped_a_page_at_a_time_with_a_few_keys_each() -> None:
    grouping = present.ErrorGroups()
    grouping.add([listed_row(n, error="429 rate limit") for n in range(5)])
    grouping.add([listed_row(5, error="400 bad request"), listed_row(6)])
    grouping.add([listed_row(n, error="429 rate limit") for n in range(7, 9)])
    groups = grouping.ordered()
    assert [(g["count"], g["error"]) for g in groups] == [
        (7, "429 rate limit"),
        (1, "400 bad request"),
    ]
    assert groups[0]["keys"] == [f"{n:064x}"[:10] for n in range(3)]  # the first three, no more
