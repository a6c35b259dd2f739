"""`output_dir: s3://bucket/prefix` end to end, against a real S3 server (moto, on
127.0.0.1 in a test thread) and the fake provider over real HTTP: outputs land whole under
the prefix, never over an object that is there, `export` and `report` read them back, a
bucket that cannot be written stops the run before anything is paid, and the store's
secret shows nowhere. Skips where moto or obstore is not installed."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from conftest import API_KEY, KEY_ENV, S3Bucket, Workspace, options
from helpers import invoke

from runner import app
from runner.errors import ExitCode
from runner.testing import FakeProvider


def s3_manifest(workspace: Workspace, bucket: S3Bucket, count: int, prefix: str = "night") -> Path:
    jobs = [
        {"image": workspace.image(f"photos/p{i}.png"), "prompt": f"edit {i}"} for i in range(count)
    ]
    return workspace.manifest(jobs, output_dir=f"{bucket.url}/{prefix}")


def env() -> dict[str, str | None]:
    return {KEY_ENV: API_KEY, "RUNNER_DB": None}


async def test_outputs_go_to_the_bucket_whole_and_a_rerun_sends_nothing(
    workspace: Workspace, fake: FakeProvider, s3_bucket: S3Bucket
) -> None:
    manifest = s3_manifest(workspace, s3_bucket, 4)

    outcome = await app.run(manifest, options())

    assert outcome.exit_code == ExitCode.OK and fake.requests_total == 4
    rows = workspace.db().execute("SELECT path, sha256, size_bytes FROM outputs").fetchall()
    assert len(rows) == 4
    for path, digest, size in rows:
        assert path.startswith(f"{s3_bucket.url}/night/p")
        data = s3_bucket.get(path.removeprefix(s3_bucket.url + "/"))
        assert hashlib.sha256(data).hexdigest() == digest and len(data) == size
    assert not (workspace.root / "out").exists()  # nothing went to a local folder
    assert not any(".runner-tmp" in key for key in s3_bucket.object_keys())  # the probe is gone

    again = await app.run(manifest, options())
    assert again.exit_code == ExitCode.OK and fake.requests_total == 4


def test_export_lists_the_urls_and_the_report_reads_the_images_back(
    workspace: Workspace, fake: FakeProvider, s3_bucket: S3Bucket
) -> None:
    manifest = s3_manifest(workspace, s3_bucket, 3)
    assert invoke("run", manifest, env=env()).returncode == 0

    exported = invoke("export", manifest, env=env())
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    outputs = [out for row in rows for out in row["outputs"]]
    assert len(outputs) == 3 and all(o.startswith(f"{s3_bucket.url}/night/") for o in outputs)

    page = workspace.root / "report.html"
    made = invoke("report", manifest, "-o", page, env=env())
    assert made.returncode == 0, made.stderr
    html = page.read_text()
    # 3 inputs and 3 outputs as thumbnails: the outputs were read from the bucket.
    assert html.count('<img src="data:') == 6
    assert '<div class="ph' not in html and all(url in html for url in outputs)


def test_an_object_of_that_name_is_kept_and_the_output_written_beside_it(
    workspace: Workspace, fake: FakeProvider, s3_bucket: S3Bucket
) -> None:
    # A name without the job's key: an object of that name may be anyone's.
    jobs = [
        {"image": workspace.image("photos/boat.png"), "prompt": "e", "output_name": "{stem}.{ext}"}
    ]
    manifest = workspace.manifest(jobs, output_dir=f"{s3_bucket.url}/out")
    s3_bucket.put("out/boat.png", b"someone else's picture")

    ran = invoke("run", manifest, env=env())

    assert ran.returncode == 0, ran.stderr
    assert s3_bucket.get("out/boat.png") == b"someone else's picture"
    assert s3_bucket.get("out/boat~2.png").startswith(b"\x89PNG")
    assert "boat~2.png" in ran.stderr  # said, not silent


def test_a_bucket_that_cannot_be_written_stops_the_run_before_it_pays(
    workspace: Workspace, fake: FakeProvider, s3_bucket: S3Bucket
) -> None:
    jobs = [{"image": workspace.image("photos/a.png"), "prompt": "edit"}]
    manifest = workspace.manifest(jobs, output_dir="s3://no-such-bucket-here/out")

    ran = invoke("run", manifest, env=env())

    assert ran.returncode == ExitCode.USAGE
    line = ran.stderr.strip().splitlines()[-1]
    assert "output_dir" in line and "s3://no-such-bucket-here/out" in line and "404" in line
    assert fake.requests_total == 0
    assert "Traceback" not in ran.stderr and "<?xml" not in ran.stderr


def test_the_stores_secret_appears_in_no_output(
    workspace: Workspace, fake: FakeProvider, s3_bucket: S3Bucket
) -> None:
    manifest = s3_manifest(workspace, s3_bucket, 2)
    seen = [
        invoke("run", manifest, "-vv", "--log-format", "plain", env=env()),
        invoke("status", manifest, "--json", env=env()),
        invoke("export", manifest, env=env()),
    ]
    invoke("report", manifest, "-o", workspace.root / "r.html", env=env())
    texts = [r.stdout + r.stderr for r in seen]
    texts.append((workspace.root / "r.html").read_text())
    texts.append((workspace.root / "jobs.db").read_bytes().decode("latin-1"))
    assert not [t for t in texts if s3_bucket.secret in t]
    assert re.search(r"s3://runner-\w+/night/p0", texts[2])  # the export did list outputs
