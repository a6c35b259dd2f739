"""Outputs in an object store: `output_dir: s3://bucket/prefix`, one place that every host
of a fleet writes to and `report` reads back, through obstore.

Credentials and the endpoint come from the environment, as for the AWS tools:
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, and for an
S3-compatible server (MinIO, Ceph, R2) AWS_ENDPOINT_URL, with AWS_ALLOW_HTTP=true where it
speaks plain http. Nothing of them is kept by the runner.

The guarantees are the disk's. A PUT is atomic: an object appears whole or not at all, so
no temp file is needed. A conditional PUT (`If-None-Match: *`) never replaces an object that
is there, whoever wrote it: a clash is kept as `name~2.png`, as on disk. Only a name that
carries the job's key replaces, since such an object can only be this job's own earlier
result (written, then the runner died before recording it).
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

from runner.errors import OutputError
from runner.files.outputs import (
    CLASH_MARK,
    MAX_CLASH_SUFFIX,
    TEMP_SUFFIX,
    names_its_job,
    output_names,
)
from runner.records import JobSpec, ObjectURL, OutputRef, ReplyImage
from runner.redact import register_secret

if TYPE_CHECKING:
    from obstore.store import ObjectStore

SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
INSTALL_HINT = "pip install 'runner[s3]' (or -e '.[s3]' in a checkout)"
# obstore's errors carry the whole HTTP exchange over many lines; the first says what
# happened, and the XML body after the status says it again.
_BODY_AFTER_STATUS = re.compile(r"(status code: \d{3}[^:<]*):.*$")


def open_store(bucket_url: str) -> ObjectStore:
    """A client for one bucket, configured from the environment (see the module's text)."""
    try:
        from obstore.store import from_url
    except ImportError:
        raise OutputError(
            f"output_dir {bucket_url}/… needs the object store client: {INSTALL_HINT}"
        ) from None
    for name in SECRET_ENV:  # obstore never says them; should anything, it is redacted
        if secret := os.environ.get(name):
            register_secret(secret)
    try:
        store: ObjectStore = from_url(bucket_url)
    except Exception as exc:  # obstore raises its own tree and ValueError for bad config
        raise OutputError(f"cannot open {bucket_url}: {one_line(exc)}") from None
    return store


class ObjectOutputs:
    """Writes and reads outputs in object stores, one client per bucket (shared by the
    worker threads: obstore's clients are thread-safe)."""

    def __init__(self, opener: Callable[[str], ObjectStore] = open_store) -> None:
        self._open = opener
        self._stores: dict[str, ObjectStore] = {}
        self._lock = threading.Lock()

    def write(self, spec: JobSpec, images: Sequence[ReplyImage]) -> tuple[OutputRef, ...]:
        """Each image as one object, never over another's (see the module's text)."""
        folder = spec.output_dir
        if not isinstance(folder, ObjectURL):
            raise OutputError(f"{folder} is not an object store URL")  # a wiring bug: say so
        replace = names_its_job(spec.output_name)
        refs = []
        for index, (image, name) in enumerate(
            zip(images, output_names(spec, images), strict=True), start=1
        ):
            where = self.put_new(folder / name, image.data, replace_existing=replace)
            refs.append(OutputRef.of(index, where, image))
        return tuple(refs)

    def put_new(
        self, where: ObjectURL, data: bytes, *, replace_existing: bool = False
    ) -> ObjectURL:
        """Put `data` at `where`, or at its first free clash name; returns where it went."""
        import obstore
        from obstore.exceptions import AlreadyExistsError

        store = self._store(where)
        mode: Literal["create", "overwrite"] = "overwrite" if replace_existing else "create"
        for number in range(1, MAX_CLASH_SUFFIX + 1):
            candidate = where if number == 1 else _clash_name(where, number)
            try:
                obstore.put(store, candidate.key, data, mode=mode)
            except AlreadyExistsError:
                continue
            except Exception as exc:
                raise OutputError(f"cannot write {candidate}: {one_line(exc)}") from None
            return candidate
        raise OutputError(f"cannot write {where}: {MAX_CLASH_SUFFIX:,} objects of that name exist")

    def read(self, where: ObjectURL) -> bytes:
        """The object's bytes; OutputError (one line) when it cannot be had."""
        import obstore

        try:
            return bytes(obstore.get(self._store(where), where.key).bytes())
        except OutputError:
            raise
        except Exception as exc:
            raise OutputError(f"cannot read {where}: {one_line(exc)}") from None

    def ensure_writable(self, folder: ObjectURL) -> None:
        """Prove an object can be made under `folder` (and removed again); else OutputError
        naming the bucket and why: before a run pays for anything."""
        import obstore

        probe = folder / f".write-test.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"
        store = self._store(probe)
        try:
            obstore.put(store, probe.key, b"", mode="create")
            obstore.delete(store, probe.key)
        except Exception as exc:
            raise OutputError(f"cannot write in output folder {folder}: {one_line(exc)}") from None

    def _store(self, where: ObjectURL) -> ObjectStore:
        with self._lock:
            store = self._stores.get(where.bucket_url)
            if store is None:
                store = self._stores[where.bucket_url] = self._open(where.bucket_url)
            return store


def _clash_name(where: ObjectURL, number: int) -> ObjectURL:
    stem, dot, suffix = where.name.rpartition(".")
    name = f"{stem}{CLASH_MARK}{number}.{suffix}" if dot else f"{suffix}{CLASH_MARK}{number}"
    return ObjectURL(where.url[: -len(where.name)] + name)


def one_line(exc: BaseException) -> str:
    """An obstore error as one line: what failed and the HTTP status, not the exchange."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return _BODY_AFTER_STATUS.sub(r"\1", first).rstrip(": ")
