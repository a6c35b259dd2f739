"""`jobs_from:` tables in (CSV, JSONL, Parquet with path, binary and Image-struct cells) and
the results out as Parquet and as an imagefolder, against the fake over real HTTP."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import API_KEY, KEY_ENV, Workspace, options
from helpers import files_hashed, invoke

from runner import app
from runner.app import checking
from runner.errors import ExitCode, ManifestError
from runner.records import RunLimits
from runner.store.threaded import ThreadedStore
from runner.testing import FakeProvider


def table_manifest(workspace: Workspace, source: dict[str, Any], **extra: Any) -> Path:
    path = workspace.manifest([], **extra)
    document = yaml.safe_load(path.read_text())
    del document["jobs"]
    document["jobs_from"] = [source]
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def image_table(workspace: Workspace, folder: str, count: int) -> Path:
    """A manifest over t.csv: `count` rows, each its own image in `folder` and prompt."""
    rows = [{"file": workspace.image(f"{folder}/{i}.png"), "prompt": f"p{i}"} for i in range(count)]
    write_csv(workspace.root / "t.csv", rows)
    return table_manifest(workspace, {"table": "t.csv", "image": "file", "prompt": "prompt"})


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def count_manifest_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Each manifest the commands read in full from now on (its table's rows expanded)."""
    from runner.app import context

    reads: list[Path] = []
    real = context.parse_manifest

    def counted(path: Path, *, expand: bool = True) -> Any:
        if expand:
            reads.append(path)
        return real(path, expand=expand)

    monkeypatch.setattr(context, "parse_manifest", counted)
    return reads


def env() -> dict[str, str | None]:
    return {KEY_ENV: API_KEY, "RUNNER_DB": None}


def test_a_csv_table_runs_and_exports_its_own_columns_as_parquet(
    workspace: Workspace, fake: FakeProvider
) -> None:
    rows = [
        {"row_id": f"r{i}", "file_name": workspace.image(f"data/img/{i}.png").removeprefix("data/"),
         "instruction": f"make it {i}", "size": "1024x1024" if i % 2 else ""}
        for i in range(6)
    ]  # fmt: skip
    write_csv(workspace.root / "data" / "train.csv", rows)
    manifest = table_manifest(
        workspace,
        {"table": "data/train.csv", "image": "file_name", "prompt": "instruction",
         "id": "row_id", "params": {"size": "size"}},
    )  # fmt: skip

    ran = invoke("run", manifest, env=env())

    assert ran.returncode == ExitCode.OK and fake.requests_total == 6
    sizes = sorted(r.fields.get("size", "-") for r in fake.requests)
    assert sizes == ["-", "-", "-", "1024x1024", "1024x1024", "1024x1024"]

    target = workspace.root / "results.parquet"
    exported_run = invoke("export", manifest, "--format", "parquet", "-o", target, env=env())
    assert exported_run.returncode == 0, exported_run.stderr
    table = pq.read_table(target)
    assert table.column_names[:4] == ["row_id", "file_name", "instruction", "size"]
    assert {"status", "error", "attempts", "cost_usd", "output_path", "output_sha256",
            "request_id", "model", "input_tokens"} <= set(table.column_names)  # fmt: skip
    exported = table.to_pylist()
    assert [r["row_id"] for r in exported] == [f"r{i}" for i in range(6)]  # row for row
    assert all(r["status"] == "succeeded" and len(r["output_path"]) == 1 for r in exported)
    assert all(Path(r["output_path"][0]).is_file() for r in exported)


