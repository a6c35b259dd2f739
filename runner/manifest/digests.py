"""Content digests of input files, cached by (path, size, mtime) so a re-read manifest of
thousands of images only hashes the files that changed."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1024 * 1024
_HASH_THREADS = 4  # hashlib releases the GIL on large buffers, so threads overlap disk and CPU
# Files smaller than this are hashed in the calling thread: for a thumbnail-sized input the
# thread pool's hand-off costs more than the hashing (measured: 20,000 8x8 PNGs, 1.5 s of
# lock waits through the pool).
_INLINE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class DigestEntry:
    path: str
    size: int
    mtime_ns: int
    sha256: str


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading, never blocking: a FIFO or a device (`/dev/zero`
    reads forever) is refused with an OSError, even if one was swapped in after a stat."""
    fd, _ = _regular_fd(path)
    try:
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _regular_fd(path: Path) -> tuple[int, os.stat_result]:
    """`open_regular`'s descriptor, with what fstat says of the file it opened."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def _read_small(path: Path) -> bytes:
    """Up to _INLINE_BYTES of a regular file, as `open_regular` opens it, without a
    buffered file object (making one cost more than reading a thumbnail)."""
    fd, info = _regular_fd(path)
    return _read_open(fd, info)


def _read_open(fd: int, info: os.stat_result) -> bytes:
    """`_read_small` of a descriptor `_regular_fd` opened, with what fstat said; closes it."""
    try:
        # Its size and one byte: a file that size is read whole in one call (no second read
        # to find its end); one that grew, or came up short, is read on to its end.
        first = os.read(fd, min(info.st_size + 1, _INLINE_BYTES))
        if len(first) == info.st_size:
            return first
        parts = [first]
        left = _INLINE_BYTES - len(first)
        while left and (part := os.read(fd, left)):
            parts.append(part)
            left -= len(part)
        return b"".join(parts)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Digester:
    """Hashes files, reusing `known` entries whose size and mtime still match.

    `keep_bytes`: small files hashed now are kept whole in `read` (by path, up to that many
    bytes in all), for a caller about to read them again (validate's checks: a table of
    100,000 thumbnails was read twice)."""

    def __init__(
        self, known: Mapping[str, DigestEntry] | None = None, *, keep_bytes: int = 0
    ) -> None:
        self._known = dict(known or {})
        self.fresh: list[DigestEntry] = []  # entries hashed now, for the caller to persist
        self.read: dict[Path, bytes] = {}
        self._room = keep_bytes

    def digest_many(self, paths: Iterable[Path]) -> dict[Path, str | None]:
        """sha256 per path; None where the file is missing or unreadable (the job fails later,
        with the precise reason, at pre-flight)."""
        unique = list(dict.fromkeys(paths))
        results: dict[Path, str | None] = {}
        to_hash: list[tuple[Path, os.stat_result]] = []
        for path in unique:
            cached = self._known.get(str(path))
            if cached is None:
                results[path] = self._hash_fresh(path, to_hash)
                continue
            try:
                info = path.stat()
            except OSError:  # missing, unreadable, a symlink loop: pre-flight says which
                results[path] = None
                continue
            if not stat.S_ISREG(info.st_mode):  # a device, a FIFO, a folder: never read for a key
                results[path] = None
                continue
            if cached.size == info.st_size and cached.mtime_ns == info.st_mtime_ns:
                results[path] = cached.sha256
            else:
                to_hash.append((path, info))
        small = [item for item in to_hash if item[1].st_size < _INLINE_BYTES]
        large = [item for item in to_hash if item[1].st_size >= _INLINE_BYTES]
        for item in small:
            results[item[0]] = self._hash_small(item)
        if large:
            with ThreadPoolExecutor(max_workers=_HASH_THREADS) as executor:
                hashed = executor.map(self._hash_one, large)
                for (path, _), digest in zip(large, hashed, strict=True):
                    results[path] = digest
        return results

    def _hash_fresh(self, path: Path, to_hash: list[tuple[Path, os.stat_result]]) -> str | None:
        """A file with no digest on record, opened straight away without a stat first
        (fstat says what stat would; a quarter of hashing a thumbnail went to that second
        call): a small one hashed now, a large one left in `to_hash` for the threads (None
        until then). None too for one that cannot be opened as a regular file: missing,
        unreadable, a FIFO, a device, a symlink loop (pre-flight says which)."""
        try:
            fd, info = _regular_fd(path)
        except OSError:
            return None
        if info.st_size >= _INLINE_BYTES:
            os.close(fd)
            to_hash.append((path, info))
            return None
        try:
            data = _read_open(fd, info)
        except OSError:
            return None
        return self._hash_read(path, info, data)

    def _hash_small(self, item: tuple[Path, os.stat_result]) -> str | None:
        """A file under _INLINE_BYTES, read in one go; kept in `read` while there is room."""
        path, info = item
        try:
            data = _read_small(path)
        except OSError:
            return None
        return self._hash_read(path, info, data)

    def _hash_read(self, path: Path, info: os.stat_result, data: bytes) -> str | None:
        if len(data) >= _INLINE_BYTES:  # grown since its stat: hashed as a large file is
            return self._hash_one((path, info))
        if 0 < len(data) <= self._room:
            self.read[path] = data
            self._room -= len(data)
        return self._remember(path, info, hashlib.sha256(data).hexdigest())

    def _hash_one(self, item: tuple[Path, os.stat_result]) -> str | None:
        path, info = item
        try:
            digest = sha256_file(path)
        except OSError:
            return None
        return self._remember(path, info, digest)

    def _remember(self, path: Path, info: os.stat_result, digest: str) -> str:
        entry = DigestEntry(str(path), info.st_size, info.st_mtime_ns, digest)
        self._known[entry.path] = entry
        self.fresh.append(entry)  # list.append is atomic under the GIL
        return digest
