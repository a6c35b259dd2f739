from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from runner.errors import OutputError
from runner.files.outputs import (
    TEMP_SUFFIX,
    check_output_template,
    ensure_writable,
    output_paths,
    sweep_temp_files,
    write_outputs,
)
from runner.files.procs import pid_alive
from runner.records import JobSpec, ReplyImage

KEY = "1a2b3c4d" + "e" * 56


def reply(fmt: str = "PNG", size: tuple[int, int] = (20, 10), color: str = "red") -> ReplyImage:
    buf = io.BytesIO()
    with Image.new("RGB", size, color) as im:
        im.save(buf, fmt)
    return ReplyImage(buf.getvalue(), fmt, *size)


def spec(out: Path, name: str = "{stem}-{key8}.{ext}") -> JobSpec:
    return JobSpec(
        key=KEY,
        entry=3,
        image=Path("/photos/boat.jpg"),
        mask=None,
        prompt="p",
        provider="openai",
        model="gpt-image-1",
        params={},
        output_dir=out,
        output_name=name,
    )


def names(out: Path, template: str, images: list[ReplyImage]) -> list[str]:
    return [p.relative_to(out).as_posix() for p in output_paths(spec(out, template), images)]


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(TEMP_SUFFIX)]


# --- names --------------------------------------------------------------------------------


def test_default_names_for_one_and_two_images(tmp_path: Path) -> None:
    assert names(tmp_path, "{stem}-{key8}.{ext}", [reply()]) == ["boat-1a2b3c4d.png"]
    assert names(tmp_path, "{stem}-{key8}.{ext}", [reply(), reply("JPEG")]) == [
        "boat-1a2b3c4d-1.png",
        "boat-1a2b3c4d-2.jpg",
    ]


def test_paths_are_absolute_inside_the_output_dir(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    (path,) = output_paths(spec(Path("out")), [reply("WEBP")])
    assert path == tmp_path / "out" / "boat-1a2b3c4d.webp"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{job}/{stem}_{index:02d}.{ext}", ["3/boat_01.png", "3/boat_02.png"]),
        ("{key}", [f"{KEY}-1", f"{KEY}-2"]),
        ("{stem}.{ext}.bak", ["boat-1.png.bak", "boat-2.png.bak"]),
        ("{{x}}{stem}.{ext}", ["{x}boat-1.png", "{x}boat-2.png"]),
        ("{stem}_{ext}", ["boat_png-1", "boat_png-2"]),
        ("{ext}/{stem}.{ext:.2}", ["png/boat-1.pn", "png/boat-2.pn"]),
    ],
)
def test_custom_templates(tmp_path: Path, template: str, expected: list[str]) -> None:
    assert names(tmp_path, template, [reply(), reply()]) == expected


@pytest.mark.parametrize("template", ["{stem}-{key8}.{ext}", "sub/{job}/{stem}-{index}.{ext}"])
def test_good_templates_pass_the_check(tmp_path: Path, template: str) -> None:
    assert check_output_template(template, tmp_path) is None


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{name}.{ext}", "unknown field {name}"),
        ("{stem.__class__}", "unknown field {stem.__class__}"),
        ("{}.png", "unknown field {}"),
        ("{stem", "not a valid template"),
        ("{stem:d}.{ext}", "unusable"),
        ("../{stem}.{ext}", "leads out of the output folder"),
        ("a/../../{stem}.{ext}", "leads out of the output folder"),
        ("/tmp/{stem}.{ext}", "absolute path"),
        ("{stem}/", "does not end in a file name"),
        ("", "empty"),
    ],
)
def test_bad_templates_are_explained(tmp_path: Path, template: str, expected: str) -> None:
    problem = check_output_template(template, tmp_path)
    assert problem is not None
    assert expected in problem


def test_escaping_names_are_never_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for template in ("../{stem}.{ext}", "/tmp/{stem}-{key8}.{ext}"):
        with pytest.raises(OutputError, match="nothing written"):
            write_outputs(spec(out, template), [reply()])
    assert not (tmp_path / "boat.png").exists()
    assert not Path(f"/tmp/boat-{KEY[:8]}.png").exists()


def test_escape_through_a_symlink_is_refused(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "link").symlink_to(elsewhere)
    assert "link" in (check_output_template("link/{stem}.{ext}", out) or "")
    with pytest.raises(OutputError):
        write_outputs(spec(out, "link/{stem}.{ext}"), [reply()])
    assert list(elsewhere.iterdir()) == []


# --- writing ------------------------------------------------------------------------------


def test_write_outputs_writes_whole_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    images = [reply("PNG", (20, 10)), reply("JPEG", (8, 6), "blue")]
    refs = write_outputs(spec(out, "{job}/{stem}.{ext}"), images)
    assert [r.index for r in refs] == [1, 2]
    for ref, image in zip(refs, images, strict=True):
        assert ref.path.is_absolute() and ref.path.parent == out / "3"
        assert ref.path.read_bytes() == image.data
        assert ref.sha256 == hashlib.sha256(image.data).hexdigest()
        assert (ref.size, ref.width, ref.height, ref.format) == (
            len(image.data),
            image.width,
            image.height,
            image.format,
        )
    assert temp_files(tmp_path) == []


def test_overwrite_and_permissions_follow_the_umask(tmp_path: Path) -> None:
    (tmp_path / "boat-1a2b3c4d.png").write_bytes(b"old")
    old = os.umask(0o022)
    try:
        (ref,) = write_outputs(spec(tmp_path), [reply()])
    finally:
        os.umask(old)
    assert ref.path.read_bytes() == reply().data
    assert ref.path.stat().st_mode & 0o777 == 0o644  # not tempfile's owner-only 0o600


