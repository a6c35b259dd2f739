"""Where a manifest's outputs may go, checked before anything is sent (exit 2).

A reply is paid for before it is written, so every way a write could go wrong for a reason
known in advance is refused here: two jobs writing one file, an output landing on (or
becoming) an input, a name or path too long for the output folder's filesystem.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

from runner.dialects import params as dialects
from runner.errors import ManifestError, OutputError, shown
from runner.files.outputs import (
    folders_cached,
    length_problem,
    output_paths,
    path_limits,
    possible_paths,
)
from runner.records import JobSpec, OutputPlace, ReplyImage


def check_outputs(specs: Sequence[JobSpec], inputs: Collection[Path], file: str) -> None:
    """ManifestError for the first job whose outputs would clash, overwrite or become an
    input, or could not be written at all."""
    if not specs:
        return
    with folders_cached():  # every job's names, one resolve per folder
        _check(specs, inputs, file)


def _check(specs: Sequence[JobSpec], inputs: Collection[Path], file: str) -> None:
    name_max, path_max = path_limits(specs[0].output_dir)
    owners: dict[OutputPlace, JobSpec] = {}
    for spec in specs:
        count = spec.images_asked
        try:
            possible = possible_paths(spec, count)
        except OutputError as exc:  # the template was checked when the manifest was read
            raise _error(spec, file, str(exc)) from None
        for path in possible:
            if path in inputs:
                raise _error(
                    spec,
                    file,
                    f"an output may be written to {path}, which is an input of this manifest; "
                    "outputs never replace inputs: change output_dir or output_name",
                )
            if problem := length_problem(path, name_max, path_max):
                raise _error(spec, file, f"output name {shown(spec.output_name)} {problem}")
        likely = ReplyImage(b"", dialects.expected_format(spec.params), 0, 0)
        try:
            expected = output_paths(spec, [likely] * count)
        except OutputError as exc:
            raise _error(spec, file, str(exc)) from None
        for path in expected:
            other = owners.setdefault(path, spec)
            if other is not spec:
                raise _error(
                    spec,
                    file,
                    f"writes the same output file {path} as {other.origin} "
                    f"({other.image.name}); add {{key8}} to output_name",
                )


def _error(spec: JobSpec, file: str, message: str) -> ManifestError:
    return ManifestError(message, file=file, job=spec.entry, field="output_name")
