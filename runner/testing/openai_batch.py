"""OpenAI's Files and Batch APIs as the fake plays them (`FakeProvider.batch`).

The shapes follow OpenAI's reference: `POST /v1/files` (multipart `purpose`, `file`) answers
a file object; `POST /v1/batches` takes `{input_file_id, endpoint, completion_window,
metadata}` and answers a batch object whose `status` moves validating → in_progress →
completed (or failed, expired, cancelling → cancelled); each finished request is one line of
the output file, `{id, custom_id, response: {status_code, request_id, body}, error}`, and
each request that did not run (expired, cancelled) or was refused is a line of the error
file. Lines are processed `delay` seconds after the batch is created, when a client next
asks; only lines that produce images are billed (`FakeProvider.paid`).

Faults a test sets before the batch is created:
- `expire_after`: process that many lines, then expire the batch (the rest `batch_expired`);
- `line_faults`: custom_id or line index -> a live fault name (`rate_limit`, `bad_request`,
  `quota_429`, `server_error`, ...): that line answers as the live endpoint would;
- `fail_validation`: the next batch fails validation (`errors.data[]`, no lines run);
- `junk_lines`: the output file also has a duplicate line and an unknown custom_id;
- `payment_on_upload`: `POST /v1/files` answers 402 as the live endpoint's payment fault;
- `refused_purposes`: uploads with these purposes answer 400 naming the purpose;
- `create_delay`: the batch is created at once, its answer sent this many seconds later
  (a client killed meanwhile never hears of it).
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runner.testing.imaging import digest, edit
from runner.testing.imaging import fingerprint as make_fingerprint

if TYPE_CHECKING:
    from runner.testing.openai import FakeProvider

ENDPOINT = "/v1/images/edits"
MAX_INPUT_LINES = 50_000
FILE_TTL_S = 30 * 24 * 3600  # batch files: OpenAI keeps them 30 days unless told otherwise


@dataclass
class FakeFile:
    id: str
    purpose: str
    filename: str
    data: bytes
    created_at: int
    deleted: bool = False

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "expires_at": self.created_at + FILE_TTL_S,
            "filename": self.filename,
            "purpose": self.purpose,
        }


@dataclass
class FakeBatch:
    id: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str]
    created_at: float
    ready_at: float
    expire_after: int | None
    line_faults: dict[str | int, str]
    junk_lines: bool
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    counts: dict[str, int] = field(
        default_factory=lambda: {"total": 0, "completed": 0, "failed": 0}
    )
    ended_at: float | None = None

    def public(self) -> dict[str, Any]:
        created = int(self.created_at)
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": ENDPOINT,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": created,
            "expires_at": created + 24 * 3600,
            "completed_at": int(self.ended_at)
            if self.status == "completed" and self.ended_at
            else None,
            "request_counts": dict(self.counts),
            "metadata": self.metadata or None,
        }


class FakeBatchAPI:
    """The files and batches one FakeProvider keeps (thread-safe: the server is threaded)."""

    def __init__(self, provider: FakeProvider) -> None:
        self._provider = provider
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self.files: dict[str, FakeFile] = {}
        self.batches: dict[str, FakeBatch] = {}
        self.delay = 0.0
        self.expire_after: int | None = None
        self.line_faults: dict[str | int, str] = {}
        self.fail_validation = False
        self.junk_lines = False
        self.payment_on_upload = False
        self.create_delay = 0.0  # seconds between creating a batch and answering its POST
        # Upload purposes refused with a 400 naming the purpose (a provider that wants another).
        self.refused_purposes: set[str] = set()
        # Every line's image, instead of an edit of its input (benchmarks: big replies).
        self.reply_png: bytes | None = None
        self.batches_created = 0
        self.lines_billed = 0

    # ------------------------------------------------------------------------ files
    def upload(self, purpose: str, filename: str, data: bytes) -> dict[str, Any]:
        with self._lock:
            file = FakeFile(f"file-{next(self._ids)}", purpose, filename, data, int(time.time()))
            self.files[file.id] = file
            return file.public()

    def file(self, file_id: str) -> FakeFile | None:
        with self._lock:
            found = self.files.get(file_id)
            return found if found is not None and not found.deleted else None

    def delete(self, file_id: str) -> bool:
        with self._lock:
            found = self.file(file_id)
            if found is None:
                return False
            found.deleted = True
            found.data = b""
            return True

    def live_files(self, purpose: str | None = None) -> list[FakeFile]:
        with self._lock:
            return [
                f for f in self.files.values() if not f.deleted and purpose in (None, f.purpose)
            ]

    # ---------------------------------------------------------------------- batches
    def create(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            file_id = body.get("input_file_id")
            source = self.file(str(file_id))
            if body.get("endpoint") != ENDPOINT:
                return 400, _error(f"endpoint must be {ENDPOINT}", "invalid_request_error")
            if body.get("completion_window") != "24h":
                return 400, _error("completion_window must be 24h", "invalid_request_error")
            if source is None or source.purpose != "batch":
                return 400, _error(f"input file {file_id} not found", "invalid_request_error")
            metadata = body.get("metadata") or {}
            now = time.time()
            batch = FakeBatch(
                id=f"batch_{next(self._ids)}",
                input_file_id=source.id,
                completion_window="24h",
                metadata={str(k): str(v) for k, v in metadata.items()},
                created_at=now,
                ready_at=now + self.delay,
                expire_after=self.expire_after,
                line_faults=dict(self.line_faults),
                junk_lines=self.junk_lines,
            )
            batch.counts["total"] = source.data.count(b"\n") + (
                0 if source.data.endswith(b"\n") or not source.data else 1
            )
            if self.fail_validation:
                self.fail_validation = False
                batch.status = "failed"
                batch.errors = [
                    {"code": "invalid_request", "message": "line 1: body.model is invalid",
                     "param": "body.model", "line": 1}
                ]  # fmt: skip
                batch.ended_at = now
            self.batches[batch.id] = batch
            self.batches_created += 1
            return 200, batch.public()

    def get(self, batch_id: str) -> dict[str, Any] | None:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return None
            self._advance(batch)
            return batch.public()

    def listing(self, after: str | None, limit: int) -> dict[str, Any]:
        with self._lock:
            newest_first = sorted(self.batches.values(), key=lambda b: b.created_at, reverse=True)
            if after is not None:
                ids = [b.id for b in newest_first]
                newest_first = newest_first[ids.index(after) + 1 :] if after in ids else []
            page = newest_first[:limit]
            for batch in page:
                self._advance(batch)
            return {
                "object": "list",
                "data": [b.public() for b in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(newest_first) > limit,
            }

    def cancel(self, batch_id: str) -> dict[str, Any] | None:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return None
            if batch.status in ("validating", "in_progress"):
                self._finish(batch, run_lines=0, status="cancelled")
            return batch.public()

    def _advance(self, batch: FakeBatch) -> None:
        if batch.status not in ("validating", "in_progress"):
            return
        if time.time() < batch.ready_at:
            batch.status = "in_progress"
            return
        if batch.expire_after is not None:
            self._finish(batch, run_lines=batch.expire_after, status="expired")
        else:
            self._finish(batch, run_lines=None, status="completed")

    def _finish(self, batch: FakeBatch, run_lines: int | None, status: str) -> None:
        source = self.files[batch.input_file_id]
        outputs: list[bytes] = []
        errors: list[bytes] = []
        first_success: bytes | None = None
        for index, raw in enumerate(source.data.splitlines()):
            if not raw.strip():
                continue
            line = json.loads(raw)
            custom_id = str(line.get("custom_id"))
            if run_lines is not None and index >= run_lines:
                code = "batch_expired" if status == "expired" else "batch_cancelled"
                errors.append(_not_run(custom_id, code))
                continue
            fault = batch.line_faults.get(custom_id) or batch.line_faults.get(index)
            answer, ok = self._answer(custom_id, line.get("body") or {}, fault)
            (outputs if ok else errors).append(answer)
            if ok and first_success is None:
                first_success = answer
        if batch.junk_lines and first_success is not None:
            outputs.append(first_success)  # the same custom_id twice
            outputs.append(first_success.replace(b'"custom_id": "', b'"custom_id": "unknown-', 1))
        batch.counts["completed"] = len(outputs)
        batch.counts["failed"] = len(errors)
        if outputs:
            batch.output_file_id = self.upload(
                "batch_output", f"{batch.id}_output.jsonl", b"\n".join(outputs) + b"\n"
            )["id"]
        if errors:
            batch.error_file_id = self.upload(
                "batch_output", f"{batch.id}_error.jsonl", b"\n".join(errors) + b"\n"
            )["id"]
        batch.status = status
        batch.ended_at = time.time()

    def _answer(
        self, custom_id: str, body: dict[str, Any], fault: str | None
    ) -> tuple[bytes, bool]:
        """One line of the output (True) or error (False) file, as the live endpoint would
        have answered the same body."""
        from runner.testing.openai_http import FAULT_REPLIES, envelope, usage_of

        provider = self._provider
        request_id = f"req_b{next(self._ids)}"
        if fault is not None:
            status, message, type_, code = FAULT_REPLIES[fault]
            reply = json.loads(envelope(message.replace("{request_id}", request_id), type_, code))
            return _line(custom_id, status, request_id, reply), False
        problem, image, mask = self._inputs(body)
        if problem is not None or image is None:
            reply = json.loads(envelope(problem or "no image", "invalid_request_error", "invalid"))
            return _line(custom_id, 400, request_id, reply), False
        prompt, model = str(body.get("prompt", "")), str(body.get("model", ""))
        n = int(body.get("n", 1))
        image_digest = digest(image)
        if self.reply_png is not None:
            encoded = [base64.b64encode(self.reply_png).decode("ascii")] * n
        else:
            edits = [edit(image, image_digest, mask, index) for index in range(n)]
            encoded = [e.b64.decode("ascii") for e in edits]
        usage = usage_of(prompt, mask is not None, n)
        reply_body = {
            "created": int(time.time()),
            "data": [{"b64_json": value} for value in encoded],
            "usage": usage,
        }
        fingerprint = make_fingerprint(
            image_digest, digest(mask) if mask is not None else None, prompt, model
        )
        with provider._lock:
            provider._paid[fingerprint] += 1
        self.lines_billed += 1
        return _line(custom_id, 200, request_id, reply_body), True

    def _inputs(self, body: dict[str, Any]) -> tuple[str | None, bytes | None, bytes | None]:
        images = body.get("images")
        if not isinstance(images, list) or not images or not isinstance(images[0], dict):
            return "Missing required parameter: 'images'", None, None
        image_file = self.file(str(images[0].get("file_id")))
        if image_file is None:
            return f"file {images[0].get('file_id')} not found", None, None
        mask_ref = body.get("mask")
        mask = None
        if isinstance(mask_ref, dict):
            mask_file = self.file(str(mask_ref.get("file_id")))
            if mask_file is None:
                return f"file {mask_ref.get('file_id')} not found", None, None
            mask = mask_file.data
        if not body.get("prompt"):
            return "Missing required parameter: 'prompt'", None, None
        return None, image_file.data, mask


def _line(custom_id: str, status: int, request_id: str, body: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "id": f"batch_req_{request_id}",
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None,
        }
    ).encode()


def _not_run(custom_id: str, code: str) -> bytes:
    message = (
        "This request could not be executed before the completion window expired."
        if code == "batch_expired"
        else "This request was not executed because the batch was cancelled."
    )
    return json.dumps(
        {"id": f"batch_req_{custom_id[:8]}", "custom_id": custom_id, "response": None,
         "error": {"code": code, "message": message}}
    ).encode()  # fmt: skip


def _error(message: str, type_: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": None}}