@pytest.mark.parametrize("target", ["fsync", "replace"])
def test_failing_write_raises_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    def full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, target, full)
    with pytest.raises(OutputError) as info:
        write_outputs(spec(tmp_path), [reply()])
    final = tmp_path / "boat-1a2b3c4d.png"
    assert str(info.value) == f"cannot write {final}: No space left on device"
    assert isinstance(info.value.__cause__, OSError)
    assert temp_files(tmp_path) == []
    assert not final.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_folder(tmp_path: Path) -> None:
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="Permission denied"):
            write_outputs(spec(tmp_path), [reply()])
    finally:
        tmp_path.chmod(0o755)


# --- sweeping -----------------------------------------------------------------------------


def test_sweep_removes_dead_and_stale_temp_files_only(tmp_path: Path) -> None:
    me = os.getpid()
    sub = tmp_path / "sub"
    sub.mkdir()
    dead = sub / f".boat.png.999999-abcdef12{TEMP_SUFFIX}"
    mine = tmp_path / f".boat.png.{me}-0123abcd{TEMP_SUFFIX}"
    stale = tmp_path / f".old.png.{me}-ffff0000{TEMP_SUFFIX}"
    others = [tmp_path / "boat.png", tmp_path / f"plain{TEMP_SUFFIX}", tmp_path / ".hidden"]
    for path in (dead, mine, stale, *others):
        path.write_bytes(b"x")
    day_ago = time.time() - 25 * 3600
    os.utime(stale, (day_ago, day_ago))

    removed = sweep_temp_files(tmp_path, is_alive=lambda pid: pid == me)

    assert removed == 2
    assert not dead.exists() and not stale.exists()
    assert mine.exists()
    assert all(p.exists() for p in others)


def test_sweep_of_a_missing_folder(tmp_path: Path) -> None:
    assert sweep_temp_files(tmp_path / "never-made") == 0


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(0)
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert not pid_alive(int(child.stdout))


# --- ensure_writable ----------------------------------------------------------------------


def test_ensure_writable_creates_the_folder(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    ensure_writable(target)
    assert target.is_dir()
    assert list(target.iterdir()) == []


def test_ensure_writable_under_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OutputError) as info:
        ensure_writable(blocker / "out")
    assert str(info.value) == (
        f"cannot create output folder {blocker / 'out'}: {blocker} is a file, not a folder"
    )


def test_free_bytes_measures_the_nearest_existing_folder(tmp_path: Path) -> None:
    from runner.files.outputs import free_bytes

    unmade, existing = free_bytes(tmp_path / "not" / "made" / "yet"), free_bytes(tmp_path)
    assert existing > 0 and abs(unmade - existing) < 64 * 2**20  # same disk, give or take


# --- the manifest's output check ------------------------------------------------------------


@pytest.mark.parametrize(
    ("stem", "refused"),
    [
        ("b" * 200, False),  # 200 + "-1a2b3c4d.png": within 255 bytes with room for a suffix
        ("b" * 240, True),  # 253 bytes: no room left for a clash suffix
        ("é" * 100, False),  # 200 bytes in UTF-8
        ("é" * 120, True),  # 120 characters, but 240 bytes: the limit is in bytes
    ],
)
def test_the_output_check_measures_names_in_bytes(tmp_path: Path, stem: str, refused: bool) -> None:
    from runner.errors import ManifestError
    from runner.manifest.output_rules import OutputCheck

    job = dataclasses.replace(spec(tmp_path), image=Path(f"/photos/{stem}.jpg"))
    check = OutputCheck(tmp_path, "jobs.yaml")
    if refused:
        with pytest.raises(ManifestError, match="gives a file name of"):
            check.add([job], [])
    else:
        assert check.add([job], []) == [job]


@pytest.mark.parametrize(
    "template",
    [
        "{stem}-{key8}.{ext}",  # the default: formatted once, the extensions added
        "{stem}-{index}.{ext}",
        "{ext}/{stem}.{ext}",  # {ext} twice: formatted per format
        "{stem}.{ext:>5}",  # a format spec on {ext}: per format
        "{stem}_{ext}",
    ],
)
@pytest.mark.parametrize("count", [1, 3])
def test_every_possible_name_is_the_template_formatted_for_that_format(
    tmp_path: Path, template: str, count: int
) -> None:
    from runner.files.outputs import REPLY_FORMATS, _template_for, possible_names

    job = dataclasses.replace(spec(tmp_path, template), params={"n": count})
    full = _template_for(template, count)
    fields = {"stem": job.image.stem, "key": job.key, "key8": job.key8, "job": job.entry}
    extensions = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}

    expected = [
        full.format(**fields, index=index, ext=extensions[fmt])
        for fmt in REPLY_FORMATS
        for index in range(1, count + 1)
    ]

    assert possible_names(job, count) == expected and len(set(expected)) == 3 * count


@pytest.mark.parametrize(
    "path",
    ["/out/a-1234abcd.png", "/out/.png", "/out/..png", "/out/...", "/out/a.b/c", "/out/b.",
     "/out/b.tar.gz", "", "/", "/out/a.png/", ".png", "a", "a.", "./x.y", "/o/.a.b", "/o/..a.b"],
)  # fmt: skip
def test_an_extension_is_split_off_as_os_path_splitext_does(path: str) -> None:
    from runner.manifest.output_rules import split_ext

    assert split_ext(path) == os.path.splitext(path)  # noqa: PTH122
