"""From a validated manifest to job specs: defaults merged into each job, globs expanded
(never into the output folder, never onto recorded outputs), inputs hashed and each job
keyed by its content.

Missing input files are *not* manifest errors: those jobs fail at pre-flight, alone.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path, PurePath, PurePosixPath
from string import Formatter
from typing import Any

from runner.dialects import dialect_named
from runner.errors import ManifestError, shown
from runner.manifest import tables
from runner.manifest.digests import Digester
from runner.manifest.output_rules import OutputCheck, OutputPlan
from runner.manifest.schema import (
    Document,
    JobFields,
    TableSource,
    prices_from,
    profile_from,
    read_document,
)
from runner.records import (
    OBJECT_SCHEMES,
    TABLE_ENTRIES,
    JobSpec,
    Manifest,
    OutputPlace,
    ProviderProfile,
    RunLimits,
    is_object_url,
    output_place,
)
from runner.settings import DEFAULT_OUTPUT_NAME

KEY_VERSION = 1  # bump only if the key recipe changes: it would re-send every job


# Jobs are made, keyed and synced this many at a time: memory stays flat however long the
# manifest's tables are.
CHUNK_JOBS = 4096
TableReader = Callable[[], Iterator["Draft"]]


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    """A validated manifest whose inputs are not hashed yet (hashing wants the database's
    digest cache, and where the database is comes from the manifest). Its `jobs:` entries
    are expanded; its tables are read when its jobs are made (`resolver`), chunk by chunk."""

    path: Path
    providers: Mapping[str, ProviderProfile]
    output_dir: OutputPlace
    database: str | None
    entry_drafts: tuple[Draft, ...]  # the `jobs:` entries', globs expanded
    limits: RunLimits = field(default_factory=RunLimits)
    pricing: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    # What decides the job list without expanding it: a digest of the manifest's text and
    # its tables' sizes and times (`fingerprinted`); set by who reads the file. None when
    # that is not enough: a glob or brace pattern (files can appear under it). An image
    # edited in place is not in it: `run` checks the inputs' stats besides.
    fingerprint: str | None = None
    tables: tuple[Path, ...] = ()  # the `jobs_from:` tables, absolute, in order
    has_patterns: bool = False  # a `jobs:` image or mask is a glob or brace pattern
    table_readers: tuple[TableReader, ...] = ()  # each table's rows as drafts, read anew
    table_providers: frozenset[str] = frozenset()  # the profiles the tables' rows use

    def fingerprinted(self, text_sha256: str | None) -> ParsedManifest:
        """With the fingerprint of the text it was read from (digested before reading, so a
        change meanwhile makes a fingerprint that no later look matches)."""
        if text_sha256 is None or self.has_patterns:
            return self
        return replace(self, fingerprint=fingerprint_of(text_sha256, self.tables))

    @property
    def provider_names(self) -> set[str]:
        """The profiles some job uses, without reading the tables."""
        return {d.provider.name for d in self.entry_drafts} | set(self.table_providers)

    def iter_drafts(self) -> Iterator[Draft]:
        """Every job entry and table row, in manifest order (tables are read as it goes)."""
        yield from self.entry_drafts
        for read in self.table_readers:
            yield from read()

    @property
    def drafts(self) -> tuple[Draft, ...]:
        return tuple(self.iter_drafts())

    def resolver(
        self, known_outputs: Collection[str] = frozenset(), *, checked: bool = True
    ) -> Resolver:
        return Resolver(self, known_outputs, checked=checked)

    def resolve(
        self, digester: Digester | None = None, known_outputs: Collection[str] = frozenset()
    ) -> Manifest:
        """Hash the inputs and make the job specs, keyed by content, all in memory (a
        command that syncs a database goes chunk by chunk instead: `resolver`). A glob's
        matches that the database knows as outputs (`known_outputs`, absolute paths) are not
        inputs."""
        digester = digester or Digester()
        resolver = self.resolver(known_outputs)
        specs = [
            spec
            for drafts in resolver.draft_chunks()
            for _draft, spec, first in resolver.key_chunk(drafts, digester)
            if first
        ]
        return Manifest(
            self.path,
            self.providers,
            tuple(specs),
            self.output_dir,
            self.database,
            self.limits,
            self.pricing,
            duplicates=resolver.duplicates,
        )


class Resolver:
    """Makes a manifest's job specs a chunk at a time, in manifest order: drafts
    (`draft_chunks`), then specs keyed by their inputs' digests (`key_chunk`). Identical
    work is one job (the first of its rows keeps it); outputs are checked as they come
    (`OutputCheck`). What it keeps across chunks is a few dozen bytes per job."""

    def __init__(
        self, parsed: ParsedManifest, known_outputs: Collection[str], *, checked: bool = True
    ) -> None:
        """`checked=False`: only the keys, for a reader of jobs already synced (export):
        no output check and no repeats told apart (every draft counts as first)."""
        self._parsed = parsed
        self._known_outputs = known_outputs
        self._seen: set[bytes] | None = set() if checked else None
        self._check = OutputCheck(parsed.output_dir, str(parsed.path)) if checked else None
        self.rows = 0  # job entries (after globs) and table rows keyed so far
        self.jobs = 0  # distinct jobs among them

    @property
    def duplicates(self) -> int:
        return self.rows - self.jobs

    def draft_chunks(self, size: int | None = None) -> Iterator[list[Draft]]:
        size = size or CHUNK_JOBS
        parsed = self._parsed
        entries = _without_known_outputs(parsed.entry_drafts, self._known_outputs, str(parsed.path))
        drafts = itertools.chain(entries, *(read() for read in parsed.table_readers))
        while chunk := list(itertools.islice(drafts, size)):
            yield chunk

    def key_chunk(
        self, drafts: Sequence[Draft], digester: Digester
    ) -> list[tuple[Draft, JobSpec, bool]]:
        """(draft, its spec, whether it is the first draft of that job) per draft."""
        return self.admit(drafts, specs_of(drafts, digester, self._parsed.output_dir))

    def admit(
        self,
        drafts: Sequence[Draft],
        specs: Sequence[JobSpec],
        plans: Sequence[OutputPlan | None] | None = None,
    ) -> list[tuple[Draft, JobSpec, bool]]:
        """`key_chunk` for drafts already keyed (`specs_of`, maybe in another process):
        what must see every job in order, repeats and output names. `plans`: each draft's
        output plan where one was made already (see `OutputCheck.add`)."""
        keyed = []
        for draft, spec in zip(drafts, specs, strict=True):
            first = True
            if self._seen is not None:
                raw = bytes.fromhex(spec.key)
                first = raw not in self._seen
                self._seen.add(raw)
            keyed.append((draft, spec, first))
        self.rows += len(keyed)
        fresh = [spec for _draft, spec, first in keyed if first]
        self.jobs += len(fresh)
        if self._check is not None:
            usable = [d for d in drafts if d.problem is None]  # a bad row writes nothing
            # As strings: a Path's hash is worked out from its parts each time it is asked.
            inputs = {str(path) for d in usable for path in (d.image, d.mask) if path is not None}
            wanted = [i for i, (d, _, first) in enumerate(keyed) if first and d.problem is None]
            to_check = [keyed[i][1] for i in wanted]
            planned = [plans[i] for i in wanted] if plans is not None else None
            checked = iter(self._check.add(to_check, inputs, planned))  # some renamed
            keyed = [
                (d, next(checked) if first and d.problem is None else spec, first)
                for d, spec, first in keyed
            ]
        return keyed


def specs_of(drafts: Sequence[Draft], digester: Digester, output_dir: OutputPlace) -> list[JobSpec]:
    """Each draft's spec, keyed by its inputs' digests: the part of keying a chunk that
    depends on that chunk alone."""
    carried = {path: digest for d in drafts for path, digest in d.carried}
    digests = digester.digest_many(
        [
            p
            for d in drafts
            if d.problem is None
            for p in (d.image, d.mask)
            if p is not None and p not in carried
        ]
    )
    digests.update(carried)
    return [draft.spec(digests, output_dir) for draft in drafts]


def parse_manifest(path: Path, *, expand: bool = True) -> ParsedManifest:
    """Read and validate a manifest and expand its globs; exit-2 material raises here.
    `expand=False`: its settings only (profiles, prices, limits, folders), no jobs, for a
    command that takes the job list from the database (see `context.open_manifest`)."""
    path = _absolute(path)
    # Settings only: its `jobs:` entries are not built (a fingerprint that matches the last
    # sync's says they are as they were then; `has_patterns` is then False, but a manifest
    # with patterns has no fingerprint on record to match).
    doc = read_document(path, jobs=expand)
    base = path.parent
    output_dir = _output_folder(doc.output_dir, base, str(path))
    profiles = {name: profile_from(name, p, str(path)) for name, p in doc.providers.items()}
    drafts: tuple[Draft, ...] = ()
    readers: list[TableReader] = []
    table_providers: set[str] = set()
    if expand:
        drafts = tuple(
            draft
            for index, entry in enumerate(doc.jobs)
            for draft in _expand(index, entry, doc, profiles, (base, output_dir), str(path))
        )
        for index, source in enumerate(doc.jobs_from):
            reader, provider = _table_reader(index, source, doc, profiles, base, str(path))
            readers.append(reader)
            table_providers.add(provider)
    limits = RunLimits(doc.limits.deadline, doc.limits.max_jobs, doc.limits.max_cost)
    return ParsedManifest(
        path,
        profiles,
        output_dir,
        doc.database,
        drafts,
        limits,
        prices_from(doc.pricing, profiles, str(path)),
        tables=tuple(_absolute(base / source.table) for source in doc.jobs_from),
        has_patterns=any(
            pattern and _is_pattern(pattern)
            for entry in (doc.defaults, *doc.jobs)
            for pattern in (entry.image, entry.mask if isinstance(entry.mask, str) else None)
        ),
        table_readers=tuple(readers),
        table_providers=frozenset(table_providers),
    )


def text_digest(path: Path) -> str | None:
    """sha256 of the manifest's bytes (no YAML parsed), None if it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def fingerprint_of(text_sha256: str, tables: Sequence[Path]) -> str | None:
    digest = hashlib.sha256(f"v{KEY_VERSION}\0{text_sha256}".encode())
    for table in tables:
        try:
            info = table.stat()
        except OSError:
            return None
        digest.update(f"\0{table}\0{info.st_size}\0{info.st_mtime_ns}".encode())
    return digest.hexdigest()


