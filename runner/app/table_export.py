"""`runner export --format parquet | imagefolder`: the results as a dataset.

Parquet: one row per job row. A manifest whose jobs come from one `jobs_from:` table (and no
`jobs:`) gets the table's own columns first, row for row, then the result columns; any other
manifest gets the job's inputs (image, mask, prompt, params) then the result columns. Written
in chunks with pyarrow's ParquetWriter: the source table is read again chunk by chunk.

imagefolder: every output image copied into the folder (as written by the run: never
re-encoded) plus `metadata.jsonl`, one line per image with `file_name` first, the layout
`datasets.load_dataset("imagefolder", data_dir=DIR)` reads.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.errors import OutputError
from runner.manifest import tables
from runner.manifest.digests import Digester
from runner.manifest.expand import ParsedManifest
from runner.records import ExportRow, ObjectURL, output_place

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


def row_keys(parsed: ParsedManifest, digester: Digester) -> list[tuple[int, int, str]]:
    """(jobs_from index, row number, job key) for every table row, in table order."""
    drafts = [d for d in parsed.drafts if d.row is not None]
    digests = digester.digest_many([p for d in drafts for p in (d.image, d.mask) if p])
    keys = []
    for draft in drafts:
        assert draft.row is not None
        keys.append((*draft.row, draft.spec(digests, parsed.output_dir).key))
    return keys


def write_parquet(
    target: Path,
    parsed: ParsedManifest,
    rows: Sequence[ExportRow],
    digester: Digester,
    tables_sources: Sequence[Path],
) -> int:
    """Write the Parquet file; returns how many rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    by_key = {row.key: row for row in rows}
    writer: Any = None
    written = 0
    temp = target.with_name(f".{target.name}.runner-tmp")
    try:
        for chunk in _chunks(parsed, rows, by_key, digester, tables_sources):
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


def _chunks(
    parsed: ParsedManifest,
    rows: Sequence[ExportRow],
    by_key: Mapping[str, ExportRow],
    digester: Digester,
    sources: Sequence[Path],
) -> Iterator[list[dict[str, Any]]]:
    if len(sources) == 1 and not any(d.row is None for d in parsed.drafts):
        keys = iter(row_keys(parsed, digester))
        table = sources[0]
        columns = tables.columns_of(table)
        chunk: list[dict[str, Any]] = []
        for _number, original in tables.read_rows(table, columns):
            _, _, key = next(keys)
            clashing = {name: original[name] for name in original if name in RESULT_COLUMNS}
            record = {
                **{n: v for n, v in original.items() if n not in clashing},
                **{f"source_{n}": v for n, v in clashing.items()},
            }  # the table's own columns keep their values under a prefixed name
            chunk.append(record | result_columns(by_key.get(key)))
            if len(chunk) >= CHUNK_ROWS:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
        return
    for start in range(0, len(rows), CHUNK_ROWS):
        yield [
            {"image": r.image, "mask": r.mask, "prompt": r.prompt,
             "params": json.dumps(dict(r.params), sort_keys=True)} | result_columns(r)
            for r in rows[start : start + CHUNK_ROWS]
        ]  # fmt: skip


def write_imagefolder(target: Path, rows: Sequence[ExportRow], read_object: Any = None) -> int:
    """Copy each output image into `target` with a metadata.jsonl; returns how many images."""
    target.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    count = 0
    metadata = target / "metadata.jsonl"
    temp = target / ".metadata.jsonl.runner-tmp"
    try:
        with temp.open("w", encoding="utf-8") as out:
            for row in rows:
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
