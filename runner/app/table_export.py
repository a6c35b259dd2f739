"""`runner export --format parquet | imagefolder`: the results as a dataset.

Parquet: one row per job row. A manifest whose jobs come from one `jobs_from:` table (and no
`jobs:`) gets the table's own columns first, row for row, then the result columns; any other
manifest gets the job's inputs (image, mask, prompt, params) then the result columns. Written
in chunks with pyarrow's ParquetWriter: the source table is read again chunk by chunk, and
its jobs' results fetched from the database a chunk at a time.

imagefolder: every output image copied into the folder (as written by the run: never
re-encoded) plus `metadata.jsonl`, one line per image with `file_name` first, the layout
`datasets.load_dataset("imagefolder", data_dir=DIR)` reads.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from anyio import from_thread

from runner.app import context
from runner.errors import OutputError
from runner.manifest import tables
from runner.manifest.digests import Digester
from runner.manifest.expand import ParsedManifest
from runner.records import ExportRow, ObjectURL, output_place
from runner.store.protocol import Store

CHUNK_ROWS = 4096
RESULT_COLUMNS = (
    "key", "status", "error", "attempts", "input_tokens", "output_tokens", "total_tokens",
    "cost_usd", "output_path", "output_sha256", "request_id", "model",
)  # fmt: skip


def result_columns(row: ExportRow | None) -> dict[str, Any]:
    if row is None:  # a row whose job is not in the database (should not happen after sync)
        return dict.fromkeys(RESULT_COLUMNS) | {"output_path": [], "output_sha256": []}
    return {
        "key": row.key,
        "status": row.status,
        "error": row.error,
        "attempts": row.attempts,
        "input_tokens": row.usage.input_tokens,
        "output_tokens": row.usage.output_tokens,
        "total_tokens": row.usage.total_tokens,
        "cost_usd": row.usage.cost_usd,
        "output_path": list(row.outputs),
        "output_sha256": list(row.output_sha256),
        "request_id": row.request_id,
        "model": row.model,
    }


class ExportSource:
    """The manifest's jobs with their results, read from the database a page at a time, for
    a writer that runs in a worker thread (each read is a call back to the event loop)."""

    def __init__(self, store: Store, manifest: str) -> None:
        self._store = store
        self._manifest = manifest

    def pages(self) -> Iterator[list[ExportRow]]:
        after = -1
        while page := from_thread.run(
            self._store.export_page, self._manifest, context.ALL_STATES, after, context.PAGE_JOBS
        ):
            yield [row for _, row in page]
            after = page[-1][0]

    def rows_for(self, keys: Collection[str]) -> Mapping[str, ExportRow]:
        rows = from_thread.run(self._store.export_rows, self._manifest, keys)
        return {row.key: row for row in rows}

    def digester(self, paths: Collection[str]) -> Digester:
        return Digester(from_thread.run(self._store.digests_for, paths))


def write_parquet(target: Path, parsed: ParsedManifest, source: ExportSource) -> int:
    """Write the Parquet file, a chunk of rows at a time; returns how many rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer: Any = None
    written = 0
    temp = target.with_name(f".{target.name}.runner-tmp")
    try:
        for chunk in _chunks(parsed, source):
            table = pa.Table.from_pylist(chunk)
            if writer is None:
                writer = pq.ParquetWriter(temp, table.schema)
            writer.write_table(table.cast(writer.schema))
            written += len(chunk)
        if writer is None:
            return 0
        writer.close()
        writer = None
        temp.replace(target)  # whole or not at all
    except (OSError, pa.ArrowException) as exc:
        raise OutputError(f"cannot write {target}: {exc}") from None
    finally:
        if writer is not None:
            writer.close()
        temp.unlink(missing_ok=True)
    return written


def _chunks(parsed: ParsedManifest, source: ExportSource) -> Iterator[list[dict[str, Any]]]:
    if len(parsed.tables) == 1 and not parsed.entry_drafts:
        yield from _table_chunks(parsed, source)
        return
    for rows in source.pages():
        yield [
            {"image": r.image, "mask": r.mask, "prompt": r.prompt,
             "params": json.dumps(dict(r.params), sort_keys=True)} | result_columns(r)
            for r in rows
        ]  # fmt: skip


def _table_chunks(parsed: ParsedManifest, source: ExportSource) -> Iterator[list[dict[str, Any]]]:
    """The table's own rows, each with its job's results: the table is read twice side by
    side, once for the jobs (keyed as `run` keys them) and once for every column."""
    table = parsed.tables[0]
    columns = tables.columns_of(table)
    originals = tables.read_rows(table, columns)
    resolver = parsed.resolver(checked=False)  # the jobs were checked when synced
    for drafts in resolver.draft_chunks(CHUNK_ROWS):
        paths = {str(p) for d in drafts for p in (d.image, d.mask) if p is not None}
        keyed = resolver.key_chunk(drafts, source.digester(paths))
        results = source.rows_for({spec.key for _, spec, _ in keyed})
        chunk = []
        for _draft, spec, _first in keyed:
            _number, original = next(originals)
            clashing = {name: original[name] for name in original if name in RESULT_COLUMNS}
            record = {
                **{n: v for n, v in original.items() if n not in clashing},
                **{f"source_{n}": v for n, v in clashing.items()},
            }  # the table's own columns keep their values under a prefixed name
            chunk.append(record | result_columns(results.get(spec.key)))
        yield chunk


def write_imagefolder(
    target: Path, pages: Iterable[Sequence[ExportRow]], read_object: Any = None
) -> int:
    """Copy each output image into `target` with a metadata.jsonl, a page of jobs at a
    time; returns how many images."""
    target.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    count = 0
    metadata = target / "metadata.jsonl"
    temp = target / ".metadata.jsonl.runner-tmp"
    try:
        with temp.open("w", encoding="utf-8") as out:
            for row in itertools.chain.from_iterable(pages):
                for index, (where, digest) in enumerate(
                    zip(row.outputs, row.output_sha256, strict=False), start=1
                ):
                    name = _free_name(Path(where).name, row.key, index, taken)
                    place = output_place(where)
                    if isinstance(place, ObjectURL):
                        if read_object is None:
                            raise OutputError(f"{where}: no object store client")
                        (target / name).write_bytes(read_object(place))
                    else:
                        shutil.copyfile(place, target / name)
                    line = {"file_name": name, "key": row.key, "image": row.image,
                            "mask": row.mask, "prompt": row.prompt, "model": row.model,
                            "status": row.status, "cost_usd": row.usage.cost_usd,
                            "sha256": digest, "request_id": row.request_id}  # fmt: skip
                    out.write(json.dumps(line, ensure_ascii=False) + "\n")
                    count += 1
        temp.replace(metadata)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc}") from None
    finally:
        temp.unlink(missing_ok=True)
    return count


def _free_name(name: str, key: str, index: int, taken: set[str]) -> str:
    """The output's own name, unless another output of the export has it already."""
    if name in taken:
        stem, dot, ext = name.rpartition(".")
        name = f"{stem}-{key[:12]}-{index}.{ext}" if dot else f"{name}-{key[:12]}-{index}"
    taken.add(name)
    return name
