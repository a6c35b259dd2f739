"""Where a manifest's outputs may go, checked before anything is sent (exit 2).

A reply is paid for before it is written, so every way a write could go wrong for a reason
known in advance is refused here: two jobs writing one file, an output landing on (or
becoming) an input, a name or path too long for the output folder's filesystem.

The check takes a manifest's jobs a chunk at a time (`OutputCheck.add`), so a table of
100,000 rows is checked without holding its jobs: what it keeps per job is two integers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from runner.dialects import params as dialects
from runner.errors import ManifestError, OutputError, shown
from runner.files.outputs import (
    MAX_CLASH_SUFFIX_CHARS,
    folders_cached,
    length_problem,
    output_names,
    path_limits,
    planned_names,
    possible_names,
)
from runner.records import JobSpec, OutputPlace, ReplyImage, entry_label

KEY8, KEY = "{key8}", "{key}"


@dataclass(frozen=True, slots=True)
class OutputPlan:
    """What one job would write, as the check compares it with the others: hashes of the
    paths it will write, and of each path it could write sans extension, with that
    extension. Worked out from the job alone (`OutputNames.plan`), so validate's worker
    processes make them; forked from this process, they hash strings as it does."""

    written: tuple[int, ...]
    possible: tuple[tuple[int, str], ...]

    def __reduce__(self) -> tuple[type[OutputPlan], tuple[object, ...]]:
        return OutputPlan, (self.written, self.possible)  # see Draft.__reduce__


class OutputNames:
    """The names one job would write in its output folder, and whether each is usable
    (no escape from the folder, not too long for its filesystem): what the output check
    needs of a job that depends on that job alone."""

    def __init__(self, output_dir: OutputPlace) -> None:
        self._limits = path_limits(output_dir)
        self._prefixes: dict[OutputPlace, tuple[str, int]] = {}  # a folder's, and its bytes

    def paths(self, place: OutputPlace, names: Iterable[str]) -> list[str]:
        """The names in `place`, as strings: a Path per name, twice per job, was most of
        the check's time at 100,000 jobs. A name with a folder in it goes through Path, which
        tidies separators (`a//b` is `a/b`), so that equal paths hash the same."""
        prefix, _ = self._place(place)
        return [prefix + name if "/" not in name else str(Path(prefix) / name) for name in names]

    def _place(self, place: OutputPlace) -> tuple[str, int]:
        if (known := self._prefixes.get(place)) is None:
            prefix = folder_prefix(place)
            known = self._prefixes[place] = (prefix, len(os.fsencode(prefix)))
        return known

    def written(self, spec: JobSpec) -> list[str]:
        """The paths it will write, for its likely reply format; OutputError if unusable."""
        likely = ReplyImage(b"", dialects.expected_format(spec.params), 0, 0)
        return self.paths(spec.output_dir, output_names(spec, [likely] * spec.images_asked))

    def possible(self, spec: JobSpec) -> list[str]:
        """Every path a reply of any format could take; OutputError if one is too long."""
        names = possible_names(spec, spec.images_asked)
        self._check_lengths(spec, names)
        return self.paths(spec.output_dir, names)

    def _check_lengths(self, spec: JobSpec, names: list[str]) -> None:
        name_max, path_max = self._limits
        _, prefix_bytes = self._place(spec.output_dir)
        for name in names:
            # Lengths in bytes, from the strings (the common case); near a limit, or for a
            # name with folders in it, the full check says what is wrong.
            plain = "/" not in name
            name_bytes = len(name.encode()) if plain and name.isascii() else None
            if (
                name_bytes is None
                or name_bytes + MAX_CLASH_SUFFIX_CHARS > name_max
                or prefix_bytes + name_bytes + MAX_CLASH_SUFFIX_CHARS >= path_max
            ) and (problem := length_problem(_in(spec.output_dir, name), name_max, path_max)):
                raise OutputError(f"output name {shown(spec.output_name)} {problem}")

    def plan(self, spec: JobSpec) -> OutputPlan:
        """OutputError if a name is unusable, whatever the other jobs write."""
        written, possible = planned_names(spec, dialects.expected_format(spec.params))
        self._check_lengths(spec, possible)
        stems = []
        for path in self.paths(spec.output_dir, possible):
            stem, ext = split_ext(path)
            stems.append((hash(stem), ext))
        return OutputPlan(
            tuple(hash(path) for path in self.paths(spec.output_dir, written)), tuple(stems)
        )


class OutputCheck:
    """The output check of one manifest, fed its jobs and inputs chunk by chunk, in order.

    Kept per job: the hash of each path it will write (clashes are told with the earlier
    job's place in the manifest) and of each path it could write with its extension left
    out (an input there would be overwritten, whichever format the reply comes in). Inputs
    are remembered only when they lie in the output folder, which is rare."""

    def __init__(self, output_dir: OutputPlace, file: str) -> None:
        self._file = file
        self._names = OutputNames(output_dir)
        self._written: dict[int, int] = {}  # hash of an expected output path -> job entry
        self._possible: set[int] = set()  # hashes of possible output paths, sans extension
        # Inputs in the output folder: hash of the path sans extension -> the extensions there.
        self._inputs_in_output: dict[int, set[str]] = {}
        self._folder = folder_prefix(output_dir)

    def add(
        self,
        specs: Sequence[JobSpec],
        inputs: Iterable[str],
        plans: Sequence[OutputPlan | None] | None = None,
    ) -> list[JobSpec]:
        """The specs, checked; one whose `{key8}` name is an earlier job's comes back
        named with its whole key instead (see `_add_job`). `plans`: theirs, made already
        (None where making it failed: it is made again here, to say why)."""
        with folders_cached():  # every job's names, one resolve per folder
            for path in inputs:
                self._add_input(path)
            return [
                self._add_job(spec, plan)
                for spec, plan in zip(specs, plans or [None] * len(specs), strict=True)
            ]

    def _add_input(self, path: str) -> None:
        if not path.startswith(self._folder):
            return
        stem, ext = split_ext(path)
        if hash(stem) in self._possible:
            raise self._error(
                None,
                f"an output may be written to {path}, which is an input of this manifest; "
                "outputs never replace inputs: change output_dir or output_name",
            )
        self._inputs_in_output.setdefault(hash(stem), set()).add(ext)

    def _add_job(self, spec: JobSpec, plan: OutputPlan | None = None) -> JobSpec:
        if plan is None:
            try:
                plan = self._names.plan(spec)
            except OutputError as exc:
                raise self._error(spec, str(exc)) from None
        for hashed in plan.written:
            if (other := self._written.get(hashed)) is None:
                continue
            if KEY8 in spec.output_name:
                # 32 bits of key: among 100,000 jobs of one image, two share them more
                # often than not. The later job takes its whole key; two jobs never do.
                return self._add_job(replace(spec, output_name=spec.output_name.replace(KEY8, KEY)))
            path = next(p for p in self._names.written(spec) if hash(p) == hashed)
            raise self._error(
                spec,
                f"writes the same output file {path} as {entry_label(other)} (an earlier "
                "job); add {key8} to output_name",
            )
        for stem, ext in plan.possible:
            if ext in self._inputs_in_output.get(stem, ()):
                path = next(p for p in self._names.possible(spec) if _stem_hash(p) == stem)
                raise self._error(
                    spec,
                    f"an output may be written to {path}, which is an input of this manifest; "
                    "outputs never replace inputs: change output_dir or output_name",
                )
            self._possible.add(stem)
        self._written.update(dict.fromkeys(plan.written, spec.entry))
        return spec

    def _error(self, spec: JobSpec | None, message: str) -> ManifestError:
        return ManifestError(
            message, file=self._file, job=spec.entry if spec else None, field="output_name"
        )


def folder_prefix(place: OutputPlace) -> str:
    folder = place.absolute() if isinstance(place, Path) else place
    return str(folder).rstrip("/") + "/"


def _stem_hash(path: str) -> int:
    return hash(split_ext(path)[0])


def split_ext(path: str) -> tuple[str, str]:
    """`os.path.splitext` of a POSIX path string, for three names of every job: the
    extension is from the last "." of the last component on, unless all before that "."
    in the component is dots (`.png`, `a/..png` have none). A third of its cost."""
    dot = path.rfind(".")
    start = max(path.rfind("/"), path.rfind(os.sep)) + 1  # Windows has both
    if dot > start and path[start:dot].lstrip("."):
        return path[:dot], path[dot:]
    return path, ""


def _in(place: OutputPlace, name: str) -> OutputPlace:
    return (place.absolute() if isinstance(place, Path) else place) / name
