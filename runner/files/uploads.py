"""An input's bytes read again from its file when its request is sent, and checked.

Pre-flight reads and checks each input, then lets its bytes go (`ImagePart.source`): a
request may wait for its turn, its retries and its reply, and C of them waiting with their
images in memory made memory grow with concurrency. Sending reads the file again, a chunk
at a time, and hashes what it sends: the last chunk goes out only once the whole file is
known to have the size and sha256 that pre-flight checked and the job was keyed by. A file
changed since raises InputChanged before that last chunk, so the provider never receives
the request whole: nothing it could act on or bill.

The exception is a request's first send: the bytes pre-flight has just read and hashed are
the job's bytes, and reading and hashing the file again a moment later cost a tenth of a
job's CPU. So a run keeps them for that send (`ReadAhead`), up to a run-wide allowance that
keeps memory flat however many requests wait; the send lets them go as it finishes, and
any later send (a retry, httpx rewinding) reads the file again, checked as above.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import BinaryIO

from runner.errors import InputChanged
from runner.manifest.digests import open_regular
from runner.records import HeldBytes, ImagePart, InputFile

# Bytes per chunk handed to httpx, which asks for 64 KB at a time. Each chunk it sends costs
# a turn of the event loop, a socket write and a wait for the write buffer to drain, per
# request: a 1.5 MB image went out in 23 of them. In chunks of this size a job took about a
# tenth less CPU at 16 requests at once (bench/README.md), and what a request holds in
# flight is still one chunk.
SEND_CHUNK_BYTES = 256 * 1024


# What pre-flight may keep in memory across a run for first sends (`ReadAhead`): at 16
# requests of 1.5 MB images, 24 MB; beyond it, a send reads its file again. (At 128
# requests out, 64 MB kept the run 36 MB larger throughout and saved no time:
# bench/README.md.)
READ_AHEAD_BYTES = 32 * 1024 * 1024


class ReadAhead:
    """A run's allowance of checked input bytes kept for their first send."""

    def __init__(self, limit: int = READ_AHEAD_BYTES) -> None:
        self._room = limit
        self._lock = threading.Lock()  # pre-flight of a large input runs in a thread

    def hold(self, data: bytes) -> Held | None:
        """Keep `data` if the allowance has room for it; None if not."""
        with self._lock:
            if len(data) > self._room:
                return None
            self._room -= len(data)
        return Held(data, self)

    @property
    def room(self) -> int:
        return self._room

    def _give_back(self, size: int) -> None:
        with self._lock:
            self._room += size


class Held:
    """Checked bytes kept for one send: the first `take` gets them, and the allowance they
    used is free again."""

    __slots__ = ("_data", "_owner")

    def __init__(self, data: bytes, owner: ReadAhead) -> None:
        self._data: bytes | None = data
        self._owner = owner

    def take(self) -> bytes | None:
        data, self._data = self._data, None
        if data is not None:
            self._owner._give_back(len(data))
        return data


def part_bytes(field: str, part: ImagePart) -> bytes:
    """The part's whole bytes (for a body that needs them at once: JSON, a batch upload),
    checked as `FileUpload` checks them; blocking, so large ones belong in a thread."""
    if part.source is None:
        return part.data
    if part.held is not None and (data := part.held.take()) is not None:
        return data
    with FileUpload(field, part.source) as upload:
        return upload.read()


class FileUpload:
    """A file object for httpx's multipart upload: the file's bytes in order, hashed as they
    go, the last of them held back until they are known to be the bytes that were checked.

    httpx asks for its length (`seek` to the end, `tell`) for the Content-Length, then
    rewinds (`seek(0)`) and reads; every rewind starts the file and its hash afresh. A
    `read(size)` gives at least SEND_CHUNK_BYTES where the file has them, more than httpx's
    64 KB asks for (httpx sends whatever a read gives, as it comes).

    `held`: the bytes pre-flight checked, for the first pass that reads; they were hashed
    then, so that pass reads neither the file nor the hash. A rewind drops them."""

    def __init__(self, field: str, source: InputFile, held: HeldBytes | None = None) -> None:
        self._field = field
        self._source = source
        self._held = held
        self._memory: bytes | None = None  # this pass's bytes, taken from `held`
        self._file: BinaryIO | None = None
        self._hash = hashlib.sha256()
        self._position = 0

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._source.size}
        position = target[whence] + offset
        if position == 0:
            # Read from the start again: a new pass, a new hash; a pass begun from held
            # bytes starts over from the file.
            self.close()
            self._hash = hashlib.sha256()
        elif position != self._position and position != self._source.size:
            raise io.UnsupportedOperation("an upload is read from its start, in order")
        self._position = position
        return position

    def read(self, size: int = -1) -> bytes:
        left = self._source.size - self._position
        if left <= 0:
            return b""
        want = left if size < 0 else min(max(size, SEND_CHUNK_BYTES), left)
        if self._position == 0 and self._held is not None:
            self._memory, self._held = self._held.take(), None
        if self._memory is not None:
            return self._read_memory(self._memory, want)
        if self._file is None:
            self._file = self._open()
        data = self._file.read(want)
        while len(data) < want and (more := self._file.read(want - len(data))):
            data += more  # a short read is not the end: only an empty one is
        if len(data) < want:
            self._refuse(f"is shorter than when it was checked ({self._source.size:,} bytes)")
        self._hash.update(data)
        self._position += len(data)
        if self._position == self._source.size:  # the last chunk: check before it goes
            if self._file.read(1):
                self._refuse(f"is longer than when it was checked ({self._source.size:,} bytes)")
            if self._hash.hexdigest() != self._source.sha256.lower():
                self._refuse("changed since the job was queued; run again to queue the new version")
            self.close()
        return data

    def _read_memory(self, memory: bytes, want: int) -> bytes:
        start = self._position
        self._position += want
        if self._position == self._source.size:
            self._memory = None  # sent: let go at once
            return memory[start:]
        return memory[start : self._position]

    def close(self) -> None:
        self._memory = None  # a request cut short lets its held bytes go too
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> FileUpload:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _open(self) -> BinaryIO:
        try:
            return open_regular(self._source.path)  # never blocks on a FIFO swapped in
        except OSError as exc:
            raise InputChanged(
                self._field,
                f"cannot read {self._source.path} again to send it: {exc.strerror or exc}",
            ) from None

    def _refuse(self, why: str) -> None:
        self.close()
        raise InputChanged(self._field, f"{self._source.path} {why} (not sent)")


def upload_body(field: str, part: ImagePart) -> bytes | FileUpload:
    """What httpx's multipart takes for the part: its bytes, or its file read as it goes."""
    return part.data if part.source is None else FileUpload(field, part.source, part.held)


def close_uploads(files: Iterable[tuple[str, tuple[str, object, str]]]) -> None:
    """Close the files of httpx `files=` fields that `upload_body` made: a request cut
    short (a timeout, a cancelled run) leaves them open otherwise."""
    for _, (_, body, _) in files:
        if isinstance(body, FileUpload):
            body.close()