def load_manifest(path: Path, digester: Digester | None = None) -> Manifest:
    return parse_manifest(path).resolve(digester)


@dataclass(frozen=True, slots=True)
class Draft:
    entry: int
    image: Path
    mask: Path | None
    prompt: str
    provider: ProviderProfile
    model: str
    params: Mapping[str, Any]
    output_name: str
    glob: str | None = None  # the pattern that matched `image`; None when named explicitly
    row: tuple[int, int] | None = None  # (jobs_from index, row number) of a table's row
    # Why this table row cannot be a job (one line naming table, row and column): it is
    # kept as a job that failed without being sent, so the rest of the table still runs.
    problem: str | None = None
    # (locator, sha256) of the images the row carries as bytes, hashed as they were read
    # (see tables.carried_locator): no file to hash.
    carried: tuple[tuple[Path, str], ...] = ()

    def __reduce__(self) -> tuple[Any, tuple[object, ...]]:
        # Validate sends drafts to its worker processes; a slotted dataclass's own pickling
        # looks its fields up per object (a tenth of the sending process's time), and a
        # Path goes as its parts, slower to put together again than its string.
        values = [getattr(self, name) for name in _DRAFT_FIELDS]
        values[1], values[2] = str(self.image), self.mask and str(self.mask)
        return _unpickled_draft, tuple(values)

    def spec(self, digests: Mapping[Path, str | None], output_dir: OutputPlace) -> JobSpec:
        image_sha = digests.get(self.image)
        mask_sha = digests.get(self.mask) if self.mask else None
        return self.keyed(job_key(self, image_sha, mask_sha), image_sha, mask_sha, output_dir)

    def keyed(
        self, key: str, image_sha: str | None, mask_sha: str | None, output_dir: OutputPlace
    ) -> JobSpec:
        """Its spec with the key `spec` gave it (the job's identity, computed once)."""
        return JobSpec(
            key=key,
            entry=self.entry,
            image=self.image,
            mask=self.mask,
            prompt=self.prompt,
            provider=self.provider.name,
            model=self.model,
            params=self.params,
            output_dir=output_dir,
            output_name=self.output_name,
            image_sha256=image_sha,
            mask_sha256=mask_sha,
        )


