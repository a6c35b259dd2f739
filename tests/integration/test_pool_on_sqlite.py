"""The pool with a real SQLite store and a stub provider: races that HTTP cannot stage."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from helpers import FakeClock
from PIL import Image

from runner.dialects.openai.rules import LIMITS as OPENAI_LIMITS
from runner.engine.pacing import ProviderGate
from runner.engine.pool import Pool
from runner.engine.ports import Lane
from runner.errors import StopNotice
from runner.files.local import local_files
from runner.manifest.expand import load_manifest
from runner.records import EditRequest, EditResult, ImageLimits
from runner.settings import RunSettings
from runner.store.engine import open_store
from runner.store.protocol import AttemptTicket, RunInfo
from runner.store.sql import SqlStore


class StubProvider:
    name = "p"
    limits = OPENAI_LIMITS

    def __init__(self) -> None:
        self.calls = 0

    async def edit(self, request: EditRequest) -> EditResult:
        self.calls += 1
        raise AssertionError("nothing should have been sent")

    def limits_for(self, model: str) -> ImageLimits:
        return OPENAI_LIMITS

    def check_request(self, request: EditRequest) -> None:
        pass


class StoppingStore(SqlStore):
    """Stops the gate while the attempt is being recorded, as a 402 elsewhere would."""

    gate: ProviderGate

    async def begin_attempt(
        self, key: str, owner: str, provider: str, model: str, **fences: Any
    ) -> AttemptTicket:
        ticket = await super().begin_attempt(key, owner, provider, model, **fences)
        self.gate.stop(StopNotice("p", "payment", "HTTP 402: elsewhere", 3))
        return ticket


async def test_a_stop_while_recording_the_attempt_sends_nothing(tmp_path: Path) -> None:
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    (tmp_path / "m.yaml").write_text(
        "providers: {p: {dialect: openai, base_url: 'http://127.0.0.1:9/v1', concurrency: 1}}\n"
        "jobs: [{image: a.png, prompt: x}]\n"
    )
    manifest = load_manifest(tmp_path / "m.yaml")
    opened = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    store = StoppingStore(opened._engine, lambda: datetime.now(UTC))
    clock = FakeClock()
    gate = ProviderGate("p", clock)
    store.gate = gate
    provider = StubProvider()
    try:
        await store.sync_manifest("m", manifest.jobs)
        await store.start_run(RunInfo("r", "m", "host", 1, "tag"))
        pool = Pool(
            store,
            {"p": Lane(provider, gate, concurrency=1)},
            manifest="m",
            owner="r",
            settings=RunSettings(),
            files=local_files(),
            clock=clock,
            wall_clock=lambda: datetime.now(UTC),
        )
        report = await pool.run()
    finally:
        await store.close()

    assert provider.calls == 0
    assert report.released == 1 and report.succeeded == report.failed == 0
    rows = (
        sqlite3.connect(tmp_path / "db.sqlite")
        .execute(
            "SELECT a.outcome, a.counted, j.status FROM attempts a JOIN jobs j ON j.key = a.job_key"
        )
        .fetchall()
    )
    assert rows == [("not_sent", 0, "pending")]


def test_a_signal_after_a_limit_still_stops_every_gate() -> None:
    gate = ProviderGate("p", FakeClock())
    pool = Pool(
        None,  # type: ignore[arg-type]  # neither call below touches the store
        {"p": Lane(StubProvider(), gate, concurrency=1)},
        manifest="m",
        owner="o",
        settings=RunSettings(),
        files=local_files(),
        wall_clock=lambda: datetime.now(UTC),
    )
    pool.close_intake("limit", "--max-jobs 1 reached")
    assert not gate.stopped  # a limit lets admitted jobs go on sending
    pool.halt("signal", "SIGTERM")
    assert gate.stopped
    assert [stop.kind for stop in pool.report.stops] == ["limit", "signal"]
