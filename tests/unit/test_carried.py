"""Images a Parquet table carries: a locator names the row and column, and the bytes are
read back from the table when the job is sent, through a cursor that reads forward."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from runner.dialects.openai.rules import LIMITS
from runner.errors import InputError
from runner.files import carried
from runner.files.preflight import prepare_request
from runner.manifest.tables import CellReader, carried_locator, carried_source
from runner.records import JobSpec


def png(seed: int, size: tuple[int, int] = (16, 12)) -> bytes:
    data = random.Random(seed).randbytes(size[0] * size[1] * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", size, data).save(buffer, "PNG")
    return buffer.getvalue()


def table(path: Path, images: list[bytes], struct: bool = False, groups: int = 5) -> Path:
    column: Any = [{"bytes": d, "path": None} for d in images] if struct else images
    pq.write_table(pa.table({"my image": column}), path, row_group_size=groups)
    return path


def test_a_locator_names_the_table_row_and_column_and_ends_in_the_digest(tmp_path: Path) -> None:
    data = png(1)
    path, digest = carried_locator(tmp_path / "t.parquet", 7, "my image", data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert path == tmp_path / "t.parquet#7#my%20image" / f"{digest}.png"
    source = carried_source(path)
    assert source is not None
    assert (source.table, source.row, source.column, source.sha256) == (
        tmp_path / "t.parquet", 7, "my image", digest
    )  # fmt: skip
    # Other paths are files, whatever their names.
    assert carried_source(tmp_path / "a#1#b" / f"{digest}.png") is None  # not a Parquet table
    assert carried_source(tmp_path / "t.parquet#x#b" / f"{digest}.png") is None
    assert carried_source(tmp_path / "photo #1.png") is None


def test_reading_cells_writes_nothing(tmp_path: Path) -> None:
    cells = CellReader(tmp_path / "t.parquet")
    path = cells.image(png(2), 3, "image")
    assert isinstance(path, Path) and cells.digests == {path: path.stem}
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("struct", [False, True])
def test_rows_are_read_back_in_any_order(
    tmp_path: Path, struct: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = [png(i) for i in range(23)]
    path = table(tmp_path / "t.parquet", images, struct=struct)
    monkeypatch.setattr(carried, "_cursors", carried._Cursors())
    order = [*range(1, 24), 3, 20, 19, 23, 1, 12, 11]  # forward, behind, a retry
    for row in order:
        source = carried_source(carried_locator(path, row, "my image", images[row - 1])[0])
        assert source is not None
        assert carried.read_carried(source) == images[row - 1]


def test_a_cursor_reads_a_few_rows_at_a_time(tmp_path: Path) -> None:
    # A row group of 1,000 images is never held whole: batches of BATCH_ROWS.
    images = [png(i % 7) for i in range(1000)]
    path = table(tmp_path / "t.parquet", images, groups=1000)
    cursor = carried._Cursor(path, "my image", (0, 0))
    for row in (0, 1, 500, 999):
        assert cursor.value(row) == images[row]
    assert all(len(column) <= carried.BATCH_ROWS for _, column in cursor._kept)
    assert len(cursor._kept) <= carried.KEPT_BATCHES


def spec_for(image: Path, digest: str) -> JobSpec:
    return JobSpec(
        key="0" * 64, entry=0, image=image, mask=None, prompt="p", provider="openai",
        model="gpt-image-1", params={}, output_dir=image.parent / "out",
        output_name="{stem}-{key8}.{ext}", image_sha256=digest,
    )  # fmt: skip


def test_a_carried_image_is_sent_as_the_table_holds_it(tmp_path: Path) -> None:
    images = [png(i) for i in range(3)]
    path = table(tmp_path / "t.parquet", images)
    locator, digest = carried_locator(path, 2, "my image", images[1])
    request = prepare_request(spec_for(locator, digest), LIMITS)
    assert request.image.data == images[1] and request.image.filename == f"{digest}.png"


def test_a_table_changed_since_the_job_was_queued_sends_nothing(tmp_path: Path) -> None:
    images = [png(i) for i in range(3)]
    path = table(tmp_path / "t.parquet", images)
    locator, digest = carried_locator(path, 2, "my image", images[1])
    table(path, [images[0], png(99), images[2]])  # row 2 holds another picture now
    with pytest.raises(InputError) as changed:
        prepare_request(spec_for(locator, digest), LIMITS)
    assert "row 2 of" in str(changed.value) and "changed since the job was queued" in str(
        changed.value
    )
    table(path, images[:1])  # one row left
    with pytest.raises(InputError) as gone:
        prepare_request(spec_for(locator, digest), LIMITS)
    assert "cannot read row 2" in str(gone.value) and "has 1 rows" in str(gone.value)
    path.unlink()
    with pytest.raises(InputError) as missing:
        prepare_request(spec_for(locator, digest), LIMITS)
    assert "cannot read row 2" in str(missing.value)


def test_a_carried_image_over_the_limit_is_refused(tmp_path: Path) -> None:
    images = [png(i) for i in range(2)]
    path = table(tmp_path / "t.parquet", images)
    locator, digest = carried_locator(path, 1, "my image", images[0])
    small = dataclasses.replace(LIMITS, max_image_bytes=len(images[0]) - 1)
    with pytest.raises(InputError) as refused:
        prepare_request(spec_for(locator, digest), small)
    assert "over the" in str(refused.value)


def test_a_table_of_large_rows_is_read_a_few_rows_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner.manifest import tables

    monkeypatch.setattr(tables, "CHUNK_BYTES", 1_000_000)
    big = [random.Random(i).randbytes(100_000) for i in range(30)]
    pq.write_table(pa.table({"image": big}), tmp_path / "big.parquet", compression="none")
    pq.write_table(pa.table({"path": [f"{i}.png" for i in range(30)]}), tmp_path / "small.parquet")
    assert tables.batch_rows(pq.ParquetFile(tmp_path / "big.parquet")) <= 10
    assert tables.batch_rows(pq.ParquetFile(tmp_path / "small.parquet")) == tables.CHUNK_ROWS
    rows = list(tables.read_rows(tmp_path / "big.parquet", ["image"]))
    assert [number for number, _ in rows] == list(range(1, 31))
    assert [row["image"] for _, row in rows] == big