async def test_jsonl_and_parquet_with_binary_and_image_struct_cells(
    workspace: Workspace, fake: FakeProvider
) -> None:
    images = [(workspace.root / workspace.image(f"src/{i}.png")).read_bytes() for i in range(3)]
    table = pa.table(
        {
            "picture": pa.array(images, pa.binary()),
            "hf": [{"bytes": images[0], "path": None}, {"bytes": None, "path": "src/1.png"},
                   {"bytes": images[2], "path": "ignored.png"}],
            "text": ["a", "b", "c"],
        }
    )  # fmt: skip
    pq.write_table(table, workspace.root / "carried.parquet")
    (workspace.root / "rows.jsonl").write_text(
        "".join(json.dumps({"f": f"src/{i}.png", "p": f"j{i}"}) + "\n" for i in range(3))
    )
    for index, source in enumerate(
        [
            {"table": "carried.parquet", "image": "picture", "prompt": "text"},
            {"table": "carried.parquet", "image": "hf", "prompt": "text"},
            {"table": "rows.jsonl", "image": "f", "prompt": "p"},
        ]
    ):
        manifest = table_manifest(workspace, source, database=f"t{index}.db")
        outcome = await app.run(manifest, options())
        assert outcome.exit_code == ExitCode.OK, source
        assert outcome.summary.counts["succeeded"] == 3
    # Binary cells and Image structs with bytes are read from the table, never written out.
    written = {p.relative_to(workspace.root) for p in workspace.root.rglob("*") if p.is_file()}
    assert {p for p in written if "src" not in p.parts and p.parts[0] != "out"} == {
        Path(name) for name in ("carried.parquet", "rows.jsonl", "jobs.yaml")
    } | {Path(f"t{i}.db") for i in range(3)}
    assert fake.requests_total == 9  # three tables of three rows, each its own database
    # A path cell and bytes cells of the same picture are the same input: one fingerprint.
    assert len(fake.received) == 6  # (3 pictures x prompts a/b/c) + (3 pictures x j0..j2)


