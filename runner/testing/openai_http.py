"""The OpenAI/CometAPI dialect on the wire: what `FakeProvider` records and answers."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from runner.testing.imaging import digest, edit
from runner.testing.imaging import fingerprint as make_fingerprint
from runner.testing.multipart import BadRequest, Part, parse_multipart
from runner.testing.server import BaseHandler, FakeServer, format_seconds

if TYPE_CHECKING:
    from runner.testing.openai import FakeProvider
    from runner.testing.openai_batch import FakeBatchAPI

__all__ = [
    "DRIP_INTERVAL",
    "EDIT_PATH",
    "FAULTS",
    "MAX_FILES",
    "SLOW_EXTRA_SECONDS",
    "OpenAIHandler",
    "RecordedRequest",
]

FAULTS = (
    "rate_limit",
    "server_error",
    "overloaded",
    "reset",
    "truncate",
    "payment",
    "quota_429",
    "auth",
    "bad_request",
    "moderation",
    "empty_200",
    "html_404",
    "slow",
    "drip",
)

EDIT_PATH = "/v1/images/edits"
SLOW_EXTRA_SECONDS = 5.0
DRIP_INTERVAL = 0.2  # seconds between the bytes of a `drip` reply
MAX_FILES = 512

FILE_PATH = re.compile(r"/files/([A-Za-z0-9_-]+)\.png")
BATCH_ROUTES = re.compile(r"/v1/(files|batches)(?:/([A-Za-z0-9_-]+))?(/content|/cancel)?")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """What the fake kept of one `POST /v1/images/edits`."""

    fields: dict[str, str]
    files: dict[str, tuple[str, str, int]]  # name -> (filename, content type, size)
    headers: dict[str, str]  # lower-case names
    fingerprint: str  # "" when the body had no image and prompt to fingerprint
    status: int  # 0: no response was sent (reset, or the server was stopping)
    request_id: str = ""
    fault: str | None = None
    arrived_at: float = 0.0  # time.monotonic() when its request line came in


class OpenAIHandler(BaseHandler):
    server_version = "FakeProvider/1.0"
    server: FakeServer[FakeProvider]

    def do_GET(self) -> None:
        self._discard_body_or_close()
        if self._batch_route("GET", b""):
            return
        match = FILE_PATH.fullmatch(urlsplit(self.path).path)
        data = self.server.provider._load_file(match.group(1)) if match else None
        if data is None:
            self._send(404, envelope("Not found", "invalid_request_error", "not_found"))
        else:
            self._send(200, data, "image/png")

    def do_POST(self) -> None:
        if urlsplit(self.path).path == EDIT_PATH:
            self._edit()
            return
        if urlsplit(self.path).path.startswith(("/v1/files", "/v1/batches")):
            try:
                body = self._read_body()
            except (BadRequest, OSError):
                self.close_connection = True
                self._send(400, envelope("bad body", "invalid_request_error", "invalid"))
                return
            if self._batch_route("POST", body):
                return
        else:
            self._discard_body_or_close()
        self._send(404, envelope("Not found", "invalid_request_error", "not_found"))

    def do_DELETE(self) -> None:
        self._discard_body_or_close()
        if not self._batch_route("DELETE", b""):
            self._send(404, envelope("Not found", "invalid_request_error", "not_found"))

    def _batch_route(self, method: str, body: bytes) -> bool:
        """The Files and Batch APIs (openai_batch.py); False when the path is not theirs."""
        url = urlsplit(self.path)
        route = BATCH_ROUTES.fullmatch(url.path)
        if route is None:
            return False
        provider = self.server.provider
        api = provider.batch
        key = provider.api_key
        if key is not None and self.headers.get("Authorization") != f"Bearer {key}":
            self._send(401, envelope("Incorrect API key provided", "invalid_request_error",
                                     "invalid_api_key"))  # fmt: skip
            return True
        kind, ident, tail = route.group(1), route.group(2), route.group(3)
        answer: tuple[int, Any] = (
            404,
            json.loads(envelope("Not found", "invalid_request_error", "")),
        )
        if kind == "files" and method == "POST" and ident is None:
            answer = self._upload(api, body)
        elif kind == "files" and ident is not None and method == "GET":
            found = api.file(ident)
            if found is not None and tail == "/content":
                self._send(200, found.data, "application/octet-stream")
                return True
            if found is not None and tail is None:
                answer = (200, found.public())
        elif kind == "files" and ident is not None and method == "DELETE":
            if api.delete(ident):
                answer = (200, {"id": ident, "object": "file", "deleted": True})
        elif kind == "batches" and method == "POST" and ident is None:
            try:
                request = json.loads(body)
            except ValueError:
                request = {}
            answer = api.create(request if isinstance(request, dict) else {})
            # Created, not yet answered: a client killed now never hears of its batch.
            if api.create_delay and provider._sleep(api.create_delay):
                self.close_connection = True
                return True
        elif kind == "batches" and method == "POST" and tail == "/cancel" and ident is not None:
            cancelled = api.cancel(ident)
            if cancelled is not None:
                answer = (200, cancelled)
        elif kind == "batches" and method == "GET" and ident is not None and tail is None:
            got = api.get(ident)
            if got is not None:
                answer = (200, got)
        elif kind == "batches" and method == "GET" and ident is None:
            query = dict(parse_qsl(url.query))
            answer = (200, api.listing(query.get("after"), int(query.get("limit", "20"))))
        self._send(answer[0], json.dumps(answer[1]).encode())
        return True

    def _upload(self, api: FakeBatchAPI, body: bytes) -> tuple[int, Any]:
        if api.payment_on_upload:
            status, message, type_, code = FAULT_REPLIES["payment"]
            return status, json.loads(
                envelope(message.replace("{request_id}", "req_up"), type_, code)
            )
        try:
            parts = parse_multipart(self.headers.get("Content-Type", ""), body)
        except BadRequest as exc:
            return 400, json.loads(envelope(str(exc), "invalid_request_error", "invalid"))
        fields = {p.name: p for p in parts}
        purpose, file = fields.get("purpose"), fields.get("file")
        if purpose is not None and purpose.data.decode() in api.refused_purposes:
            message = f"Invalid value for 'purpose': {purpose.data.decode()!r} is not supported"
            return 400, json.loads(envelope(message, "invalid_request_error", "invalid_value"))
        if purpose is None or file is None:
            return 400, json.loads(
                envelope("purpose and file are required", "invalid_request_error", "")
            )
        return 200, api.upload(purpose.data.decode(), file.filename or "file", file.data)

    def _edit(self) -> None:
        provider = self.server.provider
        number = provider._next_request_number()
        request_id = provider._echo(f"req_{number}", "-{key}")
        headers = {name.lower(): value for name, value in self.headers.items()}
        fields: dict[str, str] = {}
        files: dict[str, tuple[str, str, int]] = {}
        fingerprint = ""
        reserved = False
        fault: str | None = None
        arrived_at = time.monotonic()

        def record(status: int, *, paid: bool = False) -> None:
            nonlocal reserved
            release, reserved = reserved, False
            provider._record(
                RecordedRequest(
                    fields, files, headers, fingerprint, status, request_id, fault, arrived_at
                ),
                reserved=release,
                paid=paid,
            )

        problem: str | None = None
        parts: list[Part] = []
        arrived = time.monotonic()
        try:
            body = self._read_body()
            # `latency` is the time from a whole upload to the reply, the server's own work
            # included, as a client sees a real provider: a benchmark's bound C/L then holds.
            arrived = time.monotonic()
            parts = parse_multipart(self.headers.get("Content-Type", ""), body)
        except BadRequest as exc:
            problem = str(exc)
        except OSError:
            self.close_connection = True
            record(0)
            return

        uploads: dict[str, Part] = {}
        for part in parts:
            if part.filename is None:
                fields.setdefault(part.name, part.data.decode("utf-8", "replace"))
            else:
                uploads.setdefault(part.name, part)
                files.setdefault(
                    part.name,
                    (
                        part.filename,
                        part.content_type or "application/octet-stream",
                        len(part.data),
                    ),
                )
        image = uploads.get("image") or uploads.get("image[]")
        mask = uploads.get("mask")
        prompt = fields.get("prompt")
        model = fields.get("model", "")
        image_digest = b""
        if image is not None and prompt is not None:
            image_digest = digest(image.data)
            mask_digest = digest(mask.data) if mask is not None else None
            fingerprint = make_fingerprint(image_digest, mask_digest, prompt, model)
            provider._note_received(fingerprint)

        n = 1
        if problem is None:
            if image is None:
                problem = "Missing required parameter: 'image'"
            elif prompt is None:
                problem = "Missing required parameter: 'prompt'"
            else:
                try:
                    n = int(fields.get("n", "1"))
                except ValueError:
                    n = 0
                if not 1 <= n <= 10:
                    problem = "Invalid value for 'n': expected an integer from 1 to 10"

        api_key = provider.api_key
        if api_key is not None and headers.get("authorization") != f"Bearer {api_key}":
            fault = "auth"
        elif problem is None:
            fault = provider._choose_fault()
            reserved = fault is None

        spent = time.monotonic() - arrived
        delay = max(0.0, provider.latency - spent) + (
            SLOW_EXTRA_SECONDS if fault == "slow" else 0.0
        )
        provider._flight(+1)
        try:
            if provider._sleep(delay):
                self.close_connection = True
                record(0)
                return
            if fault is not None and fault not in SUCCESS_LIKE:
                self._reply_fault(fault, request_id, record)
            elif problem is not None:
                record(400)
                self._send(
                    400,
                    envelope(provider._echo(problem), "invalid_request_error", "invalid_request"),
                    headers=[("x-request-id", request_id)],
                )
            else:
                assert image is not None and prompt is not None  # no problem implies both
                self._reply_success(fault, request_id, image, image_digest, mask, prompt, n, record)
        finally:
            provider._flight(-1)
            if reserved:
                # Only a bug gets here; its reservation must not block later edits.
                provider._record(
                    RecordedRequest(
                        fields, files, headers, fingerprint, 0, request_id, fault, arrived_at
                    ),
                    reserved=True,
                    paid=False,
                )

    def _reply_success(
        self,
        fault: str | None,
        request_id: str,
        image: Part,
        image_digest: bytes,
        mask: Part | None,
        prompt: str,
        n: int,
        record: Callable[..., None],
    ) -> None:
        provider = self.server.provider
        headers = [("x-request-id", request_id), ("x-ratelimit-remaining-requests", "1000")]
        used = usage_of(prompt, mask is not None, n)
        if provider.echo_key and provider.api_key:
            used["user"] = provider.api_key
        usage = json.dumps(used).encode()
        created = str(int(time.time())).encode()
        if fault == "empty_200":
            record(200)
            self._send(
                200,
                b'{"created":' + created + b',"data":[],"usage":' + usage + b"}",
                headers=headers,
            )
            return
        try:
            edits = [
                edit(image.data, image_digest, mask.data if mask else None, index)
                for index in range(n)
            ]
        except Exception as exc:  # any decode failure is the client's bad input
            record(400)
            self._send(
                400,
                envelope(f"Invalid image: {exc}", "invalid_request_error", "invalid_request"),
                headers=headers,
            )
            return
        body = [b'{"created":', created, b',"data":[']
        for index, e in enumerate(edits):
            if index:
                body.append(b",")
            if provider.reply == "url":
                url = f"{provider.origin}/files/{provider._store_file(e.png)}.png"
                body.append(json.dumps({"url": url}).encode())
            else:
                body += (b'{"b64_json":"', e.b64, b'"}')
        body += (b'],"usage":', usage, b"}")
        if fault == "truncate":
            record(200)
            self.close_connection = True
            self._send(200, body, headers=headers, truncate=True)
            return
        if fault == "drip":
            record(200)
            self.close_connection = True
            self._drip(b"".join(body), headers)
            return
        record(200, paid=fault is None)
        self._send(200, body, headers=headers)

    def _drip(self, body: bytes, headers: list[tuple[str, str]]) -> None:
        """A whole 200's headers, then its body a byte at a time, until the client leaves."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        for index in range(len(body)):
            if self.server.provider._sleep(DRIP_INTERVAL):
                return
            self.wfile.write(body[index : index + 1])
            self.wfile.flush()

    def _reply_fault(self, fault: str, request_id: str, record: Callable[..., None]) -> None:
        provider = self.server.provider
        headers = [("x-request-id", request_id)]
        if fault == "reset":
            record(0)
            self.close_connection = True
            self._abort()
            return
        if fault == "html_404":
            record(404)
            page = HTML_404.replace(
                b"404 Not Found</title>", provider._echo("404 Not Found").encode() + b"</title>"
            )
            self._send(404, page, "text/html; charset=utf-8", headers)
            return
        if fault not in FAULT_REPLIES:
            # Only reachable through script.append(), which cannot validate its argument.
            status, message, type_, code = 500, f"FakeProvider: unknown fault {fault!r}", "", ""
        else:
            status, message, type_, code = FAULT_REPLIES[fault]
        if fault == "rate_limit" and provider.retry_after is not None:
            headers.append(("Retry-After", format_seconds(provider.retry_after)))
        record(status)
        self._send(
            status,
            envelope(provider._echo(message.replace("{request_id}", request_id)), type_, code),
            headers=headers,
        )


