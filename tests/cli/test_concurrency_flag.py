"""`--concurrency` / RUNNER_CONCURRENCY: flag > environment > manifest > default."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import Workspace, options
from helpers import invoke

from runner import app
from runner.app import sending
from runner.engine.pool import Pool
from runner.engine.report import PoolReport
from runner.errors import ExitCode
from runner.records import Summary, Totals
from runner.testing import FakeProvider


def options_seen(
    monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str | None]
) -> Any:
    seen: list[app.Options] = []

    async def fake_run(manifest: Path, opts: app.Options) -> app.RunOutcome:
        seen.append(opts)
        return app.RunOutcome(ExitCode.OK, Summary({}, Totals()), PoolReport(), 0)

    monkeypatch.setattr(app, "run", fake_run)
    monkeypatch.delenv("RUNNER_CONCURRENCY", raising=False)
    ran = invoke("run", "m.yaml", "--log-format", "plain", *args, env=env)
    assert seen, ran.stderr
    return seen[0].concurrency


def test_the_flag_beats_the_environment_which_beats_the_manifest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert options_seen(monkeypatch, [], {}) is None  # the manifest's, or the default
    assert options_seen(monkeypatch, [], {"RUNNER_CONCURRENCY": "5"}) == 5
    assert options_seen(monkeypatch, ["--concurrency", "3"], {"RUNNER_CONCURRENCY": "5"}) == 3


def test_help_names_the_flag_and_its_variable() -> None:
    text = invoke("run", "--help", env={}).stdout
    assert "--concurrency" in text and "RUNNER_CONCURRENCY" in text


@pytest.mark.parametrize(("flag", "expected"), [(None, 4), (1, 1), (7, 7)])
def test_the_setting_overrides_every_profile_of_the_manifest(
    workspace: Workspace,
    fake: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
    flag: int | None,
    expected: int,
) -> None:
    lanes_seen: list[int] = []

    class Watched(Pool):
        def __init__(self, store: Any, lanes: Any, **kwargs: Any) -> None:
            lanes_seen.extend(lane.concurrency for lane in lanes.values())
            super().__init__(store, lanes, **kwargs)

    monkeypatch.setattr(sending, "Pool", Watched)
    jobs = [{"image": workspace.image("c.png"), "prompt": "edit"}]
    manifest = workspace.manifest(jobs, profile={"concurrency": 4})
    outcome = anyio.run(app.run, manifest, replace(options(), concurrency=flag))

    assert outcome.exit_code == ExitCode.OK
    assert lanes_seen == [expected]
