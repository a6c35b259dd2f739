"""Outputs never become inputs, never replace a file, never fail for a reason known before
paying (issue 8, items 1, 2, 3 and 6)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from conftest import Workspace, options, sha256

from runner import app
from runner.errors import ExitCode, ManifestError
from runner.files.outputs import TEMP_SUFFIX, sweep_temp_files, write_new
from runner.testing import FakeProvider


def job_count(workspace: Workspace) -> int:
    return int(workspace.db().execute("SELECT COUNT(*) FROM manifest_jobs").fetchone()[0])


# --- item 1: outputs become inputs ------------------------------------------------------------


async def test_a_broad_glob_never_picks_up_earlier_outputs(
    workspace: Workspace, fake: FakeProvider
) -> None:
    for name in ("a.png", "b.png", "sub/c.png"):
        workspace.image(name)
    manifest = workspace.manifest([{"image": "**/*.png", "prompt": "sunrise"}])

    for _ in range(3):
        outcome = await app.run(manifest, options())
        assert outcome.exit_code == ExitCode.OK
        assert job_count(workspace) == 3  # not 3 -> 6 -> 9

    assert fake.requests_total == 3
    assert len(list((workspace.root / "out").glob("*.png"))) == 3


async def test_a_glob_skips_outputs_the_database_knows_wherever_they_are(
    workspace: Workspace, fake: FakeProvider
) -> None:
    for name in ("a.png", "b.png"):
        workspace.image(f"photos/{name}")
    manifest = workspace.manifest([{"image": "**/*.png", "prompt": "x"}], output_dir="first")
    assert (await app.run(manifest, options())).exit_code == ExitCode.OK

    # The outputs folder moves: the old outputs are now just files the glob can see.
    moved = workspace.manifest([{"image": "**/*.png", "prompt": "x"}], output_dir="second")
    validation = await app.validate(moved)
    outcome = await app.run(moved, options())

    assert validation.jobs == 2
    assert outcome.exit_code == ExitCode.OK and job_count(workspace) == 2
    assert fake.requests_total == 2  # the two photos, once; no edits of edits


async def test_a_glob_that_matches_only_outputs_says_so(
    workspace: Workspace, fake: FakeProvider
) -> None:
    workspace.image("out/old-result.png")
    manifest = workspace.manifest([{"image": "out/*.png", "prompt": "x"}])
    with pytest.raises(ManifestError, match=r"matched no file outside the output folder"):
        await app.run(manifest, options())
    assert fake.requests_total == 0


# --- item 2: an output overwrites its input ---------------------------------------------------


@pytest.mark.parametrize("input_name", ["photos/a.png", "photos/a.jpg"])
async def test_an_output_that_is_or_may_become_an_input_is_refused(
    workspace: Workspace, fake: FakeProvider, input_name: str
) -> None:
    fmt = "JPEG" if input_name.endswith(".jpg") else "PNG"
    workspace.image(input_name, fmt=fmt)
    before = sha256(workspace.root / input_name)
    manifest = workspace.manifest(
        [{"image": input_name, "prompt": "x"}],
        output_dir="photos",
        defaults={"output_name": "{stem}.{ext}"},
    )

    with pytest.raises(ManifestError) as caught:
        await app.run(manifest, options())

    assert "jobs[0].output_name" in str(caught.value)
    assert "which is an input of this manifest" in str(caught.value)
    assert fake.requests_total == 0 and sha256(workspace.root / input_name) == before


@pytest.mark.parametrize("input_first", [True, False])
async def test_an_input_another_job_may_overwrite_is_refused_across_chunks(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch, input_first: bool
) -> None:
    """The manifest is keyed and checked a chunk at a time (here one job per chunk), and a
    long manifest is sent while its later chunks are read: an input in the output folder is
    found whether it comes before or after the job whose output it may be. Found before
    that job, nothing is sent; found after it (sending had begun), the run stops with the
    error, and the input is untouched either way."""
    from runner.manifest import expand

    monkeypatch.setattr(expand, "CHUNK_JOBS", 1)
    workspace.image("a.png")
    target = workspace.root / workspace.image("out/a.jpg", fmt="JPEG")  # a.png's edit may land here
    before = sha256(target)
    jobs = [{"image": "out/a.jpg", "prompt": "x"}, {"image": "a.png", "prompt": "y"}]
    manifest = workspace.manifest(
        jobs if input_first else jobs[::-1], defaults={"output_name": "{stem}.{ext}"}
    )

    with pytest.raises(ManifestError) as caught:
        await app.run(manifest, options())

    assert "which is an input of this manifest" in str(caught.value)
    # Found after a.png's job was written, it may already be out (never more than it).
    assert fake.requests_total <= (0 if input_first else 1)
    assert sha256(target) == before


# --- item 3: two jobs, one file ---------------------------------------------------------------


async def test_two_jobs_writing_one_file_keep_both(
    workspace: Workspace, fake: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    image = workspace.image("a.png")
    manifest = workspace.manifest(
        [
            {"image": image, "prompt": "x", "params": {"output_format": "jpeg"}},
            {"image": image, "prompt": "x", "params": {"output_format": "png"}},
        ],
        defaults={"output_name": "{stem}.{ext}"},  # the fake answers PNG whatever is asked
        profile={"concurrency": 1},
    )

    outcome = await app.run(manifest, options())

    assert outcome.exit_code == ExitCode.OK
    recorded = dict(workspace.db().execute("SELECT path, sha256 FROM outputs").fetchall())
    files = sorted((workspace.root / "out").iterdir())
    assert [f.name for f in files] == ["a.png", "a~2.png"]
    assert sorted(map(Path, recorded)) == files
    assert all(sha256(Path(path)) == digest for path, digest in recorded.items())
    assert any("already exists" in r.getMessage() and "a~2.png" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)  # fmt: skip


def test_a_users_file_is_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"mine")
    (tmp_path / "a~2.png").write_bytes(b"also mine")
    written = write_new(tmp_path / "a.png", b"result")
    assert written == tmp_path / "a~3.png" and written.read_bytes() == b"result"
    assert (tmp_path / "a.png").read_bytes() == b"mine"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)]


def test_a_jobs_own_earlier_result_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "a-1234abcd.png").write_bytes(b"written before a crash")
    written = write_new(tmp_path / "a-1234abcd.png", b"result", replace_existing=True)
    assert written == tmp_path / "a-1234abcd.png" and written.read_bytes() == b"result"


# --- item 6: output names too long for the folder ---------------------------------------------


async def test_a_name_too_long_is_refused_before_paying(
    workspace: Workspace, fake: FakeProvider
) -> None:
    manifest = workspace.manifest(
        [{"image": workspace.image("p.png"), "prompt": "x"}],
        defaults={"output_name": "{stem:>300}.{ext}"},
    )
    for command in (app.validate, lambda path: app.run(path, options())):
        with pytest.raises(ManifestError, match=r"output_name: .*file name of 304 bytes"):
            await command(manifest)
    assert fake.requests_total == 0


async def test_a_long_name_that_fits_is_written(workspace: Workspace, fake: FakeProvider) -> None:
    # 240 bytes + ".png": the temp file beside it used to carry the name and ~30 bytes more.
    manifest = workspace.manifest(
        [{"image": workspace.image("p.png"), "prompt": "x"}],
        defaults={"output_name": "{stem:>240}.{ext}"},
    )
    outcome = await app.run(manifest, options())
    assert outcome.exit_code == ExitCode.OK
    (written,) = (workspace.root / "out").iterdir()
    assert len(written.name) == 244


def test_temp_files_of_both_namings_are_swept(tmp_path: Path) -> None:
    old = tmp_path / f".a.png.999999-abcdef12{TEMP_SUFFIX}"
    new = tmp_path / f".999999-abcdef12{TEMP_SUFFIX}"
    for temp in (old, new):
        temp.write_bytes(b"half")
    assert sweep_temp_files(tmp_path, is_alive=lambda pid: False) == 2
    assert list(tmp_path.iterdir()) == []


async def test_jobs_whose_key8_names_collide_get_their_whole_key_instead(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`{stem}-{key8}` has 32 bits of key: 100,000 edits of one picture share them more often
    than not. Made to share them here, the later job is named with its whole key."""
    from runner.manifest import expand

    real = expand.job_key

    def sharing_key8(draft: Any, image_sha: Any, mask_sha: Any) -> str:
        return "abcdef01" + real(draft, image_sha, mask_sha)[8:]

    monkeypatch.setattr(expand, "job_key", sharing_key8)
    workspace.image("a.png")
    manifest = workspace.manifest(
        [{"image": "a.png", "prompt": "one"}, {"image": "a.png", "prompt": "two"}]
    )

    outcome = await app.run(manifest, options())

    assert outcome.exit_code == ExitCode.OK and fake.requests_total == 2
    names = sorted(p.name for p in (workspace.root / "out").iterdir())
    keys = [row[0] for row in workspace.db().execute("SELECT key FROM jobs ORDER BY rowid")]
    assert len(names) == 2 and names[0] == "a-abcdef01.png"  # the first job keeps key8
    assert names[1] == f"a-{keys[1]}.png" and len(keys[1]) == 64
