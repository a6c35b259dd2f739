"""Venice end to end: real HTTP to the fake Venice, a real SQLite file, the real pool.

The fake's clock follows the runner's FakeClock, so Venice's rate window, lock-out window
and reset timestamps move exactly as fast as the runner's (recorded, not waited) sleeps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from conftest import KEY_ENV, Workspace, options
from eth_account import Account
from helpers import FakeClock

from runner import app
from runner.cli import present as render
from runner.errors import ExitCode
from runner.settings import RetrySettings, RunSettings
from runner.testing import FakeProvider, FakeVenice

VENICE_KEY = "venice-test-SECRET-91b2"
VENICE_ENV = "RUNNER_TEST_VENICE_KEY"
WALLET_ENV = "RUNNER_TEST_WALLET_KEY"
BIG = (320, 240)  # Venice refuses images under 65,536 pixels


class Timeline:
    """One clock for both sides: the runner's FakeClock, seen by Venice as epoch seconds."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.epoch = time.time()

    def venice(self) -> float:
        return self.epoch + self.clock.now

    def wall(self) -> datetime:
        return datetime.fromtimestamp(self.venice(), UTC)

    def options(self, max_attempts: int = 5) -> app.Options:
        return app.Options(
            settings=RunSettings(retry=RetrySettings(max_attempts=max_attempts)),
            clock=self.clock,
            wall_clock=self.wall,
        )


@pytest.fixture
def timeline() -> Timeline:
    return Timeline()


@pytest.fixture
def venice(timeline: Timeline, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVenice]:
    monkeypatch.setenv(VENICE_ENV, VENICE_KEY)
    with FakeVenice(api_key=VENICE_KEY, clock=timeline.venice, balance_usd=25.0) as server:
        yield server


def write_manifest(ws: Workspace, providers: dict[str, Any], jobs: list[dict[str, Any]]) -> Path:
    path = ws.root / "jobs.yaml"
    document = {"providers": providers, "output_dir": "out", "jobs": jobs}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def venice_profile(server: FakeVenice, **extra: Any) -> dict[str, Any]:
    return {"dialect": "venice", "base_url": server.base_url, "api_key_env": VENICE_ENV,
            "concurrency": 2, **extra}  # fmt: skip


def run(manifest: Path, opts: app.Options) -> app.RunOutcome:
    return anyio.run(app.run, manifest, opts)


def edits(server: FakeVenice) -> list[Any]:
    return [r for r in server.requests if "/image/" in r.path]


def test_mixed_manifest_runs_end_to_end_each_job_costed_in_its_own_terms(
    workspace: Workspace, fake: FakeProvider, venice: FakeVenice, timeline: Timeline
) -> None:
    ws = workspace
    jobs = [
        {"image": ws.image("c1.png"), "prompt": "comet one", "provider": "comet"},
        {"image": ws.image("v1.png", BIG), "prompt": "venice plain", "provider": "venice"},
        {"image": ws.image("v2.png", BIG), "mask": ws.mask("vm.png", BIG), "provider": "venice",
         "prompt": "venice masked", "model": "qwen-image-3-edit"},
    ]  # fmt: skip
    comet = {"dialect": "openai", "base_url": fake.base_url, "api_key_env": KEY_ENV}
    manifest = write_manifest(ws, {"comet": comet, "venice": venice_profile(venice)}, jobs)

    outcome = run(manifest, timeline.options())

    assert outcome.exit_code == ExitCode.OK, outcome.stops
    routes = sorted((r.path.rsplit("/", 1)[-1], r.images) for r in edits(venice))
    assert routes == [("edit", 1), ("multi-edit", 2)]  # the mask goes as a second image
    assert sum(fake.paid.values()) == 1
    rows = {row.prompt: row for row in anyio.run(app.export, manifest, timeline.options())}
    assert rows["venice plain"].usage.cost_usd == pytest.approx(0.04)  # per edit
    assert rows["venice masked"].usage.cost_usd == pytest.approx(0.0435)  # + an extra image
    assert rows["venice masked"].price == {
        "enhance_prompt_usd": 0.04, "per_edit_usd": 0.0435, "source": "catalogue",
    }  # fmt: skip
    comet_row = rows["comet one"]
    assert comet_row.usage.total_tokens > 0 and comet_row.usage.cost_usd > 0  # by tokens
    assert comet_row.price and "per_million_tokens" in comet_row.price
    assert rows["venice plain"].balance_usd is not None
    assert 24.9 <= rows["venice plain"].balance_usd <= 25.0  # balance before that request

    status = render.status_document(anyio.run(app.status, manifest, timeline.options()))
    spend = status["providers"]["venice"]
    assert spend["cost_usd"] == pytest.approx(0.0835)
    assert spend["balance_usd"] == pytest.approx(25.0 - 0.0835, abs=0.045)  # before the last
    assert status["cost_usd"] == round(0.0835 + comet_row.usage.cost_usd, 4)  # to 1/100 cent
    exported = render.export_record(rows["venice plain"])
    assert exported["cost_usd"] == pytest.approx(0.04) and exported["balance_usd"] is not None


