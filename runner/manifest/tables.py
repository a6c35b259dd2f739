"""Tables as job lists (`jobs_from:`): CSV, TSV, JSONL and Parquet, read in chunks.

A row names its image (and mask) by a path relative to the table's folder, or carries it:
Parquet binary cells and Hugging Face `Image` structs (`{bytes, path}`). A carried image is
hashed as it is read and never written out: its job's input is a locator, a path under the
table that names the row and column and ends in the image's digest
(`train.parquet#17#image/<sha256>.png`), and the bytes are read from the table again when
the job is sent (files/carried.py), checked against that digest.

Problems are told as the manifest's are, naming the table, the row (1 = the first row of
data) and its id where the table has one, and the column.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from runner.errors import ManifestError, shown
from runner.files.links import LinkLookup

KINDS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
CHUNK_ROWS = 4096  # rows per Parquet batch: memory stays flat whatever the table's length
CHUNK_BYTES = 64 * 1024 * 1024  # and fewer rows a batch where rows carry images
READ_BUFFER = 1024 * 1024  # Parquet column chunks read through a buffer, not whole
_SNIFF = {b"\x89PNG": "png", b"\xff\xd8\xff": "jpg", b"RIFF": "webp"}
_LOCATOR = "#"  # table name # row # column, as the folder of a carried image's locator


def kind_of(path: Path, file: str, field: str) -> str:
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise ManifestError(
            f"{shown(path.name)} is not a table the runner reads; use " + ", ".join(sorted(KINDS)),
            file=file,
            field=field,
        )
    return kind


def columns_of(path: Path) -> list[str]:
    """The table's column names, in order (JSONL: the first row's keys)."""
    kind = KINDS[path.suffix.lower()]
    if kind == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    if kind in ("csv", "tsv"):
        with path.open(newline="", encoding="utf-8-sig") as stream:
            return next(csv.reader(stream, delimiter="\t" if kind == "tsv" else ","), [])
    with path.open(encoding="utf-8") as stream:
        for line in stream:
            if line.strip():
                first = json.loads(line)
                return list(first) if isinstance(first, dict) else []
    return []


def read_rows(path: Path, needed: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, row) for each row, in order, streaming; ManifestError (naming the
    table) for a table that cannot be read or lacks one of the `needed` columns."""
    file = str(path)
    if not path.is_file():
        raise ManifestError("table not found", file=file)
    kind = KINDS[path.suffix.lower()]
    try:
        if kind == "parquet":
            yield from _parquet_rows(path, needed)
        elif kind in ("csv", "tsv"):
            yield from _csv_rows(path, needed, "\t" if kind == "tsv" else ",")
        else:
            yield from _jsonl_rows(path, needed)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(f"cannot read the table: {exc}", file=file) from None


def _missing(path: Path, have: Sequence[str], needed: Sequence[str], row: int | None) -> None:
    lacking = [c for c in needed if c not in have]
    if lacking:
        where = f"row {row}, " if row is not None else ""
        raise ManifestError(
            f"no column {shown(lacking[0])} (the table has: {', '.join(map(str, have)) or 'none'})",
            file=str(path),
            field=f"{where}column {lacking[0]!r}",
        )


def _parquet_rows(path: Path, needed: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path, buffer_size=READ_BUFFER)
    except (pa.ArrowException, OSError) as exc:
        raise ManifestError(f"not a readable Parquet file: {exc}", file=str(path)) from None
    _missing(path, table.schema_arrow.names, needed, None)
    number = 0
    columns = list(dict.fromkeys(needed))
    for batch in table.iter_batches(batch_size=batch_rows(table), columns=columns):
        for row in batch.to_pylist():
            number += 1
            yield number, row