_DRAFT_FIELDS = tuple(f.name for f in fields(Draft))
assert _DRAFT_FIELDS[1:3] == ("image", "mask")  # Draft.__reduce__ sends these as strings


def _unpickled_draft(entry: int, image: str, mask: str | None, *rest: Any) -> Draft:
    return Draft(entry, Path(image), Path(mask) if mask else None, *rest)


def job_key(draft: Draft, image_sha: str | None, mask_sha: str | None) -> str:
    """Content hash: the same inputs to the same provider profile are the same job.
    An unreadable file is keyed by its path, so fixing the file makes a new job; an
    unusable table row by its problem (which names the row), so fixing it does too.

    The hashed text is `json.dumps(payload, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)` of {v, image, mask, prompt, provider, model, params}, written out
    in that sorted order from pieces: the provider, model and params JSON once per params
    object (a table's rows share one), not once per job (a tenth of keying a thumbnail)."""
    if draft.problem is not None:
        return hashlib.sha256(f"v{KEY_VERSION}\0row\0{draft.problem}".encode()).hexdigest()
    image = _json_str(image_sha or f"unreadable:{draft.image}")
    mask = _json_str(mask_sha or f"unreadable:{draft.mask}") if draft.mask else "null"
    model_and_params, provider = _KEY_PARTS.of(draft)
    canonical = (
        f'{{"image":{image},"mask":{mask},{model_and_params},'
        f'"prompt":{_json_str(draft.prompt)},{provider}}}'
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


# How json.dumps(..., ensure_ascii=False) writes a string, quotes included.
_json_str: Callable[[str], str] = json.encoder.encode_basestring


class _KeyParts:
    """The key's JSON pieces that a table's rows share, for the last params object seen
    (one per table, or per chunk sent to a worker): known by identity, which holds because a
    draft's params are never changed once it has them. A tuple swapped in whole: a thread
    that reads it while another replaces it sees one or the other, either right."""

    def __init__(self) -> None:
        self._last: tuple[Mapping[str, Any], str, str, str, str] | None = None

    def of(self, draft: Draft) -> tuple[str, str]:
        """(`"model":...,"params":...`, `"provider":...,"v":...`) for `draft`."""
        last = self._last
        name = draft.provider.name
        if last is None or last[0] is not draft.params or last[1] != draft.model or last[2] != name:
            params = json.dumps(
                draft.params, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            )
            last = self._last = (
                draft.params,
                draft.model,
                name,
                f'"model":{_json_str(draft.model)},"params":{params}',
                f'"provider":{_json_str(name)},"v":{KEY_VERSION}',
            )
        return last[3], last[4]


_KEY_PARTS = _KeyParts()


def _expand(
    index: int,
    entry: JobFields,
    doc: Document,
    profiles: Mapping[str, ProviderProfile],
    folders: tuple[Path, OutputPlace],
    file: str,
) -> list[Draft]:
    """One job entry's drafts; `folders` is (the manifest's folder, the output folder)."""
    base, output_dir = folders
    merged = _merge(doc.defaults, entry)

    def fail(field: str, message: str) -> ManifestError:
        return ManifestError(message, file=file, job=index, field=field)

    image = merged.get("image")
    prompt = merged.get("prompt")
    if not image:
        raise fail("image", "required")
    if not isinstance(prompt, str) or not prompt.strip():
        raise fail("prompt", "required (the edit instruction)")
    provider = _pick_provider(merged.get("provider"), profiles, fail)
    dialect = dialect_named(provider.dialect)
    model = merged.get("model") or dialect.default_model
    if problem := dialect.check_model(model):
        raise fail("model", problem)
    params = merged.get("params") or {}
    if found := dialect.check_params(params):
        raise fail(f"params.{found[0]}", found[1])
    output_name = merged.get("output_name") or DEFAULT_OUTPUT_NAME
    if problem := _check_template(output_name):
        raise fail("output_name", problem)
    images = _image_paths(image, base, fail, output_dir)
    mask_template, mask_optional = _mask_setting(merged)
    if mask_template and glob.has_magic(mask_template):
        raise fail("mask", "cannot be a glob; use {stem} to pair each image with its mask")
    drafts = []
    for path, root in images:
        folder = _folder_under(path, root)
        mask = _mask_path(mask_template, path, folder, base, fail) if mask_template else None
        if mask is not None and mask_optional and not os.path.lexists(mask):
            mask = None  # an optional mask that is not there: an edit without one
        drafts.append(
            Draft(
                entry=index,
                image=path,
                mask=mask,
                prompt=prompt,
                provider=provider,
                model=model,
                params=params,
                output_name=fill_folder_fields(output_name, folder, path),
                glob=image if _is_pattern(image) else None,
            )
        )
    return drafts


def _mask_setting(merged: Mapping[str, Any]) -> tuple[str | None, bool]:
    """The mask template and whether a missing mask file is allowed (`mask: {path, optional}`
    or `mask_optional: true`, either in the job or in `defaults`)."""
    mask = merged.get("mask")
    optional = bool(merged.get("mask_optional"))
    if isinstance(mask, Mapping):
        return str(mask["path"]), optional or bool(mask.get("optional"))
    return mask, optional


def fill_folder_fields(template: str, folder: str, image: PurePath) -> str:
    """`template` with `{dir}` and `{relpath}` replaced by this image's folder (relative to
    its glob's root, "" at the root) and path without extension; the other fields stay for
    when the reply's format is known. An empty `{dir}` takes its following `/` with it, so
    `{dir}/{stem}.{ext}` at the root is `{stem}.{ext}`, not an absolute path. Without those
    fields the template is as it was (and the image's stem is not worked out: every row of
    a table comes here)."""
    if "{dir}" not in template and "{relpath}" not in template:
        return template
    stem = image.stem
    values = {"dir": folder, "relpath": f"{folder}/{stem}" if folder else stem}
    pieces: list[str] = []
    drop_slash = False
    for literal, name, spec, conversion in Formatter().parse(template):
        literal = literal.replace("{", "{{").replace("}", "}}")
        if drop_slash and literal.startswith("/"):
            literal = literal[1:]
        pieces.append(literal)
        drop_slash = False
        if name is None:
            continue
        if name in values:
            pieces.append(values[name].replace("{", "{{").replace("}", "}}"))
            drop_slash = name == "dir" and not folder
        else:
            pieces.append(
                "{" + name + (f"!{conversion}" if conversion else "")
                + (f":{spec}" if spec else "") + "}"
            )  # fmt: skip
    return "".join(pieces)


def _folder_under(path: Path, root: Path) -> str:
    """The image's folder relative to `root`, with `/` separators; "" at the root."""
    try:
        relative = path.parent.relative_to(root)
    except ValueError:  # a symlink resolved elsewhere: no folder to mirror
        return ""
    return "" if relative == Path() else relative.as_posix()


def _merge(defaults: JobFields, entry: JobFields) -> dict[str, Any]:
    """A job's own value wins; params merge key by key."""
    merged = defaults.model_dump(exclude_none=True)
    own = entry.model_dump(exclude_none=True)
    params = {**merged.get("params", {}), **own.get("params", {})}
    merged.update(own)
    merged["params"] = params
    return merged


def _pick_provider(
    name: Any, profiles: Mapping[str, ProviderProfile], fail: Any
) -> ProviderProfile:
    if name is None:
        if len(profiles) == 1:
            return next(iter(profiles.values()))
        raise fail("provider", f"required when there are several providers ({', '.join(profiles)})")
    if name not in profiles:
        raise fail("provider", f"no provider profile named {name!r} (have: {', '.join(profiles)})")
    return profiles[name]


def _absolute(path: Path) -> Path:
    """The real path where there is one; a symlink loop (RuntimeError in Python 3.11) or an
    unreadable folder leaves it as written, for pre-flight to fail that job alone."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        return Path(os.path.normpath(path.absolute()))


# Most alternatives one pattern's braces may expand to: `{a,b}{c,d}...` grows fast.
MAX_BRACE_ALTERNATIVES = 1000


def expand_braces(pattern: str) -> list[str]:
    """`photos/*.{png,jpg}` → `photos/*.png`, `photos/*.jpg`: the shell's brace alternatives
    (several groups, nested ones too), which Python's glob does not have. A group without a
    comma stays as written, as in the shell. ValueError for unbalanced braces, or too many
    alternatives."""
    depth, start = 0, 0
    for i, char in enumerate(pattern):
        if char == "{":
            depth, start = depth + 1, (i if depth == 0 else start)
        elif char == "}":
            if depth == 0:
                raise ValueError("has a } without its {")
            depth -= 1
            if depth == 0 and len(parts := _top_level_parts(pattern[start + 1 : i])) > 1:
                head, tail = pattern[:start], pattern[i + 1 :]
                found: dict[str, None] = {}
                for part in parts:
                    for alternative in expand_braces(head + part + tail):
                        found[alternative] = None
                        if len(found) > MAX_BRACE_ALTERNATIVES:
                            raise ValueError(
                                f"expands to more than {MAX_BRACE_ALTERNATIVES} patterns"
                            )
                return list(found)
    if depth:
        raise ValueError("has a { without its }")
    return [pattern]


def _top_level_parts(inner: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in inner:
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        current += char
    return [*parts, current]


def _is_pattern(pattern: str) -> bool:
    return glob.has_magic(pattern) or len(expand_braces(pattern)) > 1


def _glob_root(pattern: str, base: Path) -> Path:
    """The folder a pattern's matches are relative to for `{dir}`: its leading parts that
    hold no wildcard and no brace (`shoots/**/*.png` → `shoots`)."""
    parts = PurePosixPath(pattern).parts[:-1]
    fixed = []
    for part in parts:
        if glob.has_magic(part) or "{" in part:
            break
        fixed.append(part)
    return _absolute(base / Path(*fixed).expanduser()) if fixed else _absolute(base)


def _table_reader(
    index: int,
    source: TableSource,
    doc: Document,
    profiles: Mapping[str, ProviderProfile],
    base: Path,
    file: str,
) -> tuple[TableReader, str]:
    """How to read one draft per row of a `jobs_from:` table, in row order, and the
    profile its rows use. What does not depend on the rows (the table's kind, profile,
    model, output name, prompt) is checked now; each row when it is read. The profile,
    model and params are those of `defaults:` plus the row's own params columns; they are
    checked once per distinct combination, not once per row."""
    field = f"jobs_from[{index}]"
    table = _absolute(base / source.table)
    tables.kind_of(table, file, f"{field}.table")
    defaults = doc.defaults.model_dump(exclude_none=True)

    def fail(where: str, message: str) -> ManifestError:
        return ManifestError(message, file=file, field=f"{field}.{where}")

    provider = _pick_provider(defaults.get("provider"), profiles, fail)
    dialect = dialect_named(provider.dialect)
    model = defaults.get("model") or dialect.default_model
    if problem := dialect.check_model(model):
        raise fail("model", problem)
    output_name = defaults.get("output_name") or DEFAULT_OUTPUT_NAME
    if problem := _check_template(output_name):
        raise fail("output_name", problem)
    if source.prompt is None and not str(defaults.get("prompt") or "").strip():
        raise fail("prompt", "name the prompt's column, or give defaults.prompt")
    # A table without a mask column takes `defaults.mask` (relative to the manifest), as a
    # `jobs:` entry would; a row's own mask cell wins.
    mask_template, mask_optional = _mask_setting(defaults)
    if mask_template and glob.has_magic(mask_template):
        raise fail("mask", "cannot be a glob; use {stem} to pair each image with its mask")
    param_columns = dict(source.params or {})
    needed = [source.image, *(c for c in (source.prompt, source.mask, source.id) if c)]
    needed += list(param_columns.values())
    rules = _TableRules(
        index, source, table, tuple(needed), provider, model, output_name, defaults,
        param_columns, mask_template, mask_optional, base, file,
    )  # fmt: skip
    return functools.partial(_table_drafts, rules), provider.name


@dataclass(frozen=True, slots=True)
class _TableRules:
    """What every row of one `jobs_from:` table shares."""

    index: int  # its place under `jobs_from:`
    source: TableSource
    table: Path  # absolute
    needed: tuple[str, ...]  # the columns read
    provider: ProviderProfile
    model: str
    output_name: str
    defaults: Mapping[str, Any]
    param_columns: Mapping[str, str]  # param name -> column
    mask_template: str | None  # `defaults.mask`, for a row without a mask cell
    mask_optional: bool
    base: Path  # the manifest's folder
    file: str  # the manifest, for messages

    def fail(self, where: str, message: str) -> ManifestError:
        return ManifestError(message, file=self.file, field=f"jobs_from[{self.index}].{where}")


def _table_drafts(rules: _TableRules) -> Iterator[Draft]:
    source, table, defaults = rules.source, rules.table, rules.defaults
    dialect = dialect_named(rules.provider.dialect)
    entry = TABLE_ENTRIES + rules.index  # `jobs_from[index]` in messages (see `entry_label`)
    shared_params = dict(defaults.get("params") or {})
    checked: dict[str, str | None] = {}  # params' JSON -> the problem with them, if any
    cells = tables.CellReader(table)
    for number, row in tables.read_rows(table, rules.needed):

        def bad(column: str, message: str, row: Mapping[str, Any] = row, at: int = number) -> Draft:
            # The row's id only where it is told (shown() for every row was 2 % of a sync).
            row_id = f" (id {shown(row[source.id])})" if source.id and row.get(source.id) else ""
            where = f"row {at}{row_id}"
            problem = ManifestError(message, file=str(table), field=f"{where}, column {column!r}")
            return Draft(
                entry=entry, image=table, mask=None, prompt="", provider=rules.provider,
                model=rules.model, params=shared_params, output_name=rules.output_name,
                row=(rules.index, at), problem=str(problem),
            )  # fmt: skip

        cells.digests.clear()
        image = cells.image(row.get(source.image), number, source.image)
        if isinstance(image, str):
            yield bad(source.image, image)
            continue
        mask = None
        if source.mask and row.get(source.mask) is not None:
            cell = cells.image(row[source.mask], number, source.mask)
            if isinstance(cell, str):
                yield bad(source.mask, cell)
                continue
            mask = cell
        elif rules.mask_template is not None:  # `defaults.mask`, e.g. masks/{stem}.png
            mask = _mask_path(rules.mask_template, image, "", rules.base, rules.fail)
            if rules.mask_optional and not os.path.lexists(mask):
                mask = None  # an optional mask that is not there: an edit without one
        prompt = row.get(source.prompt) if source.prompt else defaults.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            yield bad(source.prompt or "prompt", f"a prompt is required, got {shown(prompt)}")
            continue
        own = {n: row[c] for n, c in rules.param_columns.items() if row.get(c) is not None}
        params = {**shared_params, **own} if own else shared_params  # shared: never mutated
        signature = json.dumps(own, sort_keys=True, default=str) if own else ""
        if signature not in checked:
            found_problem = dialect.check_params(params)
            checked[signature] = (
                f"{found_problem[0]}: {found_problem[1]}" if found_problem else None
            )
        if (problem := checked[signature]) is not None:
            name = problem.split(":", 1)[0]
            yield bad(rules.param_columns.get(name, f"params.{name}"), problem)
            continue
        yield Draft(
            entry=entry,
            image=image,
            mask=mask,
            prompt=prompt,
            provider=rules.provider,
            model=rules.model,
            params=params,
            output_name=fill_folder_fields(rules.output_name, "", image),
            row=(rules.index, number),
            carried=tuple(cells.digests.items()),
        )


def _output_folder(written: str, base: Path, file: str) -> OutputPlace:
    """`output_dir` as written: a folder (relative to the manifest) or an object store URL."""
    scheme, sep, rest = written.partition("://")
    if not sep:
        return _absolute(base / written)
    if not is_object_url(written):
        schemes = ", ".join(f"{s}://" for s in OBJECT_SCHEMES)
        raise ManifestError(
            f"{scheme}:// is not a place outputs can go; use a folder or {schemes}",
            file=file,
            field="output_dir",
        )
    if not rest.split("/", 1)[0]:
        raise ManifestError(f"{shown(written)} names no bucket", file=file, field="output_dir")
    return output_place(written)


def _image_paths(
    pattern: str, base: Path, fail: Any, output_dir: OutputPlace
) -> list[tuple[Path, Path]]:
    """Each image with the folder `{dir}` is relative to: an explicit path as it is (its
    own folder); a glob's matches, sorted, never under the output folder (a re-run must
    never pay to edit its own results). Brace alternatives are expanded first."""
    try:
        alternatives = expand_braces(pattern)
    except ValueError as exc:
        raise fail("image", f"the pattern {shown(pattern)} {exc}") from None
    if len(alternatives) == 1 and not glob.has_magic(pattern):
        path = _absolute(base / Path(pattern).expanduser())
        return [(path, path.parent)]
    root = _glob_root(pattern, base)
    found: set[Path] = set()
    for alternative in alternatives:
        full = base / Path(alternative).expanduser()
        if not glob.has_magic(alternative):  # `photos/{a,b}.png`: the files that are there
            hits = [str(full)] if full.is_file() else []
        else:  # glob.glob, not Path.glob: absolute patterns, '**' across the whole pattern
            hits = glob.glob(str(full), recursive=True)  # noqa: PTH207
        found.update(_absolute(Path(hit)) for hit in hits if Path(hit).is_file())
    # Outputs in an object store are never among the files a glob finds.
    local_out = output_dir if isinstance(output_dir, Path) else None
    matches = sorted(p for p in found if local_out is None or not p.is_relative_to(local_out))
    if not matches:
        why = " outside the output folder (output_dir)" if found else ""
        raise fail(
            "image", f"the glob {shown(pattern)} matched no file{why} (searched from {base})"
        )
    return [(path, root) for path in matches]


def _mask_path(template: str, image: Path, folder: str, base: Path, fail: Any) -> Path:
    relpath = f"{folder}/{image.stem}" if folder else image.stem
    try:
        relative = template.format(stem=image.stem, name=image.name, dir=folder, relpath=relpath)
    except (KeyError, IndexError, ValueError) as exc:
        raise fail(
            "mask", f"only {{stem}} {{name}} {{dir}} {{relpath}} may appear in braces ({exc})"
        ) from exc
    return _absolute(base / Path(relative).expanduser())


def _check_template(template: str) -> str | None:
    from runner.files.outputs import check_output_template  # lazy: outputs is an I/O module

    return check_output_template(template, Path("/output-dir-check"))


def _without_known_outputs(
    drafts: tuple[Draft, ...], known_outputs: Collection[str], file: str
) -> tuple[Draft, ...]:
    """Drop what globs matched among earlier outputs (of any manifest, any output folder):
    a re-run must never pay to edit its own results."""
    if not known_outputs:
        return drafts
    kept = tuple(d for d in drafts if d.glob is None or str(d.image) not in known_outputs)
    emptied = {d.entry for d in drafts if d.glob} - {d.entry for d in kept}
    if emptied:
        entry = min(emptied)
        pattern = next(d.glob for d in drafts if d.entry == entry)
        raise ManifestError(
            f"the glob {shown(pattern)} matched only earlier outputs (files the database "
            "records as outputs are never inputs)",
            file=file,
            job=entry,
            field="image",
        )
    return kept
