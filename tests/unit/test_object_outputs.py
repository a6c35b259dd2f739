"""Outputs in an object store, against obstore's in-memory store: names, never-replace,
clash names, one-line errors. The same code against a real S3 server (moto) is in
tests/integration/test_object_store_run.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from runner.errors import ManifestError, OutputError
from runner.files.object_store import ObjectOutputs, one_line, open_store
from runner.files.outputs import length_problem, path_limits
from runner.manifest.expand import parse_manifest
from runner.records import JobSpec, ObjectURL, ReplyImage, output_place

obstore = pytest.importorskip("obstore")
from obstore.store import MemoryStore  # noqa: E402


def spec(output_dir: ObjectURL, name: str = "{stem}-{key8}.{ext}") -> JobSpec:
    return JobSpec(
        key="ab" * 32,
        entry=0,
        image=Path("/photos/boat.png"),
        mask=None,
        prompt="p",
        provider="fake",
        model="m",
        params={},
        output_dir=output_dir,
        output_name=name,
    )


def reply(data: bytes = b"\x89PNG-data") -> ReplyImage:
    return ReplyImage(data, "PNG", 4, 3)


class Stores:
    """One in-memory store per bucket, as `open_store` gives one client per bucket."""

    def __init__(self) -> None:
        self.opened: dict[str, Any] = {}

    def __call__(self, bucket_url: str) -> Any:
        return self.opened.setdefault(bucket_url, MemoryStore())

    def get(self, bucket_url: str, key: str) -> bytes:
        return bytes(obstore.get(self.opened[bucket_url], key).bytes())


def test_output_place_normalises_urls_and_leaves_paths_alone() -> None:
    assert output_place("S3://bkt//night/./run/") == ObjectURL("s3://bkt/night/run")
    assert output_place("/data/out") == Path("/data/out")
    url = ObjectURL("s3://bkt/night") / "a/b.png"
    assert (url.url, url.bucket_url, url.key, url.name) == (
        "s3://bkt/night/a/b.png", "s3://bkt", "night/a/b.png", "b.png",
    )  # fmt: skip


def test_images_land_under_the_prefix_with_their_digest_recorded() -> None:
    stores = Stores()
    outputs = ObjectOutputs(stores)
    (ref,) = outputs.write(spec(ObjectURL("s3://bkt/night")), [reply(b"image-bytes")])

    assert str(ref.path) == f"s3://bkt/night/boat-{'ab' * 4}.png"
    assert stores.get("s3://bkt", f"night/boat-{'ab' * 4}.png") == b"image-bytes"
    assert ref.size == len(b"image-bytes") and ref.format == "PNG"
    assert outputs.read(ObjectURL(str(ref.path))) == b"image-bytes"


def test_an_object_already_there_is_never_replaced_but_kept_beside() -> None:
    stores = Stores()
    outputs = ObjectOutputs(stores)
    folder = ObjectURL("s3://bkt/out")
    obstore.put(stores("s3://bkt"), "out/boat.png", b"the user's own")

    (ref,) = outputs.write(spec(folder, "{stem}.{ext}"), [reply(b"new")])

    assert str(ref.path) == "s3://bkt/out/boat~2.png"
    assert stores.get("s3://bkt", "out/boat.png") == b"the user's own"
    assert stores.get("s3://bkt", "out/boat~2.png") == b"new"


def test_a_name_with_the_jobs_key_replaces_its_own_earlier_object() -> None:
    """Written, then the runner died before recording it: the same job's name, its result."""
    stores = Stores()
    outputs = ObjectOutputs(stores)
    obstore.put(stores("s3://bkt"), f"boat-{'ab' * 4}.png", b"half a run ago")

    (ref,) = outputs.write(spec(ObjectURL("s3://bkt")), [reply(b"now")])

    assert ref.path == ObjectURL(f"s3://bkt/boat-{'ab' * 4}.png")
    assert stores.get("s3://bkt", f"boat-{'ab' * 4}.png") == b"now"


def test_a_failing_store_is_one_output_error_line() -> None:
    class Refusing:
        def __call__(self, bucket_url: str) -> Any:
            raise OutputError(f"cannot open {bucket_url}: access denied")

    with pytest.raises(OutputError, match=r"^cannot open s3://bkt: access denied$"):
        ObjectOutputs(Refusing()).write(spec(ObjectURL("s3://bkt")), [reply()])


def test_obstore_errors_are_cut_to_their_first_line_without_the_xml_body() -> None:
    noisy = RuntimeError(
        "Object at location x/k not found: Error performing PUT http://h/b/x/k in 12ms - "
        'Server returned non-2xx status code: 404 Not Found: <?xml version="1.0"?><Error>'
        "<Code>NoSuchBucket</Code></Error>\n\nDebug source:\nNotFound {\n path: ...}"
    )
    line = one_line(noisy)
    assert "\n" not in line and "<?xml" not in line and "Debug" not in line
    assert line.endswith("status code: 404 Not Found")


def test_without_obstore_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "obstore.store", None)  # import fails as if absent
    with pytest.raises(OutputError, match=r"pip install 'runner\[s3\]'"):
        open_store("s3://bkt")


def test_keys_longer_than_s3_allows_are_refused_before_sending() -> None:
    folder = ObjectURL("s3://bkt/p")
    name_max, path_max = path_limits(folder)
    assert length_problem(folder / ("a" * 1014 + ".png"), name_max, path_max) is not None
    assert length_problem(folder / ("a" * 1010 + ".png"), name_max, path_max) is None


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("gs://bkt/out", "gs:// is not a place outputs can go; use a folder or s3://"),
        ("s3:///out", "names no bucket"),
    ],
)
def test_an_output_dir_url_we_cannot_write_is_a_manifest_error(
    tmp_path: Path, written: str, message: str
) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(
        "providers: {p: {dialect: openai, base_url: 'http://127.0.0.1:9', api_key_env: K}}\n"
        f"output_dir: '{written}'\njobs: [{{image: a.png, prompt: hi}}]\n"
    )
    with pytest.raises(ManifestError) as caught:
        parse_manifest(manifest)
    assert message in str(caught.value) and "output_dir" in str(caught.value)


def test_a_glob_is_not_filtered_by_an_object_store_output_dir(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").write_bytes(b"x")  # a local folder named like the prefix
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(
        "providers: {p: {dialect: openai, base_url: 'http://127.0.0.1:9', api_key_env: K}}\n"
        "output_dir: s3://bkt/out\njobs: [{image: 'out/*.png', prompt: hi}]\n"
    )
    parsed = parse_manifest(manifest)
    assert parsed.output_dir == ObjectURL("s3://bkt/out")
    assert [d.image.name for d in parsed.drafts] == ["a.png"]


def test_the_stores_secret_is_redacted_once_a_store_is_opened(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runner.redact import redact

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY")
    open_store("s3://bkt")
    assert "wJalrXUtnFEMI" not in redact("echoed: wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY")