def test_catalogue_preflight_refuses_jobs_without_sending_them(
    workspace: Workspace, venice: FakeVenice, timeline: Timeline
) -> None:
    ws = workspace
    jobs = [
        {"image": ws.image("small.png", (200, 200)), "prompt": "too small"},
        {"image": ws.image("long.png", BIG), "prompt": "x" * 1501},  # firered: 1,500 chars
        {"image": ws.image("model.png", BIG), "prompt": "no such model", "model": "nope-edit"},
    ]
    manifest = write_manifest(ws, {"venice": venice_profile(venice)}, jobs)

    outcome = run(manifest, timeline.options())

    assert outcome.exit_code == ExitCode.FAILED
    assert edits(venice) == [] and venice.catalogue_fetches == 1
    rows = {row.image.rsplit("/", 1)[-1]: row for row in anyio.run(app.export, manifest, options())}
    assert all("nothing was sent" in (row.error or "") for row in rows.values())
    assert "pixels" in (rows["small.png"].error or "")
    assert "1500" in (rows["long.png"].error or "").replace(",", "")
    assert "nope-edit" in (rows["model.png"].error or "")


def test_without_the_catalogue_the_run_goes_on_and_says_so_once(
    workspace: Workspace, venice: FakeVenice, timeline: Timeline, caplog: pytest.LogCaptureFixture
) -> None:
    venice.catalogue_down = True
    jobs = [{"image": workspace.image(f"p{i}.png", BIG), "prompt": f"edit {i}"} for i in range(3)]
    manifest = write_manifest(workspace, {"venice": venice_profile(venice)}, jobs)

    outcome = run(manifest, timeline.options())

    assert outcome.exit_code == ExitCode.OK
    notes = [r for r in caplog.records if "model list unavailable" in r.getMessage()]
    assert len(notes) == 1
    rows = anyio.run(app.export, manifest, options())
    assert {row.price["source"] for row in rows if row.price} == {"built-in"}


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("payment_key", ["Insufficient USD or Diem balance", "venice.ai/settings/api"]),
        ("payment_x402_discovery", ["x402", "top-up"]),
    ],
)
def test_each_api_key_402_shape_stops_with_exit_3_and_keeps_the_job(
    workspace: Workspace, venice: FakeVenice, timeline: Timeline, fault: str, expected: list[str]
) -> None:
    venice.script = [fault]
    jobs = [{"image": workspace.image("a.png", BIG), "prompt": "pay me"}]
    manifest = write_manifest(workspace, {"venice": venice_profile(venice)}, jobs)

    outcome = run(manifest, timeline.options())

    assert outcome.exit_code == ExitCode.PAYMENT
    message = outcome.stops[0].message
    for words in expected:
        assert words.lower() in message.lower(), message
    assert outcome.summary.counts["pending"] == 1
    with workspace.db() as db:
        counted = db.execute("SELECT COUNT(*) FROM attempts WHERE counted").fetchone()[0]
    assert counted == 0  # a 402 is the account's problem, not the job's


