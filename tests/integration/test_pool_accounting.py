"""What a paid answer is recorded as, whatever the dialect (issue 8, items 17 and 19): the pool
with a real SQLite store and a stub provider playing scripted answers."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import FakeClock, png_bytes
from PIL import Image

from runner.dialects import dialect_named
from runner.dialects.openai.rules import LIMITS as OPENAI_LIMITS
from runner.engine.budget import LimitGuard, ResolvedLimits
from runner.engine.pacing import ProviderGate
from runner.engine.pool import Pool
from runner.engine.ports import Lane
from runner.errors import RetryableError
from runner.files.local import local_files
from runner.manifest.expand import load_manifest
from runner.records import EditRequest, EditResult, ImageLimits, ReplyFacts, ReplyImage, Usage
from runner.settings import RetrySettings, RunSettings
from runner.store.engine import open_store
from runner.store.protocol import RunInfo


class ScriptedProvider:
    """Plays its answers in order: an exception is raised, a result returned."""

    name = "p"
    limits = OPENAI_LIMITS

    def __init__(self, answers: Sequence[EditResult | Exception]) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def edit(self, request: EditRequest) -> EditResult:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def limits_for(self, model: str) -> ImageLimits:
        return OPENAI_LIMITS

    def check_request(self, request: EditRequest) -> None:
        pass


def png() -> ReplyImage:
    return ReplyImage(png_bytes((16, 16), (9, 9, 9)), "PNG", 16, 16)


async def run_pool(
    tmp_path: Path,
    dialect: str,
    provider: ScriptedProvider,
    params: str = "{}",
    budget: float | None = None,
) -> sqlite3.Connection:
    Image.new("RGB", (300, 300)).save(tmp_path / "a.png")
    model = "firered-image-edit" if dialect == "venice" else "gpt-image-2"
    (tmp_path / "m.yaml").write_text(
        f"providers: {{p: {{dialect: {dialect}, base_url: 'http://127.0.0.1:9/v1'}}}}\n"
        f"jobs: [{{image: a.png, prompt: x, model: {model}, params: {params}}}]\n"
    )
    manifest = load_manifest(tmp_path / "m.yaml")
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    limits = ResolvedLimits(max_cost_usd=budget)
    try:
        await store.sync_manifest("m", manifest.jobs)
        await store.start_run(RunInfo("r", "m", "host", 1, "tag"))
        pool = Pool(
            store,
            {
                "p": Lane(
                    provider,
                    ProviderGate("p", FakeClock()),
                    concurrency=1,
                    prices=dialect_named(dialect).price_book({}, None),
                )
            },
            manifest="m",
            owner="r",
            settings=RunSettings(retry=RetrySettings(max_attempts=3)),
            files=local_files(),
            clock=FakeClock(),
            wall_clock=lambda: datetime.now(UTC),
            limits=LimitGuard(limits, lambda: datetime.now(UTC)) if budget else None,
        )
        await pool.run()
    finally:
        await store.close()
    return sqlite3.connect(tmp_path / "db.sqlite")


async def test_a_venice_200_the_runner_rejects_is_recorded_as_paid(tmp_path: Path) -> None:
    unusable = RetryableError("bad_response: HTTP 200 with content type text/html",
                              status_code=200, facts=ReplyFacts(balance_usd=9.0))  # fmt: skip
    provider = ScriptedProvider([unusable, EditResult((png(),), None, "ray")])

    db = await run_pool(tmp_path, "venice", provider)

    costs = db.execute("SELECT outcome, cost_usd FROM attempts ORDER BY id").fetchall()
    assert costs == [("retryable", 0.04), ("succeeded", 0.04)]  # Venice bills every 200


async def test_an_openai_200_without_usage_is_costed_at_the_estimate(tmp_path: Path) -> None:
    unusable = RetryableError("reply is not JSON (12 bytes)", status_code=200)
    provider = ScriptedProvider([unusable, EditResult((png(),), None, "req")])

    db = await run_pool(tmp_path, "openai", provider)

    ((cost,),) = db.execute("SELECT cost_usd FROM attempts WHERE outcome = 'retryable'")
    assert cost is not None and cost > 0


async def test_paid_200s_count_against_the_budget(tmp_path: Path) -> None:
    unusable = [RetryableError("bad_response", status_code=200) for _ in range(3)]
    provider = ScriptedProvider(unusable)

    db = await run_pool(tmp_path, "venice", provider, budget=0.05)

    # The first paid 200 is counted: a retry ($0.04 more) would cross the $0.05 budget.
    assert provider.calls == 1
    (spent,) = db.execute("SELECT SUM(cost_usd) FROM attempts").fetchone()
    assert spent == pytest.approx(0.04)
    assert db.execute("SELECT status FROM jobs").fetchone() == ("pending",)


async def test_fewer_images_than_asked_for_is_recorded_and_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    usage = Usage(input_tokens=10, output_tokens=1056, total_tokens=1066)
    provider = ScriptedProvider([EditResult((png(),), usage, "req")])

    db = await run_pool(tmp_path, "openai", provider, params="{n: 3}")

    (status, error) = db.execute("SELECT status, error FROM jobs").fetchone()
    assert status == "succeeded"
    assert error == "asked for 3 images (n), the provider returned 1"
    ((note,),) = db.execute("SELECT error_message FROM attempts")
    assert note == error
    assert any("returned 1" in r.getMessage() and "jobs[0]" in r.getMessage()
               for r in caplog.records)  # fmt: skip
