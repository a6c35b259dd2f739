"""Where a manifest's outputs may go, checked before anything is sent (exit 2).

A reply is paid for before it is written, so every way a write could go wrong for a reason
known in advance is refused here: two jobs writing one file, an output landing on (or
becoming) an input, a name or path too long for the output folder's filesystem.

The check takes a manifest's jobs a chunk at a time (`OutputCheck.add`), so a table of
100,000 rows is checked without holding its jobs: what it keeps per job is two integers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from runner.dialects import params as dialects
from runner.errors import ManifestError, OutputError, shown
from runner.files.outputs import (
    MAX_CLASH_SUFFIX_CHARS,
    folders_cached,
    length_problem,
    output_names,
    path_limits,
    possible_names,
)
from runner.records import JobSpec, OutputPlace, ReplyImage, entry_label

KEY8, KEY = "{key8}", "{key}"


class OutputCheck:
    """The output check of one manifest, fed its jobs and inputs chunk by chunk, in order.

    Kept per job: the hash of each path it will write (clashes are told with the earlier
    job's place in the manifest) and of each path it could write with its extension left
    out (an input there would be overwritten, whichever format the reply comes in). Inputs
    are remembered only when they lie in the output folder, which is rare."""

    def __init__(self, output_dir: OutputPlace, file: str) -> None:
        self._file = file
        self._limits = path_limits(output_dir)
        self._written: dict[int, int] = {}  # hash of an expected output path -> job entry
        self._possible: set[int] = set()  # hashes of possible output paths, sans extension
        # Inputs in the output folder, by path sans extension -> the extensions there.
        self._inputs_in_output: dict[str, set[str]] = {}
        self._folder = self._prefix(output_dir)
        self._prefixes: dict[OutputPlace, tuple[str, int]] = {}  # a folder's, and its bytes

    @staticmethod
    def _prefix(place: OutputPlace) -> str:
        folder = place.absolute() if isinstance(place, Path) else place
        return str(folder).rstrip("/") + "/"

    def _paths(self, place: OutputPlace, names: Iterable[str]) -> list[str]:
        """The names in `place`, as strings: a Path per name, twice per job, was most of
        the check's time at 100,000 jobs. A name with a folder in it goes through Path, which
        tidies separators (`a//b` is `a/b`), so that equal paths hash the same."""
        prefix, _ = self._place(place)
        return [prefix + name if "/" not in name else str(Path(prefix) / name) for name in names]

    def _place(self, place: OutputPlace) -> tuple[str, int]:
        if (known := self._prefixes.get(place)) is None:
            prefix = self._prefix(place)
            known = self._prefixes[place] = (prefix, len(os.fsencode(prefix)))
        return known

    def add(self, specs: Iterable[JobSpec], inputs: Iterable[Path]) -> list[JobSpec]:
        """The specs, checked; one whose `{key8}` name is an earlier job's comes back
        named with its whole key instead (see `_add_job`)."""
        with folders_cached():  # every job's names, one resolve per folder
            for path in inputs:
                self._add_input(str(path))
            return [self._add_job(spec) for spec in specs]

    def _add_input(self, path: str) -> None:
        if not path.startswith(self._folder):
            return
        stem, ext = os.path.splitext(path)  # noqa: PTH122 (a str, per job)
        if hash(stem) in self._possible:
            raise self._error(
                None,
                f"an output may be written to {path}, which is an input of this manifest; "
                "outputs never replace inputs: change output_dir or output_name",
            )
        self._inputs_in_output.setdefault(stem, set()).add(ext)

    def _add_job(self, spec: JobSpec) -> JobSpec:
        count = spec.images_asked
        likely = ReplyImage(b"", dialects.expected_format(spec.params), 0, 0)
        try:
            expected = self._paths(spec.output_dir, output_names(spec, [likely] * count))
        except OutputError as exc:
            raise self._error(spec, str(exc)) from None
        hashes = [hash(path) for path in expected]
        for path, hashed in zip(expected, hashes, strict=True):
            if (other := self._written.get(hashed)) is None:
                continue
            if KEY8 in spec.output_name:
                # 32 bits of key: among 100,000 jobs of one image, two share them more
                # often than not. The later job takes its whole key; two jobs never do.
                return self._add_job(replace(spec, output_name=spec.output_name.replace(KEY8, KEY)))
            raise self._error(
                spec,
                f"writes the same output file {path} as {entry_label(other)} (an earlier "
                "job); add {key8} to output_name",
            )
        self._check_possible(spec, count)
        self._written.update(dict.fromkeys(hashes, spec.entry))
        return spec

    def _check_possible(self, spec: JobSpec, count: int) -> None:
        """Every name a reply of any format could take: never an input, never too long."""
        name_max, path_max = self._limits
        try:
            names = possible_names(spec, count)
        except OutputError as exc:  # the template was checked when the manifest was read
            raise self._error(spec, str(exc)) from None
        _, prefix_bytes = self._place(spec.output_dir)
        for name, path in zip(names, self._paths(spec.output_dir, names), strict=True):
            stem, ext = os.path.splitext(path)  # noqa: PTH122 (a str, per job)
            if ext in self._inputs_in_output.get(stem, ()):
                raise self._error(
                    spec,
                    f"an output may be written to {path}, which is an input of this manifest; "
                    "outputs never replace inputs: change output_dir or output_name",
                )
            self._possible.add(hash(stem))
            # Lengths in bytes, from the strings (the common case); near a limit, or for a
            # name with folders in it, the full check says what is wrong.
            plain = "/" not in name
            name_bytes = len(name.encode()) if plain and name.isascii() else None
            if (
                name_bytes is None
                or name_bytes + MAX_CLASH_SUFFIX_CHARS > name_max
                or prefix_bytes + name_bytes + MAX_CLASH_SUFFIX_CHARS >= path_max
            ) and (problem := length_problem(_in(spec.output_dir, name), name_max, path_max)):
                raise self._error(spec, f"output name {shown(spec.output_name)} {problem}")

    def _error(self, spec: JobSpec | None, message: str) -> ManifestError:
        return ManifestError(
            message, file=self._file, job=spec.entry if spec else None, field="output_name"
        )


def _in(place: OutputPlace, name: str) -> OutputPlace:
    return (place.absolute() if isinstance(place, Path) else place) / name
