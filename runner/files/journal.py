"""Paid replies the database would not take, kept beside the outputs until it does.

When the database stops taking writes (its disk is full), a reply already paid for is
still written to its files; what the database should have said about it (the attempt's
answer, its outputs) goes to a small file in `output_dir/.runner-unrecorded/` instead (beside
the manifest when the outputs go to an object store: the journal stays on a local disk, where
a write is cheap and does not depend on the network that may be what failed).
The next command that opens the manifest records it and removes the file, so the job is
not sent (and paid for) again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runner.errors import OutputError
from runner.files.outputs import write_atomic
from runner.records import (
    AttemptRecord,
    Outcome,
    OutputPlace,
    OutputRef,
    ReplyFacts,
    Usage,
    output_place,
)

log = logging.getLogger("runner")
FOLDER = ".runner-unrecorded"


@dataclass(frozen=True, slots=True)
class LateRecord:
    """One completion to record: which job, which attempt, what came back."""

    key: str
    attempt_id: int
    record: AttemptRecord
    outputs: tuple[OutputRef, ...]


def home(output_dir: OutputPlace, manifest: Path) -> Path:
    """The folder whose `.runner-unrecorded/` holds the journal (see the module's text)."""
    return output_dir if isinstance(output_dir, Path) else manifest.parent


def keep(output_dir: Path, run_id: str, entries: Sequence[LateRecord]) -> Path | None:
    """Write `entries` for a later command; None (and an error logged) if even that fails."""
    path = output_dir / FOLDER / f"{run_id}.jsonl"
    lines = [json.dumps(_to_json(entry), sort_keys=True) for entry in entries]
    try:
        write_atomic(path, ("\n".join(lines) + "\n").encode())
    except OutputError as exc:
        log.error(
            "%d paid replies are written to files but recorded nowhere (%s); their jobs will "
            "be sent again: %s",
            len(entries), exc, ", ".join(str(o.path) for e in entries for o in e.outputs),
        )  # fmt: skip
        return None
    log.error(
        "%d paid replies are written to files but not in the database yet; the next runner "
        "command on this manifest records them (kept in %s)",
        len(entries), path,
    )  # fmt: skip
    return path


def pending_files(output_dir: Path) -> list[Path]:
    folder = output_dir / FOLDER
    return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []


def read(path: Path) -> list[LateRecord]:
    """The entries of one file; a line that does not parse (a torn write) is skipped."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(_from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s: skipping an unreadable entry (%s)", path, exc)
    return entries


def _to_json(entry: LateRecord) -> dict[str, Any]:
    return {
        "key": entry.key,
        "attempt_id": entry.attempt_id,
        "record": asdict(entry.record),
        "outputs": [{**asdict(o), "path": str(o.path)} for o in entry.outputs],
    }


def _from_json(data: dict[str, Any]) -> LateRecord:
    record = dict(data["record"])
    record["outcome"] = Outcome(record["outcome"])
    record["usage"] = Usage(**record["usage"]) if record.get("usage") else None
    record["facts"] = ReplyFacts(**record["facts"]) if record.get("facts") else None
    outputs = tuple(OutputRef(**{**o, "path": output_place(o["path"])}) for o in data["outputs"])
    return LateRecord(str(data["key"]), int(data["attempt_id"]), AttemptRecord(**record), outputs)