def batch_rows(table: Any) -> int:
    """Rows per batch read from a Parquet file: CHUNK_ROWS, fewer where rows are large (a
    batch of 4,096 rows that carry 1.5 MB images each would hold 6 GB)."""
    meta = table.metadata
    rows = sum(meta.row_group(g).num_rows for g in range(meta.num_row_groups))
    size = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
    per_row = size / rows if rows else 0
    return max(1, min(CHUNK_ROWS, int(CHUNK_BYTES // per_row) if per_row else CHUNK_ROWS))


def _csv_rows(
    path: Path, needed: Sequence[str], delimiter: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8-sig") as stream:
        # Rows as lists, the needed cells picked by place: as csv.DictReader reads them (a
        # repeated header's last column; a short row's missing cells None; blank lines not
        # rows), without a dict of every column per row.
        reader = csv.reader(stream, delimiter=delimiter)
        header = next(reader, [])
        _missing(path, header, needed, None)
        wanted = set(needed)
        # In the header's order, as a DictReader's rows are; a repeated name's last place.
        places = {name: at for at, name in enumerate(header) if name in wanted}
        number = 0
        for cells in reader:
            if not cells:
                continue
            number += 1
            width = len(cells)
            # An empty CSV cell is no value, as a null is in Parquet and JSON.
            yield (
                number,
                {name: (cells[at] or None) if at < width else None for name, at in places.items()},
            )


def _jsonl_rows(path: Path, needed: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as stream:
        number = 0
        for line in stream:
            if not line.strip():
                continue
            number += 1
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ManifestError(
                    f"not JSON: {exc}", file=str(path), field=f"row {number}"
                ) from None
            if not isinstance(row, dict):
                raise ManifestError("not a JSON object", file=str(path), field=f"row {number}")
            _missing(path, list(row), needed, number)
            yield number, row


class CellReader:
    """Turns image and mask cells into inputs. A path is taken relative to the table's
    folder with links followed, as `Path.resolve` would, but each folder is resolved once: a
    table of 100,000 rows in one folder costs one listing of it (`LinkLookup`), not an
    lstat per path component.
    Bytes (a Parquet binary cell, an `Image` struct's) become a locator, their digest taken
    now and kept in `digests` (the caller clears it after each row)."""

    def __init__(self, table: Path) -> None:
        self._table = table
        self._folder = table.parent
        self._resolved: dict[str, tuple[Path, str]] = {}  # a cell's folder -> resolved
        self._links = LinkLookup()
        self.digests: dict[Path, str] = {}  # locators of this row -> their images' sha256

    def image(self, value: Any, row: int, column: str) -> Path | str:
        """The input a cell names or carries; a str is why it cannot be used."""
        if isinstance(value, dict):  # Hugging Face `Image`: {bytes, path}
            data, named = value.get("bytes"), value.get("path")
            if data:
                return self._carried(bytes(data), row, column)
            if named:
                return self._path(str(named))
            return "an Image struct with neither bytes nor path"
        if isinstance(value, bytes | bytearray | memoryview):
            if not value:
                return "empty bytes"
            return self._carried(bytes(value), row, column)
        if isinstance(value, str) and value.strip():
            return self._path(value.strip())
        if value is None or (isinstance(value, str) and not value.strip()):
            return "empty"
        return f"expected a path or image bytes, got {type(value).__name__} {shown(value)}"

    def _carried(self, data: bytes, row: int, column: str) -> Path:
        path, digest = carried_locator(self._table, row, column, data)
        self.digests[path] = digest
        return path

    def _path(self, written: str) -> Path:
        head, sep, name = written.rpartition("/")
        head = "/" if sep and not head else head  # `/photos.png`: the root's own file
        if not name or name in (".", "..") or os.sep != "/":
            return _absolute(self._folder / written)
        known = self._resolved.get(head)
        if known is None:
            folder = _absolute(self._folder / head if head else self._folder)
            known = self._resolved[head] = (folder, str(folder))
        path = known[0] / name
        return _absolute(path) if self._links.is_link(known[1], name) else path


def carried_locator(table: Path, row: int, column: str, data: bytes) -> tuple[Path, str]:
    """(locator, sha256) of an image a table carries: nothing is written. Its name is the
    digest and format, as a file of those bytes would be called, so output names follow."""
    digest = hashlib.sha256(data).hexdigest()
    ext = next((e for magic, e in _SNIFF.items() if data.startswith(magic)), "bin")
    where = _LOCATOR.join([table.name, str(row), quote(column, safe="")])
    return table.parent / where / f"{digest}.{ext}", digest


@dataclass(frozen=True, slots=True)
class CarriedSource:
    """Where a locator's bytes are: the Parquet table, the row (1 = the first row of data),
    the column, and the sha256 they must have."""

    table: Path
    row: int
    column: str
    sha256: str


def carried_source(path: Path | str) -> CarriedSource | None:
    """The source a locator names, or None for any other path (cheap: most paths have no
    `#` at all)."""
    text = str(path)
    if _LOCATOR not in text:
        return None
    path = Path(text)
    parts = path.parent.name.rsplit(_LOCATOR, 2)
    digest = path.stem
    if len(parts) != 3 or not parts[1].isdigit() or len(digest) != 64:
        return None
    name, row, column = parts
    if KINDS.get(Path(name).suffix.lower()) != "parquet":
        return None
    return CarriedSource(path.parent.parent / name, int(row), unquote(column), digest)


def _absolute(path: Path) -> Path:
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        return path.absolute()