def usage_of(prompt: str, has_mask: bool, n: int) -> dict[str, Any]:
    text = max(1, len(prompt) // 4)
    image = 765 * (2 if has_mask else 1)
    input_tokens = image + text
    output_tokens = 1056 * n
    return {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": input_tokens + output_tokens,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "input_tokens_details": {
            "image_tokens": image,
            "text_tokens": text,
            "cached_tokens_details": {},
        },
        "prompt_tokens_details": {"cached_tokens_details": {}},
        "completion_tokens_details": {},
        "claude_cache_creation_5_m_tokens": 0,
        "claude_cache_creation_1_h_tokens": 0,
    }


def envelope(message: str, type_: str, code: str) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": "", "code": code}}
    ).encode()


HTML_404 = (
    b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
    b"<body><center><h1>404 Not Found</h1></center><hr><center>nginx</center></body></html>\n"
)

# Faults whose reply is (the start of) a normal success.
SUCCESS_LIKE = frozenset({"slow", "truncate", "empty_200", "drip"})

FAULT_REPLIES: dict[str, tuple[int, str, str, str]] = {
    "rate_limit": (
        429,
        "Rate limit reached for requests (request id: {request_id})",
        "rate_limit_error",
        "rate_limit_exceeded",
    ),
    "server_error": (500, "upstream error (request id: {request_id})", "comet_api_error", ""),
    "overloaded": (
        503,
        "The server is overloaded or not ready yet (request id: {request_id})",
        "server_error",
        "server_is_overloaded",
    ),
    "payment": (
        402,
        "user quota is not enough: top up at https://www.cometapi.com/console/topup "
        "(request id: {request_id})",
        "comet_api_error",
        "insufficient_user_quota",
    ),
    "quota_429": (
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        "insufficient_quota",
    ),
    "auth": (
        401,
        "Incorrect API key provided (request id: {request_id})",
        "invalid_request_error",
        "invalid_api_key",
    ),
    "bad_request": (400, "Invalid value for 'size'", "invalid_request_error", "invalid_request"),
    "moderation": (
        400,
        "Your request was rejected by the safety system (request id: {request_id})",
        "image_generation_user_error",
        "moderation_blocked",
    ),
}
