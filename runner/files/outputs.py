"""Output files: named from the job's template, written whole or not at all.

A reply has been paid for by the time it gets here, so a crash or a full disk must never
leave a half-written file under the final name that a later run would take for a result.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import errno
import functools
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePath
from string import Formatter
from typing import Any

from runner.errors import OutputError, shown
from runner.files.links import LinkLookup
from runner.files.procs import pid_alive
from runner.records import JobSpec, OutputPlace, OutputRef, ReplyImage

TEMP_SUFFIX = ".runner-tmp"
FIELDS = frozenset({"stem", "key", "key8", "index", "ext", "job", "dir", "relpath"})
# {dir} and {relpath} are filled in per job when the manifest is read (see
# manifest/expand.py: `folder_fields`); these samples only serve the template checks.
_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
# Temp files are named `.{pid}-{hex}.runner-tmp`, whatever the final name's length (an older
# runner put the final name in front: `.{name}.{pid}-{hex}.runner-tmp`; swept all the same).
_TEMP_NAME = re.compile(r"\.(?:.+\.)?(\d+)-[0-9a-f]+" + re.escape(TEMP_SUFFIX))
# When a file of the final name exists (another job's, or the user's), the output goes to
# `name~2.ext`, `name~3.ext`, ...: never replaced, both kept.
CLASH_MARK = "~"
MAX_CLASH_SUFFIX = 99_999
MAX_CLASH_SUFFIX_CHARS = len(f"{CLASH_MARK}{MAX_CLASH_SUFFIX}")  # what a name may grow by
_FALLBACK_NAME_MAX = 255  # bytes, where the filesystem does not say
_FALLBACK_PATH_MAX = 4096
_STALE_AFTER_S = 24 * 3600
log = logging.getLogger("runner")
_SAMPLE: dict[str, Any] = {
    "stem": "image",
    "key": "0" * 64,
    "key8": "0" * 8,
    "index": 1,
    "ext": "png",
    "job": 0,
    "dir": "a/b",
    "relpath": "a/b/image",
}


def output_names(spec: JobSpec, images: Sequence[ReplyImage]) -> list[str]:
    """Each image's name relative to the output folder (or prefix), in order; OutputError
    for a bad template or a name that would leave the folder."""
    template = _template_for(spec.output_name, len(images))
    fields = _fields(spec)
    names = []
    for index, image in enumerate(images, start=1):
        ext = _EXTENSIONS.get(image.format, image.format.lower())
        names.append(_usable(spec, _formatted(spec, template, fields, index, ext)))
    return names


def planned_names(spec: JobSpec, likely: str) -> tuple[list[str], list[str]]:
    """(`output_names` for a reply of `likely` format, `possible_names`), each name
    formatted once: the output check asks both of every job of a manifest."""
    count = spec.images_asked
    possible = possible_names(spec, count)
    if likely not in REPLY_FORMATS:
        return output_names(spec, [ReplyImage(b"", likely, 0, 0)] * count), possible
    start = REPLY_FORMATS.index(likely) * count
    return [_usable(spec, name) for name in possible[start : start + count]], possible


def _fields(spec: JobSpec) -> dict[str, Any]:
    return {"stem": spec.image.stem, "key": spec.key, "key8": spec.key8, "job": spec.entry}


def _formatted(spec: JobSpec, template: str, fields: dict[str, Any], index: int, ext: str) -> str:
    try:
        return template.format(**fields, index=index, ext=ext)
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        raise OutputError(f"output name {shown(spec.output_name)} is unusable: {exc}") from exc


def _usable(spec: JobSpec, name: str) -> str:
    problem = _escape_problem(name, spec.output_dir)
    if problem is not None:
        raise OutputError(f"output name {shown(spec.output_name)} {problem}; nothing written")
    return name


def output_paths(spec: JobSpec, images: Sequence[ReplyImage]) -> list[OutputPlace]:
    """Where each image goes, in order; OutputError for a bad template."""
    base = _absolute(spec.output_dir)
    return [base / name for name in output_names(spec, images)]


REPLY_FORMATS = tuple(_EXTENSIONS)  # every format a reply may come back in


def possible_names(spec: JobSpec, count: int) -> list[str]:
    """Every name (relative to the output folder) a reply of `count` images could take,
    whatever format it comes back in (the extension follows the reply, not the request):
    for manifest-time checks, without the filesystem lookups `output_names` makes."""
    template = _template_for(spec.output_name, count)
    fields = _fields(spec)
    if (head := _before_ext(template)) is not None:  # formatted once per image, not per format
        heads = [_formatted(spec, head, fields, index, "") for index in range(1, count + 1)]
        return [name + _EXTENSIONS[fmt] for fmt in REPLY_FORMATS for name in heads]
    return [
        _formatted(spec, template, fields, index, _EXTENSIONS[fmt])
        for fmt in REPLY_FORMATS
        for index in range(1, count + 1)
    ]


@functools.lru_cache(maxsize=64)
def _before_ext(template: str) -> str | None:
    """The template up to a plain `{ext}` that ends it after a "." (`{stem}-{key8}.{ext}`),
    when that is its only `{ext}`: each format's name is then that part plus the extension."""
    if not template.endswith(".{ext}"):
        return None
    parts = list(Formatter().parse(template))
    if [field for _, field, _, _ in parts].count("ext") != 1 or parts[-1][1] != "ext":
        return None
    return template[: -len("{ext}")]


