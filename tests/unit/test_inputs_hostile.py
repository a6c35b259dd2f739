"""Hostile manifests and inputs: one line, the right exit code, nothing sent, no hang
(issue 8, items 11, 12 and 13)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import anyio
import pytest
import yaml
from PIL import Image

from runner import app
from runner.errors import ManifestError, NewerSchema
from runner.manifest.digests import Digester
from runner.manifest.expand import load_manifest

PROVIDER = "providers: {p: {dialect: openai, base_url: 'https://x.test/v1', api_key_env: K}}\n"


def manifest(folder: Path, body: str) -> Path:
    path = folder / "jobs.yaml"
    path.write_text(PROVIDER + body)
    return path


def error_of(path: Path) -> ManifestError:
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    return caught.value


# --- item 12: alias bombs --------------------------------------------------------------------

BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_an_alias_bomb_is_refused_in_one_short_line(tmp_path: Path) -> None:
    path = manifest(tmp_path, 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
                    + BOMB + "output_dir: *i\njobs: [{image: x.png, prompt: p}]\n")  # fmt: skip
    assert len(path.read_bytes()) < 1000  # a few hundred bytes standing for 9^9 values
    error = error_of(path)
    assert "aliases" in str(error) and "100,000" in str(error)
    assert len(str(error)) < 300 and "\n" not in str(error)


def test_a_smaller_bomb_in_a_typed_field_is_echoed_in_200_characters(tmp_path: Path) -> None:
    small = "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("ab", "bc", strict=True)
    )
    path = manifest(tmp_path, 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
                    + small + "output_dir: *c\njobs: [{image: x.png, prompt: p}]\n")  # fmt: skip
    error = error_of(path)
    assert "output_dir" in str(error)
    assert len(str(error)) < 200 + len(str(path)) + 100


def test_an_alias_inside_itself_is_refused(tmp_path: Path) -> None:
    path = manifest(tmp_path, "a: &a [1, *a]\njobs: [{image: x.png, prompt: p}]\n")
    assert "contains it" in str(error_of(path))


def test_plain_aliases_still_work(tmp_path: Path) -> None:
    Image.new("RGB", (16, 16)).save(tmp_path / "x.png")
    path = manifest(tmp_path, "defaults: &d {prompt: shared}\njobs: [{image: x.png, <<: *d}]\n")
    assert load_manifest(path).jobs[0].prompt == "shared"


def test_long_values_are_never_echoed_whole(tmp_path: Path) -> None:
    path = manifest(
        tmp_path, f"jobs: [{{image: x.png, prompt: p, params: {{quality: {'x' * 5000}}}}}]\n"
    )
    error = error_of(path)
    assert "params.quality" in str(error) and len(str(error)) < 400


# --- item 13: nesting, symlink loops, a newer database --------------------------------------


@pytest.mark.parametrize("levels", [100, 20_000])  # past our limit; past libyaml's too
def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path: Path, levels: int) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text("[" * levels + "]" * levels)
    assert "nested more than 64 levels" in str(error_of(path))


@pytest.mark.parametrize("field", ["image", "mask"])
async def test_a_symlink_loop_fails_that_job_alone(tmp_path: Path, field: str) -> None:
    Image.new("RGB", (300, 300)).save(tmp_path / "ok.png")
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    job = {"image": "ok.png", "prompt": "p", field: "loop1"}
    path = tmp_path / "jobs.yaml"
    path.write_text(PROVIDER + yaml.safe_dump({"jobs": [job, {"image": "ok.png", "prompt": "q"}]}))
    os.environ["K"] = "k"
    try:
        result = await app.validate(path)
    finally:
        del os.environ["K"]
    bad = {check.entry: check.problem for check in result.bad}
    assert list(bad) == [0]
    assert f"{field}: cannot read" in (bad[0] or "") and "symbolic links" in (bad[0] or "")


async def test_a_database_from_a_newer_runner_is_refused_and_left_alone(tmp_path: Path) -> None:
    Image.new("RGB", (300, 300)).save(tmp_path / "ok.png")
    path = manifest(tmp_path, "jobs: [{image: ok.png, prompt: p}]\n")
    await app.jobs(path, app.Options())  # makes the database
    db = sqlite3.connect(tmp_path / "jobs.db")
    db.execute("UPDATE alembic_version SET version_num = '0099'")
    db.commit()
    before = (tmp_path / "jobs.db").read_bytes()

    for command in (app.status, app.export, app.jobs):
        with pytest.raises(NewerSchema, match=r"made by a newer runner \(schema 0099"):
            await command(path, app.Options())
    assert db.execute("SELECT version_num FROM alembic_version").fetchone() == ("0099",)
    assert (tmp_path / "jobs.db").read_bytes() == before


# --- item 11: devices and FIFOs are never opened for hashing ---------------------------------


def test_a_device_or_fifo_is_never_read_for_its_key(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    digests = Digester().digest_many([Path("/dev/zero"), fifo, tmp_path])
    assert digests == {Path("/dev/zero"): None, fifo: None, tmp_path: None}


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
async def test_a_non_regular_input_fails_its_job_without_hanging(
    tmp_path: Path, special: str
) -> None:
    if special == "fifo":
        os.mkfifo(tmp_path / "pipe.png")
        special = str(tmp_path / "pipe.png")
    path = manifest(tmp_path, f"jobs: [{{image: '{special}', prompt: p}}]\n")
    os.environ["K"] = "k"
    try:
        with anyio.fail_after(10):  # hung forever before
            result = await app.validate(path)
    finally:
        del os.environ["K"]
    (bad,) = result.bad
    assert "not a regular file" in (bad.problem or "")


def test_a_fifo_swapped_in_after_the_check_does_not_block(tmp_path: Path) -> None:
    from runner.manifest.digests import open_regular

    os.mkfifo(tmp_path / "late.png")
    with pytest.raises(OSError, match="not a regular file"):
        open_regular(tmp_path / "late.png")


@pytest.mark.parametrize("anchor", ["", "&a "])
def test_nesting_past_the_limit_is_refused_with_or_without_anchors(anchor: str) -> None:
    # Without an anchor only the depth is walked; with one, the alias count too.
    from runner.manifest.yaml_load import MAX_DEPTH, YamlRefused, load

    deep = anchor + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    with pytest.raises(YamlRefused, match="nested more than"):
        load(deep)
    assert load(anchor + "[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None


@pytest.mark.parametrize("document", ["a: 1\nb: 2\na: 3\n", "'a': 1\n\"a\": 2\n", "1: x\n0x1: y\n"])
def test_a_duplicate_key_is_refused_however_it_is_written(document: str) -> None:
    from runner.manifest.yaml_load import load

    with pytest.raises(yaml.YAMLError, match="duplicate key"):
        load(document)
