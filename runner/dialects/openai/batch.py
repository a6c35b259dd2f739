"""OpenAI's Files and Batch APIs, as batch mode uses them (`mode: batch` on an openai
profile): inputs uploaded once, JSONL lines `{custom_id, method, url, body}` with the images
by reference (`images: [{file_id}]`, `mask: {file_id}`), a batch created with our own tag in
its metadata, and the output and error files read back line by line.

Every non-success answer goes through the live endpoint's `classify`, so a 402 or a quota
answer on an upload stops spending exactly as a live edit's would. Each line's answer inside
an output file is classified the same way (`line_result`).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from runner.dialects.base import classify
from runner.dialects.openai.client import parse_body
from runner.dialects.replies import lift_base64, loads
from runner.errors import PermanentJobError, ProviderError, RetryableError
from runner.records import EditRequest, EditResult
from runner.redact import redact_error, redact_result

EDIT_ENDPOINT = "/v1/images/edits"
# OpenAI's limits for one batch's input file (its Batch API reference).
MAX_LINES = 50_000
MAX_INPUT_BYTES = 200 * 1024 * 1024
# What the uploaded inputs are for: images given by file id to the image APIs. Which one
# the edits endpoint wants is UNCONFIRMED: `vision` first, `user_data` if that is refused.
IMAGE_PURPOSES = ("vision", "user_data")
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
# How long one file read may stall between bytes; a whole output file takes as long as it takes.
READ_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class LineAnswer:
    """One line of an output or error file: a result, or the error it stands for."""

    custom_id: str
    result: EditResult | None = None
    error: ProviderError | None = None
    not_run: bool = False  # the batch ended (expired, cancelled) before running it


class OpenAIBatchClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        client: httpx.AsyncClient,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._client = client
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._wall_clock = wall_clock
        self._refused_purposes: set[str] = set()

    def __repr__(self) -> str:  # the key stays out of logs and tracebacks
        return f"OpenAIBatchClient(url={self._base!r})"

    async def upload(self, data: bytes, filename: str, purpose: str) -> Mapping[str, Any]:
        """`POST /files`; the file object (id, expires_at, ...)."""
        return await self._json(
            "POST", "/files", data={"purpose": purpose},
            files={"file": (filename, data, "application/octet-stream")},
        )  # fmt: skip

    async def upload_image(self, data: bytes, filename: str) -> Mapping[str, Any]:
        """`upload` with the first image purpose the provider takes; a purpose it refused
        is not tried again (uploads run side by side: each reads the shared set)."""
        last = IMAGE_PURPOSES[-1]
        for purpose in IMAGE_PURPOSES:
            if purpose in self._refused_purposes and purpose != last:
                continue
            try:
                return await self.upload(data, filename, purpose)
            except PermanentJobError as exc:
                if "purpose" not in exc.message.lower() or purpose == last:
                    raise
                self._refused_purposes.add(purpose)  # this provider wants another one
        raise AssertionError("unreachable: the last purpose returns or raises")

    async def delete_file(self, file_id: str) -> None:
        try:
            await self._json("DELETE", f"/files/{file_id}")
        except ProviderError as exc:
            if exc.status_code != 404:  # gone already: what we wanted
                raise

    async def create_batch(
        self, input_file_id: str, window: str, metadata: Mapping[str, str]
    ) -> Mapping[str, Any]:
        return await self._json(
            "POST", "/batches",
            json={"input_file_id": input_file_id, "endpoint": EDIT_ENDPOINT,
                  "completion_window": window, "metadata": dict(metadata)},
        )  # fmt: skip

    async def get_batch(self, batch_id: str) -> Mapping[str, Any]:
        return await self._json("GET", f"/batches/{batch_id}")

    async def cancel_batch(self, batch_id: str) -> Mapping[str, Any]:
        return await self._json("POST", f"/batches/{batch_id}/cancel")

    async def find_batch(self, tag: str, newer_than: float) -> Mapping[str, Any] | None:
        """The batch whose metadata carries our `tag`, among those created since
        `newer_than` (epoch seconds): listing pages go newest first, so the search stops
        at the first older batch."""
        after: str | None = None
        while True:
            params = {"limit": "100", **({"after": after} if after else {})}
            page = await self._json("GET", "/batches", params=params)
            data = page.get("data") or []
            for batch in data:
                if (batch.get("metadata") or {}).get("runner_batch") == tag:
                    return dict(batch)
                if float(batch.get("created_at") or 0) < newer_than:
                    return None
            if not page.get("has_more") or not data:
                return None
            after = str(data[-1].get("id"))

    async def lines(self, file_id: str) -> AsyncIterator[bytes]:
        """The file's lines, streamed: an output file may be hundreds of MB, and only one
        line (one reply, a few MB) is held at a time."""
        try:
            async for line in self._lines(file_id):
                yield line
        except httpx.HTTPError as exc:  # cut off mid-file: what was read is recorded
            raise RetryableError(f"reading file {file_id}: {type(exc).__name__}: {exc}") from None

    async def _lines(self, file_id: str) -> AsyncIterator[bytes]:
        url = f"{self._base}/files/{file_id}/content"
        timeout = httpx.Timeout(30.0, read=READ_TIMEOUT_S)
        async with self._client.stream("GET", url, headers=self._auth, timeout=timeout) as reply:
            if reply.status_code != 200:
                await reply.aread()
                raise redact_error(classify(reply, self._wall_clock()))
            buffer = bytearray()
            async for chunk in reply.aiter_bytes():
                searched = len(buffer)  # a newline can only be in what just came
                buffer += chunk
                start = 0
                while (end := buffer.find(b"\n", searched)) != -1:
                    line = bytes(buffer[start:end])
                    start = searched = end + 1
                    if line.strip():
                        yield line
                del buffer[:start]  # once per chunk: no quadratic copying of 3 MB lines
            if bytes(buffer).strip():
                yield bytes(buffer)

    async def _json(self, method: str, path: str, **request: Any) -> Mapping[str, Any]:
        try:
            response = await self._client.request(
                method, f"{self._base}{path}", headers=self._auth, **request
            )
        except httpx.HTTPError as exc:  # no answer: a network failure, said in one line
            raise RetryableError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise redact_error(classify(response, self._wall_clock()))
        try:
            body = response.json()
        except ValueError:
            raise RetryableError(
                f"{method} {path}: the answer is not JSON", status_code=200
            ) from None
        if not isinstance(body, dict):
            raise RetryableError(
                f"{method} {path}: the answer is not a JSON object", status_code=200
            )
        return body


def edit_line(
    custom_id: str, request: EditRequest, image_file_id: str, mask_file_id: str | None
) -> bytes:
    """One JSONL line of a batch's input file: the live request's fields, images by id."""
    body: dict[str, Any] = {
        "model": request.model,
        "prompt": request.prompt,
        "images": [{"file_id": image_file_id}],
        **dict(request.params),
    }
    if mask_file_id is not None:
        body["mask"] = {"file_id": mask_file_id}
    line = {"custom_id": custom_id, "method": "POST", "url": EDIT_ENDPOINT, "body": body}
    return json.dumps(line, separators=(",", ":")).encode()


def line_answer(line: bytes, now: float) -> LineAnswer | None:
    """What one output- or error-file line says; None for a line that is not JSON with a
    custom_id (reported by the caller, never fatal). The line is parsed once, its base64
    images lifted out first (a line is a whole reply: megabytes)."""
    small, lifted = lift_base64(line)
    try:
        item = loads(small)
    except ValueError:
        return None
    if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
        return None
    custom_id = item["custom_id"]
    response = item.get("response")
    if not isinstance(response, dict):
        found = item.get("error")
        error: dict[str, Any] = found if isinstance(found, dict) else {}
        code = str(error.get("code") or "")
        if code in ("batch_expired", "batch_cancelled"):
            return LineAnswer(custom_id, not_run=True)
        message = str(error.get("message") or "the batch gave no answer for this line")
        return LineAnswer(custom_id, error=RetryableError(f"{code}: {message}", status_code=None))
    status = response.get("status_code")
    request_id = str(response["request_id"]) if response.get("request_id") else None
    if status != 200:
        # The line's answer as the live endpoint would have given it: classified alike.
        raw = json.dumps(response.get("body"), separators=(",", ":")).encode()
        headers = {"x-request-id": request_id} if request_id else {}
        fake = httpx.Response(int(status or 500), content=raw, headers=headers)
        return LineAnswer(custom_id, error=redact_error(classify(fake, now)))
    try:
        parsed = parse_body(response.get("body"), lifted, request_id)
    except ProviderError as exc:
        return LineAnswer(custom_id, error=redact_error(exc))
    if not parsed.images:
        empty = RetryableError(
            "reply has no image in data[]", status_code=200, usage=parsed.usage,
            request_id=request_id,
        )  # fmt: skip
        return LineAnswer(custom_id, error=empty)
    result = EditResult(images=parsed.images, usage=parsed.usage, request_id=request_id)
    return LineAnswer(custom_id, result=redact_result(result))