def check_output_template(template: str, output_dir: OutputPlace) -> str | None:
    """For manifest validation: what is wrong with `template`, or None if it is usable."""
    try:
        for count in (1, 2):
            name = _template_for(template, count).format(**_SAMPLE)
            problem = _escape_problem(name, output_dir)
            if problem is not None:
                return f"output name {shown(template)} {problem}"
    except OutputError as exc:
        return str(exc)
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        return f"output name {shown(template)} is unusable: {exc}"
    return None


def _absolute(place: OutputPlace) -> OutputPlace:
    return place.absolute() if isinstance(place, Path) else place


def write_outputs(spec: JobSpec, images: Sequence[ReplyImage]) -> tuple[OutputRef, ...]:
    """Write every image atomically, never over an existing file, and describe what was
    written (a clash keeps both files: the new one under a suffixed name, with a warning)."""
    refs = []
    own_name = names_its_job(spec.output_name)
    base = _local_folder(spec.output_dir)
    for index, (image, name) in enumerate(zip(images, output_names(spec, images), strict=True)):
        wanted = base.absolute() / name
        path = write_new(wanted, image.data, replace_existing=own_name)
        if path != wanted:
            log.warning(
                "%s %s (%s): %s already exists (another job's output, or a file of "
                "yours); kept it, and wrote %s instead",
                spec.origin, spec.image.name, spec.key8, wanted, path.name,
            )  # fmt: skip
        refs.append(OutputRef.of(index + 1, path, image))
    return tuple(refs)


def _local_folder(place: OutputPlace) -> Path:
    if isinstance(place, Path):
        return place
    raise OutputError(f"{place} is not a folder on this machine")  # a wiring bug: say so


def sweep_temp_files(output_dir: Path, is_alive: Callable[[int], bool] = pid_alive) -> int:
    """Remove temp files left by runners that died (or anything over a day old)."""
    removed = 0
    now = time.time()
    for folder, _dirs, files in os.walk(output_dir):
        for name in files:
            match = _TEMP_NAME.fullmatch(name)
            if match is None:
                continue
            path = Path(folder, name)
            try:
                stale = now - path.stat().st_mtime > _STALE_AFTER_S
                if stale or not is_alive(int(match.group(1))):
                    path.unlink()
                    removed += 1
            except OSError:
                # Gone already (another runner swept it) or not ours to remove: housekeeping
                # must never stop a run.
                continue
    return removed


def free_bytes(output_dir: Path) -> int:
    """Free space where the outputs go (one statvfs: cheap enough to ask before each job).
    A folder not made yet is measured at its nearest existing parent."""
    folder = output_dir
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def ensure_writable(output_dir: Path) -> None:
    """Create the folder if needed and prove a file can be made in it; else OutputError."""
    where = output_dir.absolute()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = _file_in_the_way(where)
        reason = f"{blocker} is a file, not a folder" if blocker else _reason(exc)
        raise OutputError(f"cannot create output folder {where}: {reason}") from exc
    probe = where / f".write-test.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write in output folder {where}: {_reason(exc)}") from exc


