"""The `runner` command as a user (or cron) runs it, in process through click's CliRunner:
real arguments, environment variables, exit codes, stdout and stderr. What needs a real
process (the console script itself, signals) is in tests/e2e/."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest
from conftest import API_KEY, KEY_ENV, Workspace
from helpers import Ran, invoke

from runner.testing import FakeProvider


def runner(*args: str | Path, env: dict[str, str] | None = None) -> Ran:
    environment: dict[str, str | None] = {"RUNNER_DB": None, KEY_ENV: None}
    environment.update(env if env is not None else {KEY_ENV: API_KEY})
    return invoke(*args, env=environment)


def assert_one_line_error(result: Ran, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_manifest_key_exits_2_naming_file_job_and_field(
    workspace: Workspace, fake: FakeProvider
) -> None:
    manifest = workspace.manifest(
        [{"image": workspace.image("a.png"), "prompt": "x"},
         {"image": workspace.image("b.png"), "prompt": "y", "promt": "typo"}]
    )  # fmt: skip
    result = runner("run", manifest)
    assert_one_line_error(result, str(manifest), "jobs[1]", "promt", "unknown key")
    assert fake.requests_total == 0
    assert not (workspace.root / "jobs.db").exists()


def test_glob_with_no_match_exits_2(workspace: Workspace, fake: FakeProvider) -> None:
    manifest = workspace.manifest(
        [{"image": workspace.image("a.png"), "prompt": "x"},
         {"image": "photos/*.jpg", "prompt": "y"}]
    )  # fmt: skip
    result = runner("run", manifest)
    assert_one_line_error(result, "jobs[1]", "image", "matched no file")
    assert fake.requests_total == 0


def test_missing_api_key_env_var_exits_2_with_the_variable_name(
    workspace: Workspace, fake: FakeProvider
) -> None:
    manifest = workspace.manifest([{"image": workspace.image("a.png"), "prompt": "x"}])
    result = runner("run", manifest, env={})
    assert_one_line_error(result, "providers.fake.api_key_env", KEY_ENV, "not set")
    assert fake.requests_total == 0


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("providers: {fake: {dialect: openai, base_url: http://x\n", ("invalid YAML", "line")),
        ("- just\n- a list\n", ("must be a mapping",)),
        (
            "providers: {p: {dialect: openai, base_url: http://x}}\n"
            "jobs: [{image: a.png, prompt: x, params: {n: 11}}]\n",
            ("jobs[0]", "params.n", "1 to 10"),
        ),
        (
            "providers: {p: {dialect: openai, base_url: http://x}}\n"
            "jobs: [{image: a.png, prompt: x, provider: nope}]\n",
            ("jobs[0]", "provider", "no provider profile named 'nope'"),
        ),
        (
            "providers: {p: {dialect: openai, base_url: http://x}}\nproviders: {}\njobs: []\n",
            ("duplicate key 'providers'",),
        ),
    ],
)
def test_bad_manifests_exit_2_in_one_line(tmp_path: Path, text: str, fragments: tuple[str]) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(text)
    for command in ("run", "validate", "status"):
        assert_one_line_error(runner(command, manifest), "bad.yaml", *fragments)


def test_status_json_export_and_retry(workspace: Workspace, fake: FakeProvider) -> None:
    jobs = [
        {"image": workspace.image("a.png"), "mask": workspace.mask("m.png"), "prompt": "ok"},
        {"image": "gone.png", "prompt": "missing input"},
        {"image": workspace.image("b.png"), "prompt": "refused"},
    ]
    manifest = workspace.manifest(jobs, profile={"concurrency": 1})
    fake.script = [None, "bad_request"]

    run = runner("run", manifest)
    assert run.returncode == 1, run.stderr
    assert "some jobs failed" in run.stderr

    status = json.loads(runner("status", manifest, "--json").stdout)
    assert status["counts"] == {
        "pending": 0, "running": 0, "submitted": 0, "succeeded": 1, "failed": 2, "cancelled": 0,
    }  # fmt: skip
    assert (
        status["usage"]["total_tokens"]
        == (status["usage"]["input_tokens"] + status["usage"]["output_tokens"])
        > 0
    )
    assert status["cost_usd"] > 0

    lines = runner("export", manifest, "--format", "jsonl").stdout.splitlines()
    rows = {row["prompt"]: row for row in map(json.loads, lines)}
    ok, bad = rows["ok"], rows["missing input"]
    assert ok["status"] == "succeeded" and ok["attempts"] == 1 and ok["error"] is None
    assert ok["mask"].endswith("m.png") and len(ok["outputs"]) == 1
    assert Path(ok["outputs"][0]).is_file()
    assert ok["usage"]["output_tokens"] == 1056 and ok["cost_usd"] > 0
    assert bad["status"] == "failed" and "file not found" in bad["error"]
    assert bad["attempts"] == 0 and bad["outputs"] == []

    assert rows["refused"]["error"].startswith("HTTP 400 invalid_request")

    table = list(csv.DictReader(io.StringIO(runner("export", manifest, "--format", "csv").stdout)))
    assert {row["prompt"]: row["status"] for row in table} == {
        "ok": "succeeded", "missing input": "failed", "refused": "failed",
    }  # fmt: skip

    retried = runner("retry", manifest, "--job", rows["refused"]["key"][:8])
    assert "1 job moved back to pending" in retried.stdout
    rerun = runner("run", manifest)
    assert rerun.returncode == 1  # the missing input still fails; the refused one succeeds now
    status = json.loads(runner("status", manifest, "--json").stdout)
    assert (status["counts"]["succeeded"], status["counts"]["failed"]) == (2, 1)


def test_validate_reports_bad_jobs_and_sends_nothing(
    workspace: Workspace, fake: FakeProvider
) -> None:
    manifest = workspace.manifest(
        [{"image": workspace.image("a.png"), "prompt": "x"},
         {"image": workspace.image("b.png"), "mask": workspace.mask("m.png", mode="RGB"),
          "prompt": "y"}]
    )  # fmt: skip
    result = runner("validate", manifest)
    assert result.returncode == 1
    assert "2 jobs: 0 done already, 2 left to send, 1 of them would fail" in result.stdout
    estimate = result.stdout.split("estimated cost of what is left: $")[1]
    assert float(estimate.split()[0]) > 0
    assert "jobs[1]" in result.stderr and "alpha" in result.stderr
    assert fake.requests_total == 0
    assert not (workspace.root / "jobs.db").exists()


def test_db_flag_and_env_var_choose_the_database(workspace: Workspace, fake: FakeProvider) -> None:
    manifest = workspace.manifest([{"image": workspace.image("a.png"), "prompt": "x"}])
    elsewhere = workspace.root / "state" / "custom.db"
    assert runner("run", manifest, "--db", elsewhere).returncode == 0
    assert elsewhere.exists() and not (workspace.root / "jobs.db").exists()
    status = runner("status", manifest, "--json", env={"RUNNER_DB": str(elsewhere)})
    assert json.loads(status.stdout)["counts"]["succeeded"] == 1


def test_api_key_never_reaches_database_logs_or_exports(
    workspace: Workspace, fake: FakeProvider
) -> None:
    manifest = workspace.manifest(
        [{"image": workspace.image(f"p{i}.png"), "prompt": f"e{i}"} for i in range(4)]
        + [{"image": "missing.png", "prompt": "bad"}]
    )
    fake.script = ["rate_limit", "server_error", "bad_request"]
    fake.payment_after = 2
    outputs = [runner("run", manifest, "-v")]
    fake.top_up()
    outputs += [
        runner("run", manifest, "-v"),
        runner("status", manifest, "--json"),
        runner("export", manifest, "--format", "jsonl"),
        runner("export", manifest, "--format", "csv"),
    ]
    assert outputs[0].returncode == 3 and outputs[1].returncode == 1
    for result in outputs:
        assert API_KEY not in result.stdout and API_KEY not in result.stderr
    assert any("Bearer" in r.headers.get("authorization", "") for r in fake.requests)
    for path in workspace.root.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path


def test_jobs_cancel_and_retry_of_a_cancelled_job(workspace: Workspace, fake: FakeProvider) -> None:
    jobs = [{"image": workspace.image(f"c{i}.png"), "prompt": f"edit {i}"} for i in range(3)]
    jobs.append({"image": "gone.png", "prompt": "missing"})
    manifest = workspace.manifest(jobs)
    assert runner("validate", manifest).returncode == 1  # nothing sent, just read
    keys = [
        json.loads(line)["key"] for line in runner("jobs", manifest, "--json").stdout.splitlines()
    ]
    assert len(keys) == 4

    cancelled = runner("cancel", manifest, "--job", keys[0][:10])
    assert "1 job cancelled" in cancelled.stdout
    assert runner("run", manifest).returncode == 1  # the missing file fails; the rest is done
    assert fake.requests_total == 2  # the cancelled job was never sent

    failed = runner("jobs", manifest, "--state", "failed", "--json").stdout.splitlines()
    assert [json.loads(line)["error"].startswith("image: file not found") for line in failed] == [
        True
    ]
    table = runner("jobs", manifest).stdout
    assert "cancelled" in table and "file not" in table
    assert "1 job cancelled" in runner("cancel", manifest, "--state", "failed").stdout
    assert runner("run", manifest).returncode == 0  # succeeded + cancelled: nothing left

    assert "1 job moved back to pending" in runner("retry", manifest, "--job", keys[0][:10]).stdout
    assert runner("run", manifest).returncode == 0
    assert fake.requests_total == 3


def test_job_overview_view_joins_jobs_outputs_and_usage(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image("v.png"), "prompt": "viewed", "params": {"n": 2}}]
    manifest = workspace.manifest(jobs)
    assert runner("run", manifest).returncode == 0
    row = workspace.db().execute("SELECT * FROM job_overview").fetchone()
    assert row["status"] == "succeeded" and row["prompt"] == "viewed"
    assert row["attempts"] == 1 and row["total_tokens"] > 0 and row["cost_usd"] > 0
    assert len(row["output_paths"].splitlines()) == 2  # one row per job, both outputs
    assert json.loads(row["price"])["source"] == "built-in"


def test_a_database_that_cannot_be_written_exits_75_in_one_line(
    workspace: Workspace, fake: FakeProvider
) -> None:
    manifest = workspace.manifest([{"image": workspace.image("a.png"), "prompt": "x"}])
    blocker = workspace.root / "not-a-folder"
    blocker.write_text("a file where the database's folder should be")

    result = runner("run", manifest, "--db", blocker / "jobs.db")

    assert result.returncode == 75, result.stderr  # the work is kept: run again when fixed
    assert "Traceback" not in result.stderr
    assert "cannot open database" in result.stderr and "jobs.db" in result.stderr
    assert fake.requests_total == 0


@pytest.mark.slow  # every example image and the report's thumbnails
def test_the_demo_runs_offline_and_writes_its_report(tmp_path: Path) -> None:
    result = runner("demo", "--dir", tmp_path / "demo")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "demo" / "report.html").exists()
    assert any((tmp_path / "demo").rglob("*.png"))


@pytest.mark.slow  # the example images, twice through the fake, and the report
def test_the_batch_demo_submits_then_collects(tmp_path: Path) -> None:
    result = runner("demo", "--batch", "--dir", tmp_path / "demo")
    assert result.returncode == 0, result.stderr
    assert "exit 75: the jobs went to the fake's Batch API in 1 batch" in result.stdout
    outputs = sorted(p.name for p in (tmp_path / "demo" / "out").glob("*.png"))
    assert len(outputs) == 5  # four jobs, one of them asking for two images
    db = sqlite3.connect(tmp_path / "demo" / "jobs.db")
    assert db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall() == [
        ("succeeded", 4)
    ]
    assert db.execute("SELECT COUNT(*) FROM batches WHERE collected_at IS NOT NULL").fetchone() == (
        1,
    )
