"""`runner run` end to end: real SQLite file, the fake provider over real HTTP."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import COUNTED_ATTEMPTS, Workspace, options, sha256
from helpers import FakeClock, files_hashed
from PIL import Image

from runner import app
from runner.errors import ExitCode
from runner.testing import FakeProvider, edited_image


async def test_happy_path_with_masks_and_two_variants(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [
        {
            "image": workspace.image("photos/boat.png"),
            "mask": workspace.mask("masks/boat.png"),
            "prompt": "Add a ribbon",
            "params": {"n": 2, "quality": "low"},
        },
        {
            "image": workspace.image("photos/house.png"),
            "mask": workspace.mask("masks/house.png", hole=(0, 0, 20, 47)),
            "prompt": "Paint the door red",
        },
        {"image": workspace.image("photos/tree.png"), "prompt": "Add snow"},
    ]
    manifest = workspace.manifest(jobs)

    outcome = await app.run(manifest, options())

    assert outcome.exit_code == ExitCode.OK
    assert dict(outcome.summary.counts) == {
        "pending": 0, "running": 0, "submitted": 0, "succeeded": 3, "failed": 0, "cancelled": 0,
    }  # fmt: skip
    assert fake.requests_total == 3
    sent = {r.fields["prompt"]: r for r in fake.requests}
    assert sent["Add a ribbon"].fields["n"] == "2"
    assert sent["Add a ribbon"].fields["model"] == "gpt-image-2"
    assert "mask" in sent["Add a ribbon"].files and "mask" not in sent["Add snow"].files

    rows = (
        workspace.db()
        .execute(
            "SELECT j.image_path, o.image_index, o.path, o.sha256, o.width, o.height, o.format "
            "FROM outputs o JOIN jobs j ON j.key = o.job_key ORDER BY o.path"
        )
        .fetchall()
    )
    assert len(rows) == 4  # n=2 gives two outputs
    for row in rows:
        path = Path(row["path"])
        assert path.parent == workspace.root / "out"
        assert sha256(path) == row["sha256"]
        assert (row["width"], row["height"], row["format"]) == (64, 48, "PNG")
        image = Path(row["image_path"])
        mask_name = {"boat.png": "masks/boat.png", "house.png": "masks/house.png"}.get(image.name)
        mask = (workspace.root / mask_name).read_bytes() if mask_name else None
        # The file is exactly the provider's edit of that input (index 0-based at the fake).
        expected = edited_image(image.read_bytes(), mask, row["image_index"] - 1)
        assert path.read_bytes() == expected
    names = sorted(Path(r["path"]).name for r in rows)
    assert [n.split("-")[0] for n in names] == ["boat", "boat", "house", "tree"]
    assert sum(n.endswith(("-1.png", "-2.png")) for n in names) == 2

    usage = (
        workspace.db()
        .execute(
            "SELECT SUM(input_tokens), SUM(output_tokens), SUM(total_tokens), COUNT(usage_json) "
            "FROM attempts WHERE outcome = 'succeeded'"
        )
        .fetchone()
    )
    assert usage[1] == 1056 * 4  # the fake bills 1056 output tokens per image
    assert usage[2] == usage[0] + usage[1] and usage[3] == 3
    assert outcome.summary.totals.total_tokens == usage[2]
    assert outcome.summary.totals.cost_usd > 0


async def test_edit_changes_only_the_masked_area(workspace: Workspace, fake: FakeProvider) -> None:
    manifest = workspace.manifest(
        [
            {
                "image": workspace.image("a.png"),
                "mask": workspace.mask("m.png", hole=(10, 10, 30, 30)),
                "prompt": "x",
            }
        ]
    )
    await app.run(manifest, options())
    (output,) = (workspace.root / "out").glob("*.png")
    with Image.open(workspace.root / "a.png") as before, Image.open(output) as after:
        before_rgb, after_rgb = before.convert("RGB"), after.convert("RGB")
        assert before_rgb.getpixel((50, 40)) == after_rgb.getpixel((50, 40))
        assert before_rgb.getpixel((20, 20)) != after_rgb.getpixel((20, 20))


async def test_rerun_sends_zero_requests(workspace: Workspace, fake: FakeProvider) -> None:
    manifest = workspace.manifest(
        [{"image": workspace.image(f"p{i}.png"), "prompt": "edit"} for i in range(4)]
    )
    first = await app.run(manifest, options())
    assert first.exit_code == ExitCode.OK and fake.requests_total == 4
    mtimes = {p: p.stat().st_mtime_ns for p in (workspace.root / "out").iterdir()}

    second = await app.run(manifest, options())

    assert second.exit_code == ExitCode.OK
    assert fake.requests_total == 4
    assert second.new_jobs == 0 and second.report.succeeded == 0
    assert {p: p.stat().st_mtime_ns for p in (workspace.root / "out").iterdir()} == mtimes


async def test_payment_required_stops_then_resumes_without_paying_twice(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"p{i}.png"), "prompt": f"edit {i}"} for i in range(7)]
    manifest = workspace.manifest(jobs)
    fake.payment_after = 3

    stopped = await app.run(manifest, options())

    assert stopped.exit_code == ExitCode.PAYMENT
    counts = stopped.summary.counts
    assert (counts["succeeded"], counts["failed"], counts["pending"]) == (3, 0, 4)
    (notice,) = stopped.stops
    assert notice.kind == "payment" and "quota is not enough" in notice.message
    assert "top up" in notice.message
    # Spending stopped at once: only requests already in flight (concurrency 2) saw a 402.
    assert 1 <= fake.status_counts[402] <= 2
    db = workspace.db()
    assert (
        db.execute("SELECT COUNT(*) FROM attempts WHERE outcome='payment' AND counted").fetchone()[
            0
        ]
        == 0
    )
    pending = f"SELECT {COUNTED_ATTEMPTS} FROM jobs WHERE status='pending'"
    assert {r[0] for r in db.execute(pending)} == {0}
    assert db.execute("SELECT stop_reason FROM runs").fetchone()[0].startswith("fake:")

    fake.top_up()
    resumed = await app.run(manifest, options())

    assert resumed.exit_code == ExitCode.OK
    assert resumed.summary.counts["succeeded"] == 7
    assert set(fake.paid.values()) == {1}
    assert set(fake.paid) == {workspace.fingerprint(job) for job in jobs}


async def test_transient_faults_all_end_in_success(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"p{i}.png"), "prompt": f"edit {i}"} for i in range(12)]
    manifest = workspace.manifest(jobs)
    # Every kind of fault at least twice, then a random mix of them.
    fake.script = ["rate_limit", "server_error", "reset", "truncate", None] * 2
    fake.fault_mix = {"rate_limit": 0.15, "server_error": 0.15, "reset": 0.1, "truncate": 0.1}
    fake.retry_after = 2
    clock = FakeClock()

    outcome = await app.run(manifest, options(clock, max_attempts=12))

    assert outcome.exit_code == ExitCode.OK
    assert outcome.summary.counts["succeeded"] == 12
    assert fake.status_counts[429] >= 2 and fake.status_counts[500] >= 2
    assert fake.status_counts[0] >= 2  # connection resets
    assert fake.status_counts[200] >= 12 + 2  # two or more were truncated 200s
    # Every HTTP attempt is recorded, one row per request the provider received.
    db = workspace.db()
    recorded = Counter(
        dict(db.execute("SELECT j.prompt, COUNT(*) FROM attempts a JOIN jobs j "
                        "ON j.key = a.job_key GROUP BY j.prompt").fetchall())
    )  # fmt: skip
    received = Counter({job["prompt"]: fake.received[workspace.fingerprint(job)] for job in jobs})
    assert recorded == received
    # A 429's Retry-After: 2 is honoured (the wait is at least the hint).
    assert any(wait >= 2 for wait in clock.sleeps), (fake.status_counts, clock.sleeps)


async def test_bad_inputs_fail_alone_and_are_never_sent(
    workspace: Workspace, fake: FakeProvider
) -> None:
    (workspace.root / "notes.png").write_text("not an image at all")
    good = [workspace.image("good1.png"), workspace.image("good2.png")]
    jobs = [
        {"image": good[0], "prompt": "ok"},
        {"image": "missing.png", "prompt": "a"},
        {"image": "notes.png", "prompt": "b"},
        {
            "image": workspace.image("c.png"),
            "mask": workspace.mask("small.png", size=(32, 24)),
            "prompt": "c",
        },
        {
            "image": workspace.image("d.png"),
            "mask": workspace.mask("rgb.png", mode="RGB"),
            "prompt": "d",
        },
        {"image": good[1], "prompt": "ok too"},
    ]
    manifest = workspace.manifest(jobs)

    outcome = await app.run(manifest, options())

    assert outcome.exit_code == ExitCode.FAILED
    assert (outcome.summary.counts["succeeded"], outcome.summary.counts["failed"]) == (2, 4)
    assert fake.requests_total == 2
    assert {r.fields["prompt"] for r in fake.requests} == {"ok", "ok too"}
    errors = dict(
        workspace.db().execute("SELECT prompt, error FROM jobs WHERE status='failed'").fetchall()
    )
    assert errors["a"].startswith("image: file not found") and "missing.png" in errors["a"]
    assert errors["b"].startswith("image: ") and "not an image" in errors["b"]
    assert errors["c"].startswith("mask: ") and "32x24" in errors["c"] and "64x48" in errors["c"]
    assert errors["d"].startswith("mask: ") and "alpha" in errors["d"]
    assert all("nothing was sent" in e for e in errors.values())
    attempts = workspace.db().execute("SELECT COUNT(*) FROM attempts").fetchone()[0]
    assert attempts == 2


async def test_rejected_credentials_stop_with_exit_4(
    workspace: Workspace, fake: FakeProvider
) -> None:
    manifest = workspace.manifest(
        [{"image": workspace.image(f"p{i}.png"), "prompt": f"e{i}"} for i in range(5)]
    )
    fake.script = ["auth"]

    outcome = await app.run(manifest, options())

    assert outcome.exit_code == ExitCode.AUTH
    assert outcome.summary.counts["failed"] == 0
    assert fake.status_counts[401] == 1
    assert fake.requests_total <= 2  # the other worker's request was already in flight
    pending_attempts = (
        workspace.db()
        .execute(f"SELECT SUM({COUNTED_ATTEMPTS}) FROM jobs WHERE status='pending'")
        .fetchone()[0]
    )
    assert pending_attempts == 0


async def test_permanent_error_fails_the_job_without_retrying(
    workspace: Workspace, fake: FakeProvider
) -> None:
    manifest = workspace.manifest([{"image": workspace.image("p.png"), "prompt": "x"}])
    fake.script = ["moderation"]

    outcome = await app.run(manifest, options())

    assert outcome.exit_code == ExitCode.FAILED
    assert fake.requests_total == 1
    (error,) = workspace.db().execute("SELECT error FROM jobs").fetchone()
    assert "moderation_blocked" in error and "HTTP 400" in error


async def test_retries_exhausted_marks_failed_and_retry_requeues(
    workspace: Workspace, fake: FakeProvider
) -> None:
    manifest = workspace.manifest([{"image": workspace.image("p.png"), "prompt": "x"}])
    fake.script = ["server_error"] * 3

    outcome = await app.run(manifest, options(max_attempts=3))

    assert outcome.exit_code == ExitCode.FAILED
    assert fake.requests_total == 3
    (error, attempts) = (
        workspace.db().execute(f"SELECT error, {COUNTED_ATTEMPTS} FROM jobs").fetchone()
    )
    assert error.startswith("gave up after retries: HTTP 500") and attempts == 3

    assert await app.retry(manifest, options()) == 1
    again = await app.run(manifest, options(max_attempts=3))
    assert again.exit_code == ExitCode.OK
    (attempts,) = workspace.db().execute(f"SELECT {COUNTED_ATTEMPTS} FROM jobs").fetchone()
    assert attempts == 4  # history kept: 3 failed + 1 successful


async def test_a_timed_out_request_is_resent_only_once(
    workspace: Workspace, fake: FakeProvider
) -> None:
    manifest = workspace.manifest(
        [{"image": workspace.image("p.png"), "prompt": "x"}], profile={"timeout_s": 0.3}
    )
    fake.script = ["slow", "slow", "slow"]

    outcome = await app.run(manifest, options(max_attempts=5))

    assert outcome.exit_code == ExitCode.FAILED
    assert fake.requests_total == 2  # the first send and one re-send, not five
    outcomes = [r[0] for r in workspace.db().execute("SELECT outcome FROM attempts ORDER BY id")]
    assert outcomes == ["timeout", "timeout"]


async def test_unwritable_output_keeps_the_paid_usage_and_stops_spending(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runner.files.outputs

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner.files.outputs.os, "fsync", disk_full)
    manifest = workspace.manifest(
        [{"image": workspace.image(f"p{i}.png"), "prompt": f"e{i}"} for i in range(6)],
        profile={"concurrency": 1},
    )

    outcome = await app.run(manifest, options())

    assert outcome.exit_code == ExitCode.FAILED
    # Files are written while the next request goes out: at most that one more paid reply
    # meets the broken disk, then nothing is sent.
    assert fake.requests_total <= 2
    counts = outcome.summary.counts
    assert counts["failed"] == fake.requests_total and counts["pending"] == 6 - counts["failed"]
    row = (
        workspace.db()
        .execute("SELECT outcome, output_tokens, error_message FROM attempts ORDER BY id")
        .fetchone()
    )
    assert row["outcome"] == "output_error" and row["output_tokens"] == 1056
    assert "No space left on device" in row["error_message"]
    assert "No space left on device" in outcome.stops[0].message


async def test_a_provider_failing_for_every_job_is_an_outage_not_failed_jobs(
    workspace: Workspace, fake: FakeProvider
) -> None:
    jobs = [{"image": workspace.image(f"p{i}.png"), "prompt": f"e{i}"} for i in range(6)]
    manifest = workspace.manifest(jobs)
    fake.script = ["server_error"] * 40

    outcome = await app.run(manifest, options(max_attempts=3))

    assert outcome.exit_code == ExitCode.EARLY
    assert outcome.summary.counts["failed"] == 0
    assert outcome.summary.counts["pending"] == 6
    (notice,) = outcome.stops
    assert notice.kind == "outage" and "looks down" in notice.message
    assert "upstream error" in notice.message
    assert fake.requests_total <= 2 * 3  # each in-flight job's attempts, then stop

    fake.script = []
    resumed = await app.run(manifest, options(max_attempts=3))
    assert resumed.exit_code == ExitCode.OK


async def test_nobody_listening_is_an_outage(workspace: Workspace) -> None:
    import socket

    with socket.socket() as probe:  # a port that is certainly closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    manifest = workspace.manifest(
        [{"image": workspace.image(f"p{i}.png"), "prompt": f"e{i}"} for i in range(3)],
        profile={"base_url": f"http://127.0.0.1:{port}/v1"},
    )

    outcome = await app.run(manifest, options(max_attempts=2))

    assert outcome.exit_code == ExitCode.EARLY
    assert outcome.summary.counts["pending"] == 3
    assert "ConnectError" in outcome.stops[0].message


async def test_too_little_free_space_stops_before_paying(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    almost_full = shutil._ntuple_diskusage(total=2**40, used=2**40 - 10 * 2**20, free=10 * 2**20)  # type: ignore[attr-defined]
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: almost_full)
    manifest = workspace.manifest(
        [{"image": workspace.image(f"p{i}.png"), "prompt": f"e{i}"} for i in range(3)]
    )

    outcome = await app.run(manifest, options())

    assert outcome.exit_code == ExitCode.EARLY
    assert fake.requests_total == 0
    assert outcome.summary.counts["pending"] == 3
    (notice,) = outcome.stops
    assert notice.kind == "disk" and "MB free" in notice.message


async def test_a_rerun_hashes_no_unchanged_file(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = workspace.manifest(
        [{"image": workspace.image(f"p{i}.png"), "prompt": "e"} for i in range(5)]
    )
    assert (await app.run(manifest, options())).exit_code == ExitCode.OK
    hashed = files_hashed(monkeypatch)
    (workspace.root / "p2.png").write_bytes((workspace.root / "p0.png").read_bytes() + b"\0")

    again = await app.run(manifest, options())

    assert hashed == [workspace.root / "p2.png"]  # only the file that changed
    assert again.new_jobs == 1


async def test_a_folder_tree_with_optional_masks_runs_whole_and_outputs_mirror_it(
    workspace: Workspace, fake: FakeProvider
) -> None:
    folders = ["shoots/2026-11/beach", "shoots/2026-11/city", "shoots/2026-12"]
    images = [workspace.image(f"{folder}/p{i}.png") for folder in folders for i in range(3)]
    masked = images[::3]  # a third of them have a mask, under the same tree
    for image in masked:
        workspace.mask(image.replace("shoots/", "masks/", 1))
    manifest = workspace.manifest(
        [{"image": "shoots/**/*.{png,jpg}", "prompt": "warmer light",
          "mask": {"path": "masks/{relpath}.png", "optional": True},
          "output_name": "{dir}/{stem}-{key8}.{ext}"}],
    )  # fmt: skip

    outcome = await app.run(manifest, options())

    assert outcome.exit_code == ExitCode.OK
    assert outcome.summary.counts["succeeded"] == 9  # no job failed for a missing mask
    sent = {
        image: workspace.fingerprint(
            {"image": image, "prompt": "warmer light",
             "mask": image.replace("shoots/", "masks/", 1) if image in masked else None}
        )
        for image in images
    }  # fmt: skip
    assert all(fake.paid[fingerprint] == 1 for fingerprint in sent.values())  # masks as found
    written = sorted(p.relative_to(workspace.root / "out").parent.as_posix()
                     for p in (workspace.root / "out").rglob("*.png"))  # fmt: skip
    assert written == sorted(["2026-11/beach"] * 3 + ["2026-11/city"] * 3 + ["2026-12"] * 3)