@functools.lru_cache(maxsize=1024)
def _template_for(template: str, count: int) -> str:
    """The template with "-{index}" added where several images would otherwise collide."""
    try:
        parts = list(Formatter().parse(template))
    except ValueError as exc:
        raise OutputError(f"output name {shown(template)} is not a valid template: {exc}") from exc
    names = [field for _, field, _, _ in parts if field is not None]
    unknown = sorted({n for n in names if n not in FIELDS})
    if unknown:
        known = ", ".join("{" + f + "}" for f in sorted(FIELDS))
        fields = ", ".join("{" + n + "}" for n in unknown)
        raise OutputError(f"output name {shown(template)} has unknown field {fields}; use {known}")
    if count < 2 or "index" in names:
        return template
    chunks = [_chunk(*part) for part in parts]
    # The "." of ".{ext}" ends the literal text that Formatter parses together with {ext}.
    dotted = [i for i, part in enumerate(parts) if part[1] == "ext" and part[0].endswith(".")]
    if not dotted:
        return "".join(chunks) + "-{index}"
    literal, field, spec, conversion = parts[dotted[-1]]
    head = _chunk(literal[:-1], None, None, None)
    chunks[dotted[-1]] = head + "-{index}." + _chunk("", field, spec, conversion)
    return "".join(chunks)


def _chunk(literal: str, field: str | None, spec: str | None, conversion: str | None) -> str:
    """One parsed piece written back as template text, literal braces escaped again."""
    text = literal.replace("{", "{{").replace("}", "}}")
    if field is None:
        return text
    return (
        text
        + "{"
        + field
        + (f"!{conversion}" if conversion else "")
        + (f":{spec}" if spec else "")
        + "}"
    )


_SEPARATORS = re.compile("|".join(re.escape(s) for s in {"/", os.sep, os.altsep or "/"}))


def _escape_problem(name: str, base: OutputPlace) -> str | None:
    """Why `name` may not be written under `base`, or None if it stays inside (an object
    store has no links to follow out: the checks on the name are all there is). Called for
    every job of a manifest: folders are resolved once each (`_resolved`), and a plain name
    costs one lstat."""
    pieces = _SEPARATORS.split(name)
    if not name or "\0" in name:
        return "gives an empty or invalid file name"
    if len(pieces) == 1 and name != "." and name != "..":
        # A plain file name (the common case, checked for every job of a manifest): never
        # absolute, never out of the folder, unless a link of that name is there already.
        if not isinstance(base, Path):
            return None
        # Strings, not Paths: this runs for every job of a 100,000-row table.
        cache = _CACHE.get()
        linked = cache.links.is_link(str(base), name) if cache else (base / name).is_symlink()
        if linked and not (base / name).resolve().is_relative_to(_resolved(base)):
            return f"leads out of the output folder through a link ({name})"
        return None
    if PurePath(name).is_absolute() or PurePath(name).anchor:
        return f"gives an absolute path ({name})"
    if ".." in pieces:
        return f"leads out of the output folder ({name})"
    if pieces[-1] in ("", "."):
        return f"does not end in a file name ({name})"
    if not isinstance(base, Path):
        return None
    root = _resolved(base)
    folder = _resolved(base.joinpath(*pieces[:-1])) if len(pieces) > 1 else root
    target = base.joinpath(*pieces)
    leaves = not folder.is_relative_to(root)
    if not leaves and target.is_symlink():  # the name itself, a link to elsewhere
        leaves = not target.resolve().is_relative_to(root)
    if leaves:
        return f"leads out of the output folder through a link ({name})"
    return None


def _resolved(folder: Path) -> Path:
    """`folder` with its links followed; inside `folders_cached()`, each folder once."""
    cache = _CACHE.get()
    if cache is None:
        return folder.resolve()
    found = cache.resolved.get(folder)
    if found is None:
        found = cache.resolved[folder] = folder.resolve()
    return found


@dataclasses.dataclass(frozen=True, slots=True)
class FolderCache:
    """What one pass over a manifest's output names learns of their folders: each
    folder resolved, and the links in it (`LinkLookup`)."""

    resolved: dict[Path, Path] = dataclasses.field(default_factory=dict)
    links: LinkLookup = dataclasses.field(default_factory=LinkLookup)


_CACHE: contextvars.ContextVar[FolderCache | None] = contextvars.ContextVar(
    "output_folders", default=None
)


@contextlib.contextmanager
def folders_cached(cache: FolderCache | None = None) -> Iterator[None]:
    """Resolve each output folder once, and look for links in it as `LinkLookup` does,
    while checking a whole manifest's names (a job's write, later, looks afresh: a link
    may have changed since). `cache`: one kept from an earlier chunk of the same pass."""
    token = _CACHE.set(cache or FolderCache())
    try:
        yield
    finally:
        _CACHE.reset(token)


