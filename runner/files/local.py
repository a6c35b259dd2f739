"""The engine's `Files` port on the local disk: pre-flight reads, durable outputs, and
`statvfs` free space."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from runner.engine.ports import Files
from runner.files.outputs import free_bytes, write_outputs
from runner.files.preflight import prepare_request


def local_files(watch_folders: Sequence[tuple[str, Path]] = ()) -> Files:
    """`watch_folders`: (what, folder) pairs, besides the outputs', that must not fill up."""
    return Files(prepare_request, write_outputs, free_bytes, watch_folders)
