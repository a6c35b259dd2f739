"""Tables as job lists (`jobs_from:`): CSV, TSV, JSONL and Parquet, read in chunks.

A row names its image (and mask) by a path relative to the table's folder, or carries it:
Parquet binary cells and Hugging Face `Image` structs (`{bytes, path}`). Carried images are
written once, by content, under `.runner-inputs/` beside the manifest, so that from there on
a table row's job is like any other (pre-flight, hashing cache, report thumbnails).

Problems are told as the manifest's are, naming the table, the row (1 = the first row of
data) and its id where the table has one, and the column.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from runner.errors import ManifestError, OutputError, shown

KINDS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
CHUNK_ROWS = 4096  # rows per Parquet batch: memory stays flat whatever the table's length
CARRIED_FOLDER = ".runner-inputs"  # beside the manifest: images a table carries as bytes
_SNIFF = {b"\x89PNG": "png", b"\xff\xd8\xff": "jpg", b"RIFF": "webp"}


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
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise ManifestError(f"not a readable Parquet file: {exc}", file=str(path)) from None
    _missing(path, table.schema_arrow.names, needed, None)
    number = 0
    for batch in table.iter_batches(batch_size=CHUNK_ROWS, columns=list(dict.fromkeys(needed))):
        for row in batch.to_pylist():
            number += 1
            yield number, row


def _csv_rows(
    path: Path, needed: Sequence[str], delimiter: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream, delimiter=delimiter)
        _missing(path, reader.fieldnames or [], needed, None)
        for number, row in enumerate(reader, start=1):
            # An empty CSV cell is no value, as a null is in Parquet and JSON.
            yield number, {k: (v if v != "" else None) for k, v in row.items() if k in needed}


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
    """Turns image and mask cells into files. A path is taken relative to the table's folder
    with links followed, as `Path.resolve` would, but each folder is resolved once: a table
    of 100,000 rows in one folder costs one lstat per row, not one per path component."""

    def __init__(self, folder: Path, carried: Path) -> None:
        self._folder = folder
        self._carried = carried
        self._resolved: dict[str, Path] = {}  # a cell's folder as written -> resolved

    def image(self, value: Any) -> Path | str:
        """The file a cell names or carries; a str is why it cannot be used."""
        if isinstance(value, dict):  # Hugging Face `Image`: {bytes, path}
            data, named = value.get("bytes"), value.get("path")
            if data:
                return carried_file(bytes(data), self._carried)
            if named:
                return self._path(str(named))
            return "an Image struct with neither bytes nor path"
        if isinstance(value, bytes | bytearray | memoryview):
            if not value:
                return "empty bytes"
            return carried_file(bytes(value), self._carried)
        if isinstance(value, str) and value.strip():
            return self._path(value.strip())
        if value is None or (isinstance(value, str) and not value.strip()):
            return "empty"
        return f"expected a path or image bytes, got {type(value).__name__} {shown(value)}"

    def _path(self, written: str) -> Path:
        head, sep, name = written.rpartition("/")
        head = "/" if sep and not head else head  # `/photos.png`: the root's own file
        if not name or name in (".", "..") or os.sep != "/":
            return _absolute(self._folder / written)
        folder = self._resolved.get(head)
        if folder is None:
            where = self._folder / head if head else self._folder
            folder = self._resolved[head] = _absolute(where)
        path = folder / name
        return _absolute(path) if path.is_symlink() else path


def carried_file(data: bytes, folder: Path) -> Path:
    """Where an image carried in a table is kept: written once, named by its content."""
    digest = hashlib.sha256(data).hexdigest()
    ext = next((e for magic, e in _SNIFF.items() if data.startswith(magic)), "bin")
    path = folder / f"{digest}.{ext}"
    if not path.exists():
        from runner.files.outputs import write_atomic  # lazy: outputs is an I/O module

        try:
            write_atomic(path, data)
        except OutputError as exc:
            raise ManifestError(f"cannot keep an image the table carries: {exc}") from None
    return path


def _absolute(path: Path) -> Path:
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        return path.absolute()