# S3 and its kin take keys of up to 1,024 bytes (UTF-8), whatever their segments' lengths.
OBJECT_KEY_MAX = 1024


def path_limits(folder: OutputPlace) -> tuple[int, int]:
    """(longest file name, longest path) in bytes where `folder` is (or will be made)."""
    if not isinstance(folder, Path):
        # The whole URL may be as long as the bucket's part plus the longest key.
        return OBJECT_KEY_MAX, len(folder.bucket_url.encode()) + 1 + OBJECT_KEY_MAX + 1
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    limits = []
    for name, fallback in (
        ("PC_NAME_MAX", _FALLBACK_NAME_MAX),
        ("PC_PATH_MAX", _FALLBACK_PATH_MAX),
    ):
        try:
            limits.append(int(os.pathconf(existing, name)))
        except (OSError, ValueError, AttributeError):
            limits.append(fallback)
    return limits[0], limits[1]


def length_problem(path: OutputPlace, name_max: int, path_max: int) -> str | None:
    """Why `path` could not be written (with room for a clash suffix), or None."""
    name = os.fsencode(path.name)
    if len(name) + MAX_CLASH_SUFFIX_CHARS > name_max:
        return (
            f"gives a file name of {len(name)} bytes ({shown(path.name)}); the output folder "
            f"allows {name_max - MAX_CLASH_SUFFIX_CHARS} (a {name_max}-byte limit, less room "
            "for a suffix)"
        )
    whole = os.fsencode(str(path))
    if len(whole) + MAX_CLASH_SUFFIX_CHARS >= path_max:
        return f"gives a path of {len(whole)} bytes; the system allows {path_max - 1}"
    return None


def names_its_job(template: str) -> bool:
    """Whether names from `template` carry the job's key: a file of such a name can only be
    this job's own earlier result (written, then the runner died before recording it)."""
    try:
        fields = {field for _, field, _, _ in Formatter().parse(template) if field}
    except ValueError:
        return False
    return bool(fields & {"key", "key8"})


def write_new(path: Path, data: bytes, *, replace_existing: bool = False) -> Path:
    """Write `data` whole to `path`, or to `path`'s first free clash name (`a~2.png`, ...)
    if a file is there already; returns where it went. Placed with a hard link, which fails
    rather than replace: atomic against another runner writing the same name. With
    `replace_existing` (the name is the job's own), a file already there is replaced."""
    temp = _temp_beside(path)
    try:
        _write_synced(temp, data)
        if replace_existing:
            temp.replace(path)
            final = path
        else:
            final = _place_without_replacing(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {_reason(exc)}") from exc
        raise
    _fsync_dir(final.parent)
    return final


def _clash_name(path: Path, number: int) -> Path:
    return path.with_name(f"{path.stem}{CLASH_MARK}{number}{path.suffix}")


def _place_without_replacing(temp: Path, path: Path) -> Path:
    for number in range(1, MAX_CLASH_SUFFIX + 1):
        candidate = path if number == 1 else _clash_name(path, number)
        try:
            os.link(temp, candidate)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            if not _reserve(candidate):
                continue
            temp.replace(candidate)  # over our own empty reservation only
            return candidate
        temp.unlink()
        return candidate
    raise OutputError(f"cannot write {path}: {MAX_CLASH_SUFFIX:,} files of that name exist")


# Filesystems without hard links (FAT, some network mounts) answer link() with these.
_NO_HARD_LINKS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}
)


def _reserve(candidate: Path) -> bool:
    """Claim `candidate` with an empty file created exclusively; False if taken."""
    try:
        os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:
        return False
    return True


def _temp_beside(path: Path) -> Path:
    return path.with_name(f".{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _write_synced(temp: Path, data: bytes) -> None:
    temp.parent.mkdir(parents=True, exist_ok=True)
    # os.open with 0o666 leaves the permissions to the umask, as for any new file;
    # tempfile would make them owner-only.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never
    part: a temp file beside it (so the replace is a rename), fsynced, renamed, and the
    folder fsynced. Any failure removes the temp file; OSErrors become OutputError."""
    write_new(path, data, replace_existing=True)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable where the platform allows opening a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        # Some filesystems refuse fsync on a directory; the file's own data is synced anyway.
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _file_in_the_way(path: Path) -> Path | None:
    for parent in (path, *path.parents):
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
