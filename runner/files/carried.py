"""The bytes of an image a Parquet table carries, read back from the table when its job is
sent (or its thumbnail drawn): the table is the only copy, nothing is written out.

Jobs are sent in table order, a few at once, so each table column keeps a cursor: batches of
a few rows read forward through the file (column chunks through a buffer, never a whole row
group at once), the last few batches kept for the jobs prepared side by side. A row behind
them (a retry, a job sent again later) starts that row group over.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.manifest.tables import READ_BUFFER, CarriedSource

BATCH_ROWS = 8  # rows read at a time: a few images, however large the row group
KEPT_BATCHES = 4  # behind the cursor, for jobs prepared out of order
OPEN_TABLES = 4  # cursors kept open (one per table and column)


def read_carried(source: CarriedSource) -> bytes:
    """The bytes at the source's row and column; OSError when the table is gone, unreadable
    or has no such row (the caller checks them against the digest)."""
    return _cursors.read(source)


class _Cursor:
    """Forward reads of one column of one Parquet file."""

    def __init__(self, table: Path, column: str, stamp: tuple[int, int]) -> None:
        import pyarrow.parquet as pq

        self.stamp = stamp  # the file's size and mtime when opened
        self.lock = threading.Lock()
        self._file = pq.ParquetFile(table, buffer_size=READ_BUFFER)
        self._column = column
        meta = self._file.metadata
        self._starts = [0]  # first row (0-based) of each row group, and the end
        for group in range(meta.num_row_groups):
            self._starts.append(self._starts[-1] + meta.row_group(group).num_rows)
        self._group = -1
        self._batches: Iterator[Any] = iter(())
        self._next = 0  # the row the next batch starts at
        self._kept: deque[tuple[int, Any]] = deque(maxlen=KEPT_BATCHES)

    def value(self, row: int) -> Any:
        """The cell at `row` (0-based), as Python."""
        if not 0 <= row < self._starts[-1]:
            raise OSError(f"the table has {self._starts[-1]:,} rows, not {row + 1:,}")
        for first, column in self._kept:
            if first <= row < first + len(column):
                return column[row - first].as_py()
        group = next(g for g in range(len(self._starts) - 1) if row < self._starts[g + 1])
        if group != self._group or row < self._next:
            self._start(group)
        while True:
            batch = next(self._batches)
            first, self._next = self._next, self._next + batch.num_rows
            self._kept.append((first, batch.column(0)))
            if row < self._next:
                return batch.column(0)[row - first].as_py()

    def _start(self, group: int) -> None:
        self._group, self._next = group, self._starts[group]
        self._batches = self._file.iter_batches(
            batch_size=BATCH_ROWS, row_groups=[group], columns=[self._column], use_threads=False
        )


class _Cursors:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: OrderedDict[tuple[Path, str], _Cursor] = OrderedDict()

    def read(self, source: CarriedSource) -> bytes:
        import pyarrow as pa

        try:
            info = source.table.stat()
            cursor = self._cursor(source.table, source.column, (info.st_size, info.st_mtime_ns))
            with cursor.lock:
                value = cursor.value(source.row - 1)
        except (pa.ArrowException, KeyError, StopIteration) as exc:
            raise OSError(f"cannot read row {source.row} of {source.table}: {exc}") from None
        if isinstance(value, dict):  # an `Image` struct
            value = value.get("bytes")
        if not isinstance(value, bytes):
            raise OSError(f"row {source.row} of {source.table} has no image bytes now")
        return value

    def _cursor(self, table: Path, column: str, stamp: tuple[int, int]) -> _Cursor:
        key = (table, column)
        with self._lock:
            cursor = self._open.get(key)
            if cursor is not None and cursor.stamp == stamp:
                self._open.move_to_end(key)
                return cursor
            # New, or the table changed since: read afresh. A cursor let go is closed once
            # no thread reads from it any more.
            self._open.pop(key, None)
            cursor = self._open[key] = _Cursor(table, column, stamp)
            while len(self._open) > OPEN_TABLES:
                self._open.popitem(last=False)
            return cursor


_cursors = _Cursors()
