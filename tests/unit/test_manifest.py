"""Manifest loading: validation messages, defaults, globs, keys, the digest cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from runner.errors import ManifestError
from runner.manifest.digests import DigestEntry, Digester
from runner.manifest.expand import (
    expand_braces,
    fill_folder_fields,
    load_manifest,
    parse_manifest,
)

PROVIDER = {"dialect": "openai", "base_url": "https://api.example.test/v1", "api_key_env": "K"}


def picture(path: Path, color: tuple[int, int, int] = (10, 20, 30)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), color).save(path)
    return path.name


def write(folder: Path, **document: Any) -> Path:
    document.setdefault("providers", {"comet": PROVIDER})
    path = folder / "jobs.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    return str(caught.value)


def test_defaults_merge_into_jobs_and_params_merge_key_by_key(tmp_path: Path) -> None:
    picture(tmp_path / "a.png")
    manifest = load_manifest(
        write(
            tmp_path,
            defaults={"model": "gpt-image-2", "params": {"quality": "low", "n": 2}},
            jobs=[
                {"image": "a.png", "prompt": "x"},
                {"image": "a.png", "prompt": "y", "params": {"n": 1}, "model": "other-model"},
            ],
        )
    )
    first, second = manifest.jobs
    assert (first.model, dict(first.params)) == ("gpt-image-2", {"quality": "low", "n": 2})
    assert (second.model, dict(second.params)) == ("other-model", {"quality": "low", "n": 1})
    assert first.provider == "comet"  # the only profile is the default


def test_paths_are_relative_to_the_manifest_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    picture(tmp_path / "photos" / "a.png")
    path = write(tmp_path, output_dir="results", jobs=[{"image": "photos/a.png", "prompt": "x"}])
    monkeypatch.chdir(Path(os.sep))
    manifest = load_manifest(path)
    assert manifest.jobs[0].image == tmp_path / "photos" / "a.png"
    assert manifest.output_dir == tmp_path / "results"


def test_glob_gives_one_sorted_job_per_file_with_stem_paired_masks(tmp_path: Path) -> None:
    for name in ("c", "a", "b"):
        picture(tmp_path / "in" / f"{name}.png", (ord(name), 0, 0))
        picture(tmp_path / "masks" / f"{name}-m.png")
    picture(tmp_path / "in" / "deep" / "d.png", (1, 2, 3))
    manifest = load_manifest(
        write(
            tmp_path, jobs=[{"image": "in/**/*.png", "mask": "masks/{stem}-m.png", "prompt": "x"}]
        )
    )
    assert [job.image.name for job in manifest.jobs] == ["a.png", "b.png", "c.png", "d.png"]
    assert [job.mask.name if job.mask else None for job in manifest.jobs[:3]] == [
        "a-m.png", "b-m.png", "c-m.png",
    ]  # fmt: skip
    assert {job.entry for job in manifest.jobs} == {0}


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"jobs": [{"image": "a.png", "prompt": "x"}], "extra": 1}, "jobs.yaml: extra: unknown key"),
        (
            {"jobs": [{"image": "a.png", "prompt": "x"}, {"image": "a.png", "prompt": "x", "maks": "m"}]},
            "jobs.yaml: jobs[1].maks: unknown key",
        ),
        (
            {"providers": {"c": {**PROVIDER, "concurency": 2}}, "jobs": [{"image": "a.png", "prompt": "x"}]},
            "providers.c.concurency: unknown key",
        ),
        ({"jobs": [{"image": "a.png"}]}, "jobs[0].prompt: required"),
        ({"jobs": [{"prompt": "x"}]}, "jobs[0].image: required"),
        ({"jobs": [{"image": "a.png", "prompt": 5}]}, "jobs[0].prompt: Input should be a valid string"),
        ({"jobs": []}, "jobs: required (or jobs_from: tables of jobs)"),
        ({"jobs": [{"image": "*.jpg", "prompt": "x"}]}, "jobs[0].image: the glob '*.jpg' matched no file"),
        (
            {"jobs": [{"image": "a.png", "prompt": "x", "mask": "m/*.png"}]},
            "jobs[0].mask: cannot be a glob",
        ),
        (
            {"providers": {"a": PROVIDER, "b": PROVIDER}, "jobs": [{"image": "a.png", "prompt": "x"}]},
            "jobs[0].provider: required when there are several providers (a, b)",
        ),
        (
            {"providers": {"v": {**PROVIDER, "dialect": "venus"}}, "jobs": [{"image": "a.png", "prompt": "x"}]},
            "providers.v.dialect: unknown dialect 'venus'",
        ),
        (
            {"providers": {"c": {**PROVIDER, "base_url": "api.example.test"}}, "jobs": [{"image": "a.png", "prompt": "x"}]},
            "providers.c.base_url: must start with http:// or https://",
        ),
        ({"jobs": [{"image": "a.png", "prompt": "x", "model": "gpt-image-1"}]}, "shut down by OpenAI"),
        ({"jobs": [{"image": "a.png", "prompt": "x", "params": {"n": 0}}]}, "jobs[0].params.n: must be a whole number from 1 to 10"),
        ({"jobs": [{"image": "a.png", "prompt": "x", "params": {"quality": "ultra"}}]}, "params.quality: must be one of"),
        ({"jobs": [{"image": "a.png", "prompt": "x", "params": {"stream": True}}]}, "params.stream: streaming"),
        ({"jobs": [{"image": "a.png", "prompt": "x", "params": {"prompt": "y"}}]}, "params.prompt: 'prompt' is set by the job"),
        ({"jobs": [{"image": "a.png", "prompt": "x", "params": {"size": [1, 2]}}]}, "params.size: must be a plain value"),
        (
            {"jobs": [{"image": "a.png", "prompt": "x", "params": {"output_compression": 50}}]},
            "output_compression: only applies with output_format jpeg or webp",
        ),
        ({"jobs": [{"image": "a.png", "prompt": "x", "output_name": "../{stem}.png"}]}, "jobs[0].output_name: "),
        ({"jobs": [{"image": "a.png", "prompt": "x", "output_name": "{nope}.png"}]}, "jobs[0].output_name: "),
    ],
)  # fmt: skip
def test_manifest_errors_name_file_job_and_field(
    tmp_path: Path, document: dict[str, Any], expected: str
) -> None:
    picture(tmp_path / "a.png")
    message = error_of(write(tmp_path, **document))
    assert expected in message
    assert "\n" not in message and message.startswith(str(tmp_path / "jobs.yaml"))


def test_duplicate_yaml_keys_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text("jobs: []\njobs: []\nproviders: {}\n")
    assert "line 2, column 1: invalid YAML: duplicate key 'jobs'" in error_of(path)


def test_two_jobs_writing_the_same_file_are_rejected(tmp_path: Path) -> None:
    picture(tmp_path / "a.png")
    message = error_of(
        write(
            tmp_path,
            defaults={"output_name": "{stem}.{ext}"},
            jobs=[{"image": "a.png", "prompt": "one"}, {"image": "a.png", "prompt": "two"}],
        )
    )
    assert "jobs[1].output_name: writes the same output file" in message
    assert "as jobs[0]" in message and "{key8}" in message


def test_keys_follow_content_not_paths(tmp_path: Path) -> None:
    picture(tmp_path / "a.png", (1, 1, 1))
    picture(tmp_path / "b.png", (1, 1, 1))  # same bytes, other name
    picture(tmp_path / "c.png", (9, 9, 9))
    picture(tmp_path / "m.png")
    jobs = [
        {"image": "a.png", "prompt": "x"},
        {"image": "b.png", "prompt": "x"},  # identical content: same job, kept once
        {"image": "c.png", "prompt": "x"},
        {"image": "a.png", "prompt": "y"},
        {"image": "a.png", "prompt": "x", "params": {"n": 2}},
        {"image": "a.png", "prompt": "x", "model": "gpt-image-2-2026-04-21"},
        {"image": "a.png", "prompt": "x", "mask": "m.png"},
    ]
    manifest = load_manifest(write(tmp_path, jobs=jobs))
    keys = [job.key for job in manifest.jobs]
    assert len(keys) == len(set(keys)) == 6
    assert manifest.jobs[0].image.name == "a.png"
    again = load_manifest(write(tmp_path, jobs=list(reversed(jobs))))
    assert set(again_keys := [job.key for job in again.jobs]) == set(keys)
    assert len(again_keys) == 6


def test_same_job_under_another_profile_name_is_another_job(tmp_path: Path) -> None:
    picture(tmp_path / "a.png")
    one = load_manifest(write(tmp_path, jobs=[{"image": "a.png", "prompt": "x"}]))
    two = load_manifest(
        write(tmp_path, providers={"other": PROVIDER}, jobs=[{"image": "a.png", "prompt": "x"}])
    )
    assert one.jobs[0].key != two.jobs[0].key


def test_a_missing_image_is_a_job_not_a_manifest_error(tmp_path: Path) -> None:
    picture(tmp_path / "a.png")
    manifest = load_manifest(
        write(
            tmp_path, jobs=[{"image": "a.png", "prompt": "x"}, {"image": "gone.png", "prompt": "x"}]
        )
    )
    gone = manifest.jobs[1]
    assert gone.image_sha256 is None and gone.image == tmp_path / "gone.png"
    picture(tmp_path / "gone.png", (5, 5, 5))
    found = load_manifest(manifest.path).jobs[1]
    assert found.image_sha256 is not None and found.key != gone.key


def test_digester_reuses_cached_digests_while_size_and_mtime_match(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    picture(path)
    stat = path.stat()
    planted = DigestEntry(str(path), stat.st_size, stat.st_mtime_ns, "c" * 64)

    assert Digester({planted.path: planted}).digest_many([path]) == {path: "c" * 64}

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    digester = Digester({planted.path: planted})
    (fresh,) = digester.digest_many([path]).values()
    assert fresh != "c" * 64 and len(digester.fresh) == 1


def test_a_digester_keeps_the_small_files_it_reads_within_its_budget(tmp_path: Path) -> None:
    small = [tmp_path / f"{n}.png" for n in range(3)]
    for n, path in enumerate(small):
        picture(path, (n, n, n))
    large = tmp_path / "large.bin"
    large.write_bytes(os.urandom(300 * 1024))  # hashed in the thread pool, never kept
    budget = small[0].stat().st_size + small[1].stat().st_size
    digester = Digester(keep_bytes=budget)

    digests = digester.digest_many([*small, large])

    assert digester.read == {p: p.read_bytes() for p in small[:2]}  # the third is past it
    assert all(digests[p] == hashlib.sha256(p.read_bytes()).hexdigest() for p in [*small, large])
    assert len(digester.fresh) == 4 and Digester().digest_many(small) == {
        p: digests[p] for p in small
    }


def test_a_file_with_no_digest_on_record_is_opened_without_a_stat_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = [tmp_path / f"{n}.png" for n in range(3)]
    for n, path in enumerate(small):
        picture(path, (n, n, n))
    missing = tmp_path / "gone.png"
    stats: list[Path] = []
    real_stat = Path.stat

    def counted(self: Path, **kwargs: object) -> os.stat_result:
        stats.append(self)
        return real_stat(self, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "stat", counted)
    digester = Digester()
    digests = digester.digest_many([*small, missing])

    assert stats == []  # fstat of the open file said it all
    assert digests == {
        **{p: hashlib.sha256(p.read_bytes()).hexdigest() for p in small},
        missing: None,
    }
    # What is recorded is what a stat says, so the next run finds them unchanged.
    recorded = {e.path: (e.size, e.mtime_ns) for e in digester.fresh}
    assert recorded == {str(p): (real_stat(p).st_size, real_stat(p).st_mtime_ns) for p in small}
    stats.clear()
    again = Digester({e.path: e for e in digester.fresh})
    assert again.digest_many(small) == {p: digests[p] for p in small}
    assert stats == small and again.fresh == []  # on record: a stat, no read


def test_parse_does_not_hash_but_resolve_does(tmp_path: Path) -> None:
    picture(tmp_path / "a.png")
    parsed = parse_manifest(write(tmp_path, jobs=[{"image": "a.png", "prompt": "x"}]))
    assert len(parsed.drafts) == 1
    digester = Digester()
    manifest = parsed.resolve(digester)
    assert [entry.path for entry in digester.fresh] == [str(tmp_path / "a.png")]
    assert manifest.jobs[0].image_sha256 == digester.fresh[0].sha256


def test_a_manifest_read_for_its_settings_leaves_its_jobs_unbuilt(tmp_path: Path) -> None:
    # A job no full reading accepts (an unknown key): the settings-only reading, which a
    # re-run uses to find its database, neither builds nor validates the jobs.
    path = write(
        tmp_path,
        output_dir="results",
        jobs=[{"image": "a.png", "prompt": "x", "colour": "red"}] * 3,
    )
    settings = parse_manifest(path, expand=False)
    assert settings.entry_drafts == () and settings.output_dir == tmp_path / "results"
    assert set(settings.providers) == {"comet"}
    with pytest.raises(ManifestError, match="colour"):
        parse_manifest(path)
    # What YAML alone refuses is refused in either reading.
    path.write_text(path.read_text() + "jobs_from: [" * 70 + "]" * 70 + "\n")
    with pytest.raises(ManifestError, match="nested more than 64 levels"):
        parse_manifest(path, expand=False)
    # Inside the jobs, nesting is refused where the jobs are built, and only there.
    path.write_text(f"providers: {{comet: {PROVIDER}}}\njobs: {'[' * 70}{']' * 70}\n")
    assert parse_manifest(path, expand=False).entry_drafts == ()
    with pytest.raises(ManifestError, match="nested more than 64 levels"):
        parse_manifest(path)


# --- folder trees: optional masks, {dir}/{relpath}, brace alternatives (issue 10) ----------


def test_brace_alternatives_expand_like_the_shell() -> None:
    assert expand_braces("p/*.{png,jpg}") == ["p/*.png", "p/*.jpg"]
    assert expand_braces("{a,b}/{x,y}.png") == ["a/x.png", "a/y.png", "b/x.png", "b/y.png"]
    assert expand_braces("{a,b{1,2}}.png") == ["a.png", "b1.png", "b2.png"]
    assert expand_braces("{a,a}.png") == ["a.png"]  # once each
    assert expand_braces("{stem}.png") == ["{stem}.png"]  # no comma: kept, as in the shell
    for bad in ("p/*.{png,jpg", "p/*.png}", "{a,b}" * 11):
        with pytest.raises(ValueError):
            expand_braces(bad)


def test_a_glob_with_braces_matches_every_alternative_and_a_bad_one_is_one_line(
    tmp_path: Path,
) -> None:
    for name in ("a.png", "b.jpg", "c.webp", "d.gif"):
        picture(tmp_path / "photos" / name.replace(".gif", ".png"))
    (tmp_path / "photos" / "d.png").rename(tmp_path / "photos" / "d.gif")
    manifest = load_manifest(write(tmp_path, jobs=[{"image": "photos/*.{png,jpg}", "prompt": "x"}]))
    assert [job.image.name for job in manifest.jobs] == ["a.png", "b.jpg"]

    message = error_of(write(tmp_path, jobs=[{"image": "photos/*.{png,jpg", "prompt": "x"}]))
    assert "jobs[0].image" in message and "{ without its }" in message
    assert "\n" not in message


def test_fill_folder_fields_mirrors_the_tree_and_keeps_the_other_fields() -> None:
    template = "{dir}/{stem}-{key8}.{ext}"
    assert (
        fill_folder_fields(template, "2026-11/beach", Path("x.png"))
        == "2026-11/beach/{stem}-{key8}.{ext}"
    )
    assert (
        fill_folder_fields(template, "", Path("x.png")) == "{stem}-{key8}.{ext}"
    )  # not "/x…": absolute
    assert fill_folder_fields("{relpath}.{ext}", "a/b", Path("x.png")) == "a/b/x.{ext}"
    assert fill_folder_fields("{relpath}.{ext}", "", Path("x.png")) == "x.{ext}"
    assert fill_folder_fields("{dir}/{{lit}}{index:02d}", "odd{name}", Path("x.png")) == (
        "odd{{name}}/{{lit}}{index:02d}"  # braces in folder names stay literal
    )
    assert fill_folder_fields("{stem}.{ext}", "a", Path("x.png")) == "{stem}.{ext}"  # untouched


def test_dir_mirrors_the_folders_under_the_globs_root(tmp_path: Path) -> None:
    for folder in ("shoots/2026-11/beach", "shoots/2026-11/city", "shoots"):
        picture(tmp_path / folder / f"{folder.rsplit('/', 1)[-1]}.png", (len(folder), 1, 1))
    picture(tmp_path / "single" / "one.png", (9, 9, 9))
    manifest = load_manifest(
        write(
            tmp_path,
            defaults={"output_name": "{dir}/{stem}-{key8}.{ext}"},
            jobs=[{"image": "shoots/**/*.png", "prompt": "x"}, {"image": "single/one.png", "prompt": "y"}],
        )
    )  # fmt: skip
    names = sorted(job.output_name for job in manifest.jobs)
    assert names == [
        "2026-11/beach/{stem}-{key8}.{ext}",
        "2026-11/city/{stem}-{key8}.{ext}",
        "{stem}-{key8}.{ext}",  # shoots/shoots.png: at the glob's root
        "{stem}-{key8}.{ext}",  # an image named without a glob: its own folder is the root
    ]


@pytest.mark.parametrize(
    "fields",
    [
        {"mask": "masks/{stem}.png", "mask_optional": True},
        {"mask": {"path": "masks/{stem}.png", "optional": True}},
    ],
)
def test_an_optional_mask_that_is_missing_means_an_unmasked_edit(
    tmp_path: Path, fields: dict[str, Any]
) -> None:
    for i in range(3):
        picture(tmp_path / "photos" / f"p{i}.png", (i, 2, 3))
    mask = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    (tmp_path / "masks").mkdir()
    mask.save(tmp_path / "masks" / "p1.png")
    manifest = load_manifest(
        write(tmp_path, defaults=fields, jobs=[{"image": "photos/*.png", "prompt": "x"}])
    )
    masks = {job.image.name: job.mask.name if job.mask else None for job in manifest.jobs}
    assert masks == {"p0.png": None, "p1.png": "p1.png", "p2.png": None}

    required = load_manifest(
        write(tmp_path, jobs=[{"image": "photos/*.png", "prompt": "x", "mask": "masks/{stem}.png"}])
    )
    assert all(job.mask is not None for job in required.jobs)  # fails at pre-flight, as before


def test_a_mask_template_may_use_the_images_folder(tmp_path: Path) -> None:
    picture(tmp_path / "shoots" / "beach" / "x.png")
    manifest = load_manifest(
        write(tmp_path, jobs=[{"image": "shoots/**/*.png", "prompt": "x",
                               "mask": "masks/{dir}/{stem}.png"}])
    )  # fmt: skip
    (job,) = manifest.jobs
    assert job.mask == (tmp_path / "masks" / "beach" / "x.png").resolve()


def test_a_real_key_at_the_wrong_level_says_where_it_belongs(tmp_path: Path) -> None:
    """Not "did you mean 'output_name'?" for output_name itself."""
    (tmp_path / "a.png").write_bytes(b"x")
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(
        "providers: {p: {dialect: openai, base_url: 'http://127.0.0.1:9', api_key_env: K}}\n"
        "output_name: '{stem}.{ext}'\njobs: [{image: a.png, prompt: hi}]\n"
    )
    with pytest.raises(ManifestError) as caught:
        parse_manifest(manifest)
    message = str(caught.value)
    assert "did you mean" not in message
    assert "'output_name' is not a key here, only in defaults: or a job" in message


@pytest.mark.parametrize(
    ("profile", "field", "message"),
    [
        ("{dialect: venice, base_url: 'http://h', api_key_env: K, mode: batch}",
         "providers.p.mode", "only the openai dialect has it"),
        ("{dialect: openai, base_url: 'http://h', api_key_env: K, batch: {max_lines: 10}}",
         "providers.p.batch", "batch: settings need mode: batch"),
        ("{dialect: openai, base_url: 'http://h', api_key_env: K, mode: batch, "
         "batch: {max_lines: 60000}}", "providers.p.batch.max_lines", "50000"),
    ],
)  # fmt: skip
def test_batch_mode_settings_are_checked(
    tmp_path: Path, profile: str, field: str, message: str
) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(f"providers: {{p: {profile}}}\njobs: [{{image: a.png, prompt: hi}}]\n")
    with pytest.raises(ManifestError) as caught:
        parse_manifest(manifest)
    assert caught.value.field == field and message in str(caught.value)


def test_batch_mode_settings_reach_the_profile(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(
        "providers: {p: {dialect: openai, base_url: 'http://h', api_key_env: K, mode: batch,"
        " batch: {max_lines: 500}}}\njobs: [{image: a.png, prompt: hi}]\n"
    )
    profile = parse_manifest(manifest).providers["p"]
    assert profile.batched and profile.batch_max_lines == 500 and profile.batch_window == "24h"