def test_x402_wallet_signs_every_request_and_a_wallet_402_shows_the_top_up(
    workspace: Workspace, timeline: Timeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    wallet = Account.create()
    monkeypatch.setenv(WALLET_ENV, "0x" + bytes(wallet.key).hex())
    jobs = [{"image": workspace.image(f"w{i}.png", BIG), "prompt": f"wallet {i}"} for i in range(3)]
    with FakeVenice(api_key=None, wallet=wallet.address, clock=timeline.venice,
                    balance_usd=0.09) as server:  # fmt: skip
        profile = {"dialect": "venice", "base_url": server.base_url, "auth": "x402",
                   "wallet_key_env": WALLET_ENV, "concurrency": 1}  # fmt: skip
        manifest = write_manifest(workspace, {"venice": profile}, jobs)

        outcome = run(manifest, timeline.options())

        sent = edits(server)
    assert outcome.exit_code == ExitCode.PAYMENT
    # Two edits fit in $0.09; the third gets the wallet-shaped 402.
    assert [r.status for r in sent] == [200, 200, 402]
    assert all(r.wallet == wallet.address for r in sent)  # the signature verified to it
    assert len({r.nonce for r in sent}) == 3  # a fresh sign-in for every request
    assert all("authorization" not in r.headers for r in sent)
    message = outcome.stops[0].message
    assert "$0.01" in message and "top" in message.lower()  # balance and the top-up steps
    assert outcome.summary.counts == {**outcome.summary.counts, "succeeded": 2, "pending": 1}
    assert WALLET_ENV not in message and bytes(wallet.key).hex() not in message


def test_rate_limit_answers_are_paced_by_venice_headers_not_hammered(
    workspace: Workspace, venice: FakeVenice, timeline: Timeline
) -> None:
    venice.rate_limit_per_minute = 4
    jobs = [{"image": workspace.image(f"r{i}.png", BIG), "prompt": f"rate {i}"} for i in range(10)]
    # The runner's own pacing is set far above Venice's, so only Venice's headers can slow it.
    profile = venice_profile(venice, requests_per_minute=6000, concurrency=3)
    manifest = write_manifest(workspace, {"venice": profile}, jobs)

    outcome = run(manifest, timeline.options(max_attempts=10))

    assert outcome.exit_code == ExitCode.OK
    # Paced from x-ratelimit-remaining-requests before Venice has to refuse: at most one
    # 429 (a request already on its way when the count came back), not one per window.
    refused = venice.status_counts[429]
    assert refused <= 1, refused
    assert timeline.clock.now >= 60.0  # ten edits at four a minute take two windows
    assert venice.lockouts == 0


@pytest.mark.slow  # real-time windows
def test_breaker_keeps_failures_under_venice_lockout(
    workspace: Workspace, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real time, with Venice's 30 s windows shrunk to 1 s on both sides: eight workers that
    # retry every few milliseconds would pass "20 failures within the window" many times
    # over without the breaker.
    monkeypatch.setenv(VENICE_ENV, VENICE_KEY)
    jobs = [{"image": workspace.image(f"b{i}.png", BIG), "prompt": f"fail {i}"} for i in range(8)]
    fast = RetrySettings(max_attempts=40, backoff_base_s=0.005, backoff_cap_s=0.02)
    opts = app.Options(settings=RunSettings(retry=fast, breaker_window_s=1.0))
    with FakeVenice(api_key=VENICE_KEY, rate_limit_per_minute=None, lockout_window=1.0,
                    lockout_duration=1.0, script=["server_error"] * 36) as server:  # fmt: skip
        profile = venice_profile(server, concurrency=8, requests_per_minute=100_000)
        manifest = write_manifest(workspace, {"venice": profile}, jobs)

        outcome = run(manifest, opts)

        assert server.lockouts == 0  # never more than 20 failures within the window
        assert server.status_counts[500] == 36
    assert outcome.exit_code == ExitCode.OK
    assert any("pausing it for as long" in r.getMessage() for r in caplog.records)


def test_deprecation_header_is_warned_about_once(
    workspace: Workspace, venice: FakeVenice, timeline: Timeline, caplog: pytest.LogCaptureFixture
) -> None:
    venice.deprecated_models = {"firered-image-edit": "qwen-image-3-edit"}
    jobs = [{"image": workspace.image(f"d{i}.png", BIG), "prompt": f"old {i}"} for i in range(3)]
    manifest = write_manifest(workspace, {"venice": venice_profile(venice)}, jobs)

    assert run(manifest, timeline.options()).exit_code == ExitCode.OK
    warnings = [r for r in caplog.records if "deprecat" in r.getMessage().lower()]
    assert len(warnings) == 1
    assert "qwen-image-3-edit" in warnings[0].getMessage()


def test_models_command_lists_limits_and_prices(
    workspace: Workspace, venice: FakeVenice, timeline: Timeline
) -> None:
    manifest = write_manifest(
        workspace, {"venice": venice_profile(venice)}, [{"image": "x.png", "prompt": "p"}]
    )
    rows, notes = anyio.run(app.models, manifest, timeline.options())
    by_model = {row.model: row for row in rows}
    assert "gpt-image-2-edit" in by_model and notes == []
    assert "1,500" in by_model["firered-image-edit"].limits
    assert "$0.04" in by_model["firered-image-edit"].price
    anyio.run(app.models, manifest, timeline.options())
    assert venice.catalogue_fetches == 1  # the second time from the database's copy
    assert json.dumps([row.price for row in rows])  # plain text, printable
