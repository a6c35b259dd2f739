"""A hostile world end to end: providers that echo the key (the `runner` command as a user
runs it, every output checked byte by byte), odd keys, and a reply that drips."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import API_KEY, KEY_ENV, Workspace, options
from helpers import Ran, invoke

from runner import app
from runner.errors import ExitCode
from runner.redact import REDACTED
from runner.testing import FakeProvider, FakeVenice

VENICE_KEY = "venice-e2e-SECRET-4b7d9a1c"  # no key shape: only the exact match catches it
VENICE_ENV = "RUNNER_TEST_VENICE_KEY"
BIG = (320, 240)  # Venice refuses images under 65,536 pixels


def runner(*args: str | Path, env: dict[str, str]) -> Ran:
    environment: dict[str, str | None] = {"RUNNER_DB": None, KEY_ENV: None}
    environment.update(env)
    return invoke(*args, env=environment)


@pytest.fixture
def venice() -> Iterator[FakeVenice]:
    with FakeVenice(
        api_key=VENICE_KEY,
        echo_key=True,
        rate_limit_per_minute=None,
        deprecated_models={"firered-image-edit": None},
        script=[None, "auth"],
    ) as server:
        yield server


def echo_manifest(ws: Workspace, comet: FakeProvider, venice: FakeVenice) -> Path:
    providers: dict[str, Any] = {
        "comet": {"dialect": "openai", "base_url": comet.base_url, "api_key_env": KEY_ENV,
                  "concurrency": 1},
        "venice": {"dialect": "venice", "base_url": venice.base_url, "api_key_env": VENICE_ENV,
                   "concurrency": 1, "requests_per_minute": 6000},
    }  # fmt: skip
    jobs = [{"image": ws.image(f"c{i}.png"), "prompt": f"c{i}", "provider": "comet"}
            for i in range(4)]  # fmt: skip
    jobs += [{"image": ws.image(f"v{i}.png", BIG), "prompt": f"v{i}", "provider": "venice"}
             for i in range(2)]  # fmt: skip
    path = ws.root / "jobs.yaml"
    path.write_text(yaml.safe_dump({"providers": providers, "output_dir": "out", "jobs": jobs}))
    return path


@pytest.mark.slow
def test_keys_echoed_by_providers_appear_in_no_output_at_all(
    workspace: Workspace, venice: FakeVenice
) -> None:
    with FakeProvider(
        api_key=API_KEY,
        echo_key=True,
        retry_after=0.0,
        script=["bad_request", "html_404", "server_error", None, "payment"],
    ) as comet:
        manifest = echo_manifest(workspace, comet, venice)
        env = {KEY_ENV: API_KEY, VENICE_ENV: VENICE_KEY}
        root = workspace.root
        results = [
            runner("run", manifest, "-v", "--log-format", "plain", env=env),
            runner("status", manifest, "--json", env=env),
            runner("status", manifest, env=env),
            runner("jobs", manifest, env=env),
            runner("jobs", manifest, "--json", env=env),
            runner("export", manifest, "--format", "csv", "-o", root / "x.csv", env=env),
            runner("export", manifest, "--format", "jsonl", "-o", root / "x.jsonl", env=env),
            runner("report", manifest, "-o", root / "report.html", env=env),
            runner("models", manifest, env=env),
        ]
        # The providers did echo the keys, in every way they could.
        assert any(API_KEY in r.request_id for r in comet.requests)
        assert any(VENICE_KEY in r.request_id for r in venice.requests)
    assert results[0].returncode == 4, results[0].stderr  # auth beats payment
    assert all(r.returncode == 0 for r in results[1:]), [r.stderr for r in results[1:]]
    printed = "".join(r.stdout + r.stderr for r in results)
    files = [path for path in root.rglob("*") if path.is_file()]
    assert {"jobs.db", "x.csv", "x.jsonl", "report.html"} <= {path.name for path in files}
    for key in (API_KEY, VENICE_KEY):
        assert key not in printed
        for path in files:  # the database (and any -wal), exports, the report, the outputs
            assert key.encode() not in path.read_bytes(), path
    # ...and what the keys were replaced by was kept, so nothing else was lost with them.
    assert REDACTED in printed
    db = workspace.db()
    texts = " ".join(
        str(value)
        for row in db.execute(
            "SELECT error_message, request_id, served_model, usage_json FROM attempts"
        )
        for value in row
    )
    assert texts.count(REDACTED) >= 8
    (catalogue,) = db.execute("SELECT body FROM model_catalogues").fetchone()
    assert REDACTED in catalogue


# --- odd keys -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize(
    ("value", "problem"),
    [("sk-abc\ndef-123456", "line break"), ("sk-abcdéf-123456", "non-ASCII")],
    ids=["newline", "non-ascii"],
)
def test_an_odd_key_is_refused_up_front_without_showing_it(
    workspace: Workspace, fake: FakeProvider, command: str, value: str, problem: str
) -> None:
    manifest = workspace.manifest([{"image": workspace.image("a.png"), "prompt": "x"}])
    result = runner(command, manifest, env={KEY_ENV: value})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"providers.fake.api_key_env: environment variable {KEY_ENV} contains a" in line
    assert problem in line
    assert "abc" not in line and "def" not in line
    assert fake.requests_total == 0
    if (workspace.root / "jobs.db").exists():  # no phantom attempt
        assert workspace.db().execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == 0


# --- a reply that drips ---------------------------------------------------------------------


@pytest.mark.slow
async def test_a_dripping_reply_ends_at_timeout_s(workspace: Workspace, fake: FakeProvider) -> None:
    manifest = workspace.manifest(
        [{"image": workspace.image("a.png"), "prompt": "x"}], profile={"timeout_s": 1}
    )
    fake.script = ["drip"]  # then a normal reply
    started = time.monotonic()
    outcome = await app.run(manifest, options())
    assert time.monotonic() - started < 5  # the drip alone would take many minutes
    assert outcome.exit_code == ExitCode.OK
    outcomes = [
        row[0] for row in workspace.db().execute("SELECT outcome FROM attempts ORDER BY id")
    ]
    assert outcomes == ["timeout", "succeeded"]