async def test_images_a_parquet_table_carries_are_read_from_it_not_written_out(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = [(workspace.root / workspace.image(f"c/{i}.png")).read_bytes() for i in range(12)]
    table = pa.table(
        {
            "image": [{"bytes": data, "path": f"{i}.png"} for i, data in enumerate(images)],
            "prompt": [f"p{i}" for i in range(12)],
        }
    )
    pq.write_table(table, workspace.root / "carried.parquet", row_group_size=5)
    manifest = table_manifest(workspace, {"table": "carried.parquet", "image": "image",
                                          "prompt": "prompt"})  # fmt: skip
    # Checked, sent, reported and re-run, the table the only copy of its images.
    assert (await app.validate(manifest, options())).bad == []
    assert (await app.run(manifest, options())).exit_code == ExitCode.OK
    assert fake.requests_total == 12 and len(fake.received) == 12
    rows = await app.export(manifest, options())
    assert [Path(row.image).parent.name for row in rows] == [
        f"carried.parquet#{i}#image" for i in range(1, 13)
    ]  # the job names its row and column
    stats = await app.report(manifest, options(), workspace.root / "r.html")
    assert stats.missing_images == 0 and stats.thumbnails >= 24  # input and output each
    reads = count_manifest_reads(monkeypatch)
    assert (await app.run(manifest, options())).exit_code == ExitCode.OK
    assert reads == [] and fake.requests_total == 12  # unchanged: not read, not sent again
    inputs = [p for p in workspace.root.rglob("*") if p.is_file() and p.parent.name != "out"]
    assert not [p for p in inputs if p.suffix == ".png" and "c" not in p.parent.parts]


@pytest.mark.slow
async def test_adding_10_rows_to_a_finished_1000_row_table_sends_exactly_10_requests(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner.manifest import expand

    monkeypatch.setattr(expand, "CHUNK_JOBS", 64)  # synced in 16 chunks, not one
    rows = [{"file": workspace.image(f"n/{i}.png"), "prompt": f"p{i}"} for i in range(1000)]
    write_csv(workspace.root / "t.csv", rows)
    manifest = table_manifest(
        workspace,
        {"table": "t.csv", "image": "file", "prompt": "prompt"},
        profile={"concurrency": 16},
    )
    assert (await app.run(manifest, options())).exit_code == ExitCode.OK
    assert fake.requests_total == 1000

    # New rows among the old ones (not only at the end): every later row moves position.
    new = [{"file": workspace.image(f"n/new{i}.png"), "prompt": f"q{i}"} for i in range(10)]
    rows = rows[:500] + new[:5] + rows[500:] + new[5:]
    write_csv(workspace.root / "t.csv", rows)
    again = await app.run(manifest, options())

    assert again.exit_code == ExitCode.OK and fake.requests_total == 1010  # exactly 10 more
    assert again.new_jobs == 10
    summary = await app.status(manifest, options())
    assert summary.counts["succeeded"] == 1010


async def test_exports_read_the_database_a_page_at_a_time_and_keep_table_order(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner.app import context, table_export
    from runner.store.sql import SqlStore

    rows = [{"file": workspace.image(f"p/{i}.png"), "prompt": f"p{i}"} for i in range(25)]
    rows.append(dict(rows[3]))  # a repeated row: one job, two table rows
    write_csv(workspace.root / "t.csv", rows)
    manifest = table_manifest(workspace, {"table": "t.csv", "image": "file", "prompt": "prompt"})
    assert (await app.run(manifest, options())).exit_code == ExitCode.OK
    monkeypatch.setattr(context, "PAGE_JOBS", 4)
    monkeypatch.setattr(table_export, "CHUNK_ROWS", 4)
    asked: list[int | None] = []
    real = SqlStore.export_rows

    async def counted(self: SqlStore, manifest: str, keys: Any = None) -> Any:
        asked.append(None if keys is None else len(keys))
        return await real(self, manifest, keys)

    real_page = SqlStore.export_page

    async def paged(self: SqlStore, manifest: str, states: Any, after: int, limit: int) -> Any:
        asked.append(limit)
        return await real_page(self, manifest, states, after, limit)

    monkeypatch.setattr(SqlStore, "export_rows", counted)
    monkeypatch.setattr(SqlStore, "export_page", paged)

    out = workspace.root / "r.parquet"
    assert await app.export_dataset(manifest, options(), "parquet", out) == 26
    folder = workspace.root / "folder"
    assert await app.export_dataset(manifest, options(), "imagefolder", folder) == 25

    assert asked and all(n is not None and n <= 4 for n in asked)  # never every job at once
    table = pq.read_table(out).to_pylist()
    assert [r["prompt"] for r in table] == [r["prompt"] for r in rows]
    assert all(r["status"] == "succeeded" and r["output_path"] for r in table)
    assert table[25]["key"] == table[3]["key"]
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    assert len({json.loads(line)["file_name"] for line in lines}) == 25


async def test_the_imagefolder_export_has_one_file_name_per_output(
    workspace: Workspace, fake: FakeProvider
) -> None:
    manifest = image_table(workspace, "i", 3)
    document = yaml.safe_load(manifest.read_text())
    document["defaults"] = {"params": {"n": 2}}
    manifest.write_text(yaml.safe_dump(document))
    assert (await app.run(manifest, options())).exit_code == ExitCode.OK

    folder = workspace.root / "dataset"
    count = await app.export_dataset(manifest, options(), "imagefolder", folder)

    lines = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert count == 6 and len(lines) == 6
    assert len({line["file_name"] for line in lines}) == 6
    assert all((folder / line["file_name"]).is_file() for line in lines)
    assert all(next(iter(line)) == "file_name" for line in lines)


async def test_a_table_without_a_named_column_is_one_line_and_sends_nothing(
    workspace: Workspace, fake: FakeProvider
) -> None:
    workspace.image("a.png")
    write_csv(workspace.root / "t.csv", [{"file": "a.png", "prompt": "x"}])
    manifest = table_manifest(workspace, {"table": "t.csv", "image": "picture", "prompt": "prompt"})

    with pytest.raises(ManifestError) as caught:
        await app.run(manifest, options())

    message = "t.csv: column 'picture': no column 'picture' (the table has: file, prompt)"
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert fake.requests_total == 0


@pytest.mark.parametrize(
    ("bad", "source", "message"),
    [
        ({"file": "a.png", "prompt": ""}, {"image": "file", "prompt": "prompt"},
         "t.csv: row 2, column 'prompt': a prompt is required, got None"),
        ({"id": "k9", "file": "", "prompt": "x"}, {"image": "file", "prompt": "prompt", "id": "id"},
         "t.csv: row 2 (id 'k9'), column 'file': empty"),
        ({"file": "a.png", "prompt": "x", "q": "ultra"},
         {"image": "file", "prompt": "prompt", "params": {"quality": "q"}},
         "t.csv: row 2, column 'q': quality"),
    ],
)  # fmt: skip
async def test_a_bad_row_fails_its_own_job_naming_table_row_and_column_and_sends_nothing_for_it(
    workspace: Workspace,
    fake: FakeProvider,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    bad: dict[str, Any],
    source: dict[str, Any],
    message: str,
) -> None:
    workspace.image("a.png")
    good = {**dict.fromkeys(bad, ""), "id": "k1", "file": "a.png", "prompt": "fine"}
    rows = [good, {**good, **bad}]
    write_csv(workspace.root / "t.csv", rows)
    manifest = table_manifest(workspace, {"table": "t.csv", **source})

    checked = await app.validate(manifest)
    outcome = await app.run(manifest, options())

    assert len(checked.bad) == 1 and message in str(checked.bad[0].problem)
    assert outcome.exit_code == ExitCode.FAILED  # the run went on: the table is sound
    assert fake.requests_total == 1  # the good row only
    (failed,) = await app.jobs(manifest, options(), app.JobFilter(state="failed"))
    assert failed.error is not None and message in failed.error and "\n" not in failed.error
    assert any(message in r.getMessage() for r in caplog.records)
    assert await app.retry(manifest, options()) == 0  # only fixing the row helps
    reads = count_manifest_reads(monkeypatch)
    assert (await app.run(manifest, options())).exit_code == ExitCode.FAILED
    assert reads == [] and fake.requests_total == 1  # unchanged: the database's list, as is
    rows[1] = {**good, "prompt": "fixed"}
    write_csv(workspace.root / "t.csv", rows)
    assert (await app.run(manifest, options())).exit_code == ExitCode.OK
    assert fake.requests_total == 2


async def test_a_row_whose_image_is_missing_fails_that_job_only(
    workspace: Workspace, fake: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [{"file": workspace.image(f"m/{i}.png"), "prompt": f"p{i}"} for i in range(3)]
    rows.append({"file": "m/gone.png", "prompt": "p3"})
    write_csv(workspace.root / "t.csv", rows)
    manifest = table_manifest(workspace, {"table": "t.csv", "image": "file", "prompt": "prompt"})

    outcome = await app.run(manifest, options())

    assert outcome.exit_code == ExitCode.FAILED
    assert outcome.summary.counts["succeeded"] == 3 and outcome.summary.counts["failed"] == 1
    assert fake.requests_total == 3
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("failed")]
    assert len(failed) == 1 and "gone.png (jobs_from[0]," in failed[0]  # where it comes from


def test_identical_rows_are_one_job_and_status_says_so(
    workspace: Workspace, fake: FakeProvider
) -> None:
    image = workspace.image("d/a.png")
    rows = [{"file": image, "prompt": "same"}] * 3 + [{"file": image, "prompt": "other"}]
    write_csv(workspace.root / "t.csv", rows)
    manifest = table_manifest(workspace, {"table": "t.csv", "image": "file", "prompt": "prompt"})

    assert invoke("run", manifest, env=env()).returncode == 0
    status = json.loads(invoke("status", manifest, "--json", env=env()).stdout)

    assert fake.requests_total == 2 and status["counts"]["succeeded"] == 2
    assert status["duplicates"] == 2
    assert "2 entries or table rows repeat" in invoke("status", manifest, env=env()).stdout


async def test_status_reads_only_the_database_while_manifest_and_table_are_unchanged(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [{"file": workspace.image(f"s/{i}.png"), "prompt": f"p{i}"} for i in range(5)]
    write_csv(workspace.root / "t.csv", rows)
    manifest = table_manifest(workspace, {"table": "t.csv", "image": "file", "prompt": "prompt"})
    assert (await app.run(manifest, options())).exit_code == ExitCode.OK
    reads = count_manifest_reads(monkeypatch)

    unchanged = await app.status(manifest, options())
    assert reads == [] and unchanged.counts["succeeded"] == 5  # the database alone

    time.sleep(0.01)  # a new modification time, whatever the file system's granularity
    rows += [{"file": workspace.image("s/new.png"), "prompt": "new"}]
    write_csv(workspace.root / "t.csv", rows)
    changed = await app.status(manifest, options())
    assert len(reads) == 1 and changed.counts["pending"] == 1  # read again: the new row

    again = await app.status(manifest, options())  # synced by the status above
    assert len(reads) == 1 and again.counts["pending"] == 1


async def test_a_manifest_with_a_glob_is_always_read_for_its_status(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace.image("g/a.png")
    manifest = workspace.manifest([{"image": "g/*.png", "prompt": "p"}])
    assert (await app.run(manifest, options())).exit_code == ExitCode.OK
    workspace.image("g/b.png")  # appears under the glob: the manifest text did not change
    reads = count_manifest_reads(monkeypatch)

    summary = await app.status(manifest, options())

    assert len(reads) == 1 and summary.counts["pending"] == 1


async def test_jobs_and_export_also_answer_from_the_database_when_nothing_changed(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = image_table(workspace, "q", 4)
    assert (await app.run(manifest, options())).exit_code == ExitCode.OK
    reads = count_manifest_reads(monkeypatch)

    exported = await app.export(manifest, options())
    listed = await app.jobs(manifest, options(), app.JobFilter(state="succeeded"))
    one = await app.jobs(manifest, options(), app.JobFilter(key=exported[2].key[:12]))

    assert reads == []
    assert len(exported) == 4 and len(listed) == 4 and [r.key for r in one] == [exported[2].key]
    with pytest.raises(ManifestError, match="no job has a key starting with 'zz'"):
        await app.jobs(manifest, options(), app.JobFilter(key="zz"))


async def test_jobs_in_one_state_reads_only_those_jobs_in_full(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = image_table(workspace, "s", 5)
    assert (await app.run(manifest, options())).exit_code == ExitCode.OK
    keys = [row.key for row in await app.export(manifest, options())]
    with workspace.db() as db:
        db.executemany("UPDATE jobs SET status = 'failed' WHERE key = ?", [(keys[3],), (keys[1],)])
    asked: list[Any] = []
    real_rows, real_page = ThreadedStore.export_rows, ThreadedStore.export_page

    async def rows_spy(self: ThreadedStore, manifest: str, keys: Any = None) -> Any:
        asked.append(None if keys is None else sorted(keys))
        return await real_rows(self, manifest, keys)

    async def page_spy(self: ThreadedStore, *args: Any) -> Any:
        page = await real_page(self, *args)
        asked.extend([sorted(row.key for _, row in page)] if page else [])
        return page

    monkeypatch.setattr(ThreadedStore, "export_rows", rows_spy)
    monkeypatch.setattr(ThreadedStore, "export_page", page_spy)

    failed = await app.jobs(manifest, options(), app.JobFilter(state="failed"))
    # A key names one job among all of them, whatever the state asked for.
    mismatch = await app.jobs(manifest, options(), app.JobFilter(key=keys[0][:12], state="failed"))

    assert [row.key for row in failed] == [keys[1], keys[3]]  # in manifest order
    assert asked[0] == sorted([keys[1], keys[3]])  # the other three never read in full
    assert mismatch == [] and asked[1:] == [[keys[0]]]


async def test_an_export_takes_the_job_list_from_the_database_while_nothing_changed(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner.app import context

    rows = [{"file": workspace.image(f"e/{i}.png"), "prompt": f"p{i}"} for i in range(5)]
    write_csv(workspace.root / "t.csv", rows)
    manifest = table_manifest(workspace, {"table": "t.csv", "image": "file", "prompt": "prompt"})
    assert (await app.run(manifest, options())).exit_code == ExitCode.OK
    syncs: list[object] = []
    real_sync = context.sync_jobs

    async def counted(*args: Any, **kwargs: Any) -> Any:
        syncs.append(args)
        return await real_sync(*args, **kwargs)

    monkeypatch.setattr(context, "sync_jobs", counted)
    out = workspace.root / "r.parquet"

    assert await app.export_dataset(manifest, options(), "parquet", out) == 5
    assert syncs == []  # the table is read once, for its columns
    assert [r["status"] for r in pq.read_table(out).to_pylist()] == ["succeeded"] * 5

    write_csv(
        workspace.root / "t.csv", [*rows, {"file": workspace.image("e/5.png"), "prompt": "new"}]
    )
    assert await app.export_dataset(manifest, options(), "parquet", out) == 6
    assert len(syncs) == 1  # changed: synced first, the new row a pending job
    assert [r["status"] for r in pq.read_table(out).to_pylist()][5] == "pending"


async def test_a_rerun_takes_the_job_list_from_the_database_while_nothing_changed(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [{"file": workspace.image(f"r/{i}.png"), "prompt": f"p{i}"} for i in range(6)]
    write_csv(workspace.root / "t.csv", rows)
    manifest = table_manifest(workspace, {"table": "t.csv", "image": "file", "prompt": "prompt"})
    partial = await app.run(manifest, replace(options(), limits=RunLimits(max_jobs=2)))
    assert partial.exit_code == ExitCode.EARLY and fake.requests_total == 2
    reads = count_manifest_reads(monkeypatch)

    rest = await app.run(manifest, options())  # the four left, from the database's list
    assert reads == [] and rest.exit_code == ExitCode.OK and fake.requests_total == 6

    paged: list[object] = []
    real_page, real_costs = ThreadedStore.specs_page, ThreadedStore.succeeded_costs

    async def page_spy(self: ThreadedStore, *args: Any) -> Any:
        paged.append(args[1])
        return await real_page(self, *args)

    async def costs_spy(self: ThreadedStore, *args: Any) -> Any:
        paged.append("costs")
        return await real_costs(self, *args)

    monkeypatch.setattr(ThreadedStore, "specs_page", page_spy)
    monkeypatch.setattr(ThreadedStore, "succeeded_costs", costs_spy)
    again = await app.run(manifest, options())  # nothing left: nothing read, nothing sent
    assert reads == [] and again.exit_code == ExitCode.OK and fake.requests_total == 6
    assert paged == []  # no job read to price or to learn from: none will be sent

    time.sleep(0.01)
    edited = workspace.root / rows[0]["file"]
    (workspace.root / workspace.image("r/other.png")).replace(edited)  # new pixels, same name
    changed = await app.run(manifest, options())
    assert len(reads) == 1  # its digest no longer matches the file: read in full
    assert changed.exit_code == ExitCode.OK and fake.requests_total == 7  # the new content


async def test_defaults_mask_pairs_each_row_with_its_mask_as_for_jobs_entries(
    workspace: Workspace, fake: FakeProvider
) -> None:
    rows = [{"file": workspace.image(f"dm/{name}.png"), "prompt": "p"} for name in ("a", "b")]
    workspace.mask("masks/a.png")  # b has none: optional
    write_csv(workspace.root / "t.csv", rows)
    manifest = table_manifest(workspace, {"table": "t.csv", "image": "file", "prompt": "prompt"})
    document = yaml.safe_load(manifest.read_text())
    document["defaults"] = {"mask": {"path": "masks/{stem}.png", "optional": True}}
    manifest.write_text(yaml.safe_dump(document))

    assert (await app.run(manifest, options())).exit_code == ExitCode.OK

    masked = {r.fields["prompt"] + ("+mask" if "mask" in r.files else "") for r in fake.requests}
    assert sorted("mask" in r.files for r in fake.requests) == [False, True]
    assert masked == {"p", "p+mask"}


# --- a long table is sent while it is still being read ----------------------------------------


def chunked(monkeypatch: pytest.MonkeyPatch, size: int) -> list[int]:
    """Make the manifest sync `size` jobs at a time; returns the requests the fake had
    received as each chunk after the first was keyed (filled in as the sync goes)."""
    from runner.manifest import expand

    monkeypatch.setattr(expand, "CHUNK_JOBS", size)
    return []


def hold_later_chunks_until_a_request(
    monkeypatch: pytest.MonkeyPatch, fake: FakeProvider, seen: list[int]
) -> None:
    """Chunks after the first wait (in the sync's worker thread) until the fake has had a
    request: a run that waited for the whole sync before sending would never get one."""
    import threading

    from runner.manifest.expand import Resolver

    real = Resolver.key_chunk
    got_one = threading.Event()

    def key_chunk(self: Resolver, drafts: Any, digester: Any) -> Any:
        if self.rows:  # not the first chunk
            deadline = time.monotonic() + 5
            while fake.requests_total == 0 and time.monotonic() < deadline:
                got_one.wait(0.01)
            seen.append(fake.requests_total)
        return real(self, drafts, digester)

    monkeypatch.setattr(Resolver, "key_chunk", key_chunk)


async def test_a_long_table_is_sent_while_its_later_chunks_are_still_read(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = chunked(monkeypatch, 8)
    hold_later_chunks_until_a_request(monkeypatch, fake, seen)
    manifest = image_table(workspace, "s", 40)

    outcome = await app.run(manifest, options())

    assert outcome.exit_code == ExitCode.OK and outcome.new_jobs == 40
    assert len(seen) == 4 and seen[0] > 0  # the second chunk was read after sending began
    assert fake.requests_total == 40  # every row once, the late ones too
    summary = await app.status(manifest, options())
    assert summary.counts["succeeded"] == 40
    assert (await app.run(manifest, options())).exit_code == ExitCode.OK
    assert fake.requests_total == 40  # the finished table: nothing again


async def test_the_sync_reads_on_once_the_first_request_leaves(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Keying later chunks in a worker thread holds the interpreter: they wait (a few
    # seconds at most) for the first request, made from the first chunk.
    from runner.app import context
    from runner.manifest.expand import Resolver

    chunked(monkeypatch, 8)
    events: list[str] = []
    real_key, real_sending = Resolver.key_chunk, context.SyncProgress.sending

    def key_chunk(self: Resolver, drafts: Any, digester: Any) -> Any:
        events.append(f"keyed {self.rows}")
        return real_key(self, drafts, digester)

    def sending(self: context.SyncProgress) -> None:
        events.append("sending")
        real_sending(self)

    monkeypatch.setattr(Resolver, "key_chunk", key_chunk)
    monkeypatch.setattr(context.SyncProgress, "sending", sending)
    monkeypatch.setattr(context, "HEAD_START_S", 30.0)
    manifest = image_table(workspace, "h", 24)

    with anyio.fail_after(20):
        assert (await app.run(manifest, options())).exit_code == ExitCode.OK
    assert events[0] == "keyed 0" and events.index("sending") < events.index("keyed 8")
    assert fake.requests_total == 24


async def test_a_first_chunk_with_nothing_to_send_does_not_hold_the_sync(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner.app import context

    chunked(monkeypatch, 8)
    monkeypatch.setattr(context, "HEAD_START_S", 30.0)
    manifest = image_table(workspace, "n", 16)
    first = await app.run(manifest, replace(options(), limits=RunLimits(max_jobs=8)))
    assert first.exit_code == ExitCode.EARLY and fake.requests_total == 8
    with workspace.db() as db:  # the sync runs again: the list is read, not taken as is
        db.execute("DELETE FROM manifest_syncs")

    with anyio.fail_after(20):  # not 30 s held for a request the first chunk cannot make
        assert (await app.run(manifest, options())).exit_code == ExitCode.OK
    assert fake.requests_total == 16


async def test_a_bad_row_found_while_sending_fails_alone_and_nothing_is_paid_twice(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunked(monkeypatch, 8)
    rows = [{"file": workspace.image(f"b/{i}.png"), "prompt": f"p{i}"} for i in range(40)]
    bad = [dict(row) for row in rows]
    bad[29]["prompt"] = ""  # row 30, in the fourth chunk: read while the first are sent
    write_csv(workspace.root / "t.csv", bad)
    manifest = table_manifest(workspace, {"table": "t.csv", "image": "file", "prompt": "prompt"})

    outcome = await app.run(manifest, options())

    assert outcome.exit_code == ExitCode.FAILED
    assert outcome.summary.counts["succeeded"] == 39 and outcome.summary.counts["failed"] == 1
    assert fake.requests_total == 39  # every row but the bad one
    (failed,) = await app.jobs(manifest, options(), app.JobFilter(state="failed"))
    assert "row 30" in str(failed.error) and "'prompt'" in str(failed.error)

    write_csv(workspace.root / "t.csv", rows)  # fixed
    assert (await app.run(manifest, options())).exit_code == ExitCode.OK
    assert fake.requests_total == 40  # what was sent before is not sent again


async def test_a_run_stopped_while_its_table_is_read_goes_on_next_time(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunked(monkeypatch, 8)
    manifest = image_table(workspace, "m", 40)

    first = await app.run(manifest, replace(options(), limits=RunLimits(max_jobs=3)))

    assert first.exit_code == ExitCode.EARLY and fake.requests_total == 3
    again = await app.run(manifest, options())
    assert again.exit_code == ExitCode.OK and fake.requests_total == 40


async def test_validate_reads_a_table_in_chunks_and_the_database_for_what_is_done(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunked(monkeypatch, 4)
    rows = [{"file": workspace.image(f"v/{i}.png"), "prompt": f"p{i}"} for i in range(20)]
    write_csv(workspace.root / "t.csv", rows[:15])
    manifest = table_manifest(workspace, {"table": "t.csv", "image": "file", "prompt": "prompt"})
    assert (await app.run(manifest, options())).exit_code == ExitCode.OK
    write_csv(workspace.root / "t.csv", rows)
    monkeypatch.setattr(checking, "_workers", lambda: 0)  # the spy sees this process only
    hashed = files_hashed(monkeypatch)

    found = await app.validate(manifest)

    assert (found.jobs, found.done, found.left, len(found.bad)) == (20, 15, 5, 0)
    assert len(hashed) == 5  # the 15 done rows' digests came from the database's cache
    assert fake.requests_total == 15  # validate sent nothing
