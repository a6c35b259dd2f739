"""The engine's `Files` port: pre-flight reads from the local disk; outputs durable on the
local disk (`statvfs` free space) or in an object store (see object_store.py), by what each
job's `output_dir` names."""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from pathlib import Path

from runner.engine.ports import Files
from runner.files.object_store import ObjectOutputs
from runner.files.outputs import ensure_writable, free_bytes, write_outputs
from runner.records import JobSpec, ObjectURL, OutputPlace, OutputRef, ReplyImage


class Outputs:
    """Where outputs go, on a disk or in a bucket: one object the run and the report share."""

    def __init__(self, objects: ObjectOutputs | None = None) -> None:
        self.objects = objects or ObjectOutputs()

    def write(self, spec: JobSpec, images: Sequence[ReplyImage]) -> tuple[OutputRef, ...]:
        if isinstance(spec.output_dir, ObjectURL):
            return self.objects.write(spec, images)
        return write_outputs(spec, images)

    def free_space(self, folder: OutputPlace) -> int:
        # A bucket does not fill up the way a disk does; its quota errors fail the write.
        return free_bytes(folder) if isinstance(folder, Path) else sys.maxsize

    def ensure_writable(self, folder: OutputPlace) -> None:
        if isinstance(folder, ObjectURL):
            self.objects.ensure_writable(folder)
        else:
            ensure_writable(folder)


def local_files(
    watch_folders: Sequence[tuple[str, Path]] = (), outputs: Outputs | None = None
) -> Files:
    """`watch_folders`: (what, folder) pairs, besides the outputs', that must not fill up."""
    # Pillow comes with pre-flight: loaded when a run has something to send, not before.
    from runner.files.preflight import prepare_request
    from runner.files.uploads import ReadAhead

    outputs = outputs or Outputs()
    prepare = functools.partial(prepare_request, read_ahead=ReadAhead())
    return Files(prepare, outputs.write, outputs.free_space, watch_folders)
