"""A fake image-edit provider over real HTTP, for tests, `runner demo` and benchmarks.

It speaks the OpenAI/CometAPI `POST /v1/images/edits` dialect on 127.0.0.1 and can be told
to misbehave in every way the runner must survive (see `FAULTS`). It is a real HTTP/1.1
server on a socket, not a mock transport, so connection pooling, keep-alive, resets and
truncated bodies are exercised exactly as they would be against a remote API.

Accounting choices worth knowing when writing assertions:

* Counters are updated *before* the reply is written, so a client that has its answer can
  read them without racing the server.
* `status_counts` keys are the status sent: a `truncate` reply counts under 200 (its status
  line did go out) and a `reset`, which sends nothing, counts under 0, as does a request
  abandoned because the server was stopping.
* `paid` counts only normal 200 replies carrying images. Every fault, `slow` and
  `truncate` included, counts nowhere in `paid` even though it may carry images.
* `latency` is the time from a whole upload to its reply (the server's own work counted in),
  for every edit reply, error replies (401, 400) included.
* A normal reply is charged when the server commits to it, so a client that gave up
  before the answer arrived has still "paid", as with a real provider.
* `payment_after=K` allows exactly K paid edits, concurrent requests included, then answers
  402 until `top_up()`; `reset_counters()` starts the K over.

An edit request is judged in this order: credentials (401), then the body (400 for bad
multipart, a missing image or prompt, `n` outside 1..10, a mask of another size or an
image Pillow cannot decode), then the fault. Rejected requests consume no script entry.
Replies are always PNG whatever `output_format` asks for.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import hashlib
import io
import itertools
import json
import random
import re
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from PIL import Image, ImageChops, ImageFilter

__all__ = ["FAULTS", "FakeProvider", "RecordedRequest", "edited_image", "main"]

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
)

EDIT_PATH = "/v1/images/edits"
SLOW_EXTRA_SECONDS = 5.0
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_RECORDED = 10_000
MAX_FILES = 512
CACHE_SIZE = 64

# Index i of a reply is tinted with _TINTS[i % len]: distinct colours let a test tell the
# images of an n > 1 reply apart.
_TINTS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (0, 0, 255),
    (0, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
    (255, 255, 0),
)
_TINT_STRENGTH = 0.6
_OUTLINE_WIDTH = 2

_FILE_PATH = re.compile(r"/files/([A-Za-z0-9_-]+)\.png")


# --------------------------------------------------------------------------- the edit


@dataclass(frozen=True, slots=True)
class _Edit:
    png: bytes
    b64: bytes  # ASCII base64 of `png`, spliced straight into JSON replies


class _EditCache:
    """LRU of finished edits; benchmarks send one large image thousands of times."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: collections.OrderedDict[tuple[bytes, bytes, int], _Edit] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()
        # One lock per key being built, so a burst of identical first requests decodes
        # and encodes the image once instead of once per thread.
        self._building: dict[tuple[bytes, bytes, int], threading.Lock] = {}

    def _lookup(self, key: tuple[bytes, bytes, int]) -> _Edit | None:
        hit = self._data.get(key)
        if hit is not None:
            self._data.move_to_end(key)
        return hit

    def get(self, key: tuple[bytes, bytes, int], build: Callable[[], bytes]) -> _Edit:
        with self._lock:
            hit = self._lookup(key)
            if hit is not None:
                return hit
            key_lock = self._building.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                hit = self._lookup(key)
            if hit is not None:
                return hit
            try:
                png = build()
                edit = _Edit(png, base64.b64encode(png))
                with self._lock:
                    self._data[key] = edit
                    while len(self._data) > self._size:
                        self._data.popitem(last=False)
            finally:
                with self._lock:
                    self._building.pop(key, None)
        return edit


_cache = _EditCache(CACHE_SIZE)


def _digest(data: bytes | None) -> bytes:
    return b"" if data is None else hashlib.sha256(data).digest()


def _render_edit(image: bytes, mask: bytes | None, index: int) -> bytes:
    with Image.open(io.BytesIO(image)) as src:
        src.load()
        keep_alpha = src.has_transparency_data
        base = src.convert("RGBA" if keep_alpha else "RGB")
    rgb = base.convert("RGB") if keep_alpha else base
    size = rgb.size

    if mask is None:
        width, height = size
        region = Image.new("L", size, 0)
        region.paste(255, (width // 4, height // 4, width - width // 4, height - height // 4))
    else:
        with Image.open(io.BytesIO(mask)) as mask_img:
            mask_img.load()
            if mask_img.size != size:
                raise ValueError(
                    f"mask size {mask_img.size[0]}x{mask_img.size[1]} does not match "
                    f"image size {size[0]}x{size[1]}"
                )
            alpha = mask_img.convert("RGBA").getchannel("A")
        # OpenAI semantics: fully transparent mask pixels are the area to edit.
        region = alpha.point([255] + [0] * 255)

    colour = _TINTS[index % len(_TINTS)]
    tinted = Image.blend(rgb, Image.new("RGB", size, colour), _TINT_STRENGTH)
    # The outline sits on the inner edge of the region so nothing outside it changes.
    eroded = region.filter(ImageFilter.MinFilter(2 * _OUTLINE_WIDTH + 1))
    tinted.paste(colour, (0, 0, *size), ImageChops.subtract(region, eroded))
    out = Image.composite(tinted, rgb, region)
    if keep_alpha:
        out.putalpha(base.getchannel("A"))

    buf = io.BytesIO()
    # Level 1: the replies are mostly noise in benchmarks, and higher levels only cost time.
    out.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _edit(image: bytes, image_digest: bytes, mask: bytes | None, index: int) -> _Edit:
    key = (image_digest, _digest(mask), index)
    return _cache.get(key, lambda: _render_edit(image, mask, index))


def edited_image(image: bytes, mask: bytes | None, index: int = 0) -> bytes:
    """The PNG the fake returns as image `index` for these inputs (deterministic).

    Pixels where the mask is fully transparent (or, without a mask, the centred rectangle
    covering the middle half) are blended 60% with a colour chosen by `index` and get a
    2-pixel outline on their inner edge; every other pixel is left exactly as it was.
    Raises ValueError when the mask's size differs from the image's, and Pillow's errors
    when either does not decode.
    """
    return _edit(image, _digest(image), mask, index).png


# --------------------------------------------------------------------------- multipart


class _BadRequest(Exception):
    """The request cannot be served; the message goes back in a 400 envelope."""


@dataclass(frozen=True, slots=True)
class _Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def _header_params(value: str) -> tuple[str, dict[str, str]]:
    """Split `form-data; name="a"; filename="b"` into its value and parameters."""
    head, _, _ = value.partition(";")
    params: dict[str, str] = {}
    for match in _PARAM.finditer(value[len(head) :]):
        key, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[key] = raw
    if "filename*" in params:
        # RFC 5987: charset'language'percent-encoded
        charset, _, rest = params["filename*"].partition("'")
        _, _, encoded = rest.partition("'")
        with contextlib.suppress(LookupError, UnicodeDecodeError):
            params["filename"] = unquote(encoded, encoding=charset or "utf-8", errors="strict")
    return head.strip().lower(), params


def _parse_multipart(content_type: str, body: bytes) -> list[_Part]:
    kind, params = _header_params(content_type)
    if kind != "multipart/form-data":
        raise _BadRequest(f"expected multipart/form-data, got {kind or 'no content type'!r}")
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise _BadRequest("multipart body without a usable boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    separator = b"\r\n" + delimiter

    start = body.find(delimiter)
    if start < 0 or (start > 0 and body[start - 2 : start] != b"\r\n"):
        raise _BadRequest("multipart body does not contain its boundary")
    pos = start + len(delimiter)
    parts: list[_Part] = []
    while True:
        if body.startswith(b"--", pos):
            return parts
        eol = body.find(b"\r\n", pos)
        if eol < 0 or body[pos:eol].strip(b" \t"):
            raise _BadRequest("malformed multipart boundary line")
        header_start = eol + 2
        if body.startswith(b"\r\n", header_start):
            header_block, content_start = b"", header_start + 2
        else:
            header_end = body.find(b"\r\n\r\n", header_start)
            if header_end < 0:
                raise _BadRequest("multipart part headers are not terminated")
            header_block, content_start = body[header_start:header_end], header_end + 4
        content_end = body.find(separator, content_start)
        if content_end < 0:
            raise _BadRequest("multipart body is not terminated by its boundary")
        parts.append(_make_part(header_block, body[content_start:content_end]))
        pos = content_end + len(separator)


def _make_part(header_block: bytes, data: bytes) -> _Part:
    headers: dict[str, str] = {}
    for line in header_block.decode("utf-8", "replace").split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon:
            raise _BadRequest(f"malformed multipart header {line!r}")
        headers[name.strip().lower()] = value.strip()
    disposition, params = _header_params(headers.get("content-disposition", ""))
    if disposition != "form-data" or "name" not in params:
        raise _BadRequest("multipart part without Content-Disposition: form-data; name=...")
    return _Part(params["name"], params.get("filename"), headers.get("content-type"), data)


# --------------------------------------------------------------------------- the provider


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


def _validate_fault(name: object) -> str:
    if not isinstance(name, str) or name not in FAULTS:
        raise ValueError(f"unknown fault {name!r}; expected one of {', '.join(FAULTS)}")
    return name


def _validate_mix(mix: Mapping[str, float] | None) -> dict[str, float] | None:
    if mix is None:
        return None
    checked = {_validate_fault(name): float(p) for name, p in mix.items()}
    if any(not 0.0 <= p <= 1.0 for p in checked.values()):
        raise ValueError("fault_mix probabilities must lie in [0, 1]")
    if sum(checked.values()) > 1.0 + 1e-9:
        raise ValueError("fault_mix probabilities must add up to at most 1")
    return checked


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class FakeProvider:
    """An in-process HTTP server playing a paid image-edit API; see the module docstring.

    `latency`, `payment_after`, `script` and `fault_mix` may be changed while it runs.
    """

    def __init__(
        self,
        *,
        api_key: str | None = "test-key",
        latency: float = 0.0,
        script: Iterable[str | None] = (),
        fault_mix: Mapping[str, float] | None = None,
        seed: int = 0,
        payment_after: int | None = None,
        retry_after: float | None = 0.0,
        reply: Literal["b64_json", "url"] = "b64_json",
        port: int = 0,
    ) -> None:
        if reply not in ("b64_json", "url"):
            raise ValueError(f"reply must be 'b64_json' or 'url', not {reply!r}")
        self.api_key = api_key
        self.latency = latency
        self.payment_after = payment_after
        self.retry_after = retry_after
        self.reply = reply
        self._port = port
        self._lock = threading.Lock()
        self._script: collections.deque[str | None] = collections.deque()
        self.script = script
        self._fault_mix = _validate_mix(fault_mix)
        self._rng = random.Random(seed)

        self._requests_total = 0
        self._status_counts: collections.Counter[int] = collections.Counter()
        self._paid: collections.Counter[str] = collections.Counter()
        self._paid_total = 0
        # Normal replies decided on but not yet charged; counted against payment_after
        # so that concurrent requests cannot overshoot it.
        self._reserved = 0
        self._received: collections.Counter[str] = collections.Counter()
        self._requests: collections.deque[RecordedRequest] = collections.deque(maxlen=MAX_RECORDED)
        self._files: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._file_ids = itertools.count(1)

        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> FakeProvider:
        if self._server is not None:
            raise RuntimeError("FakeProvider is already running")
        self._stopping = threading.Event()
        server = _Server(("127.0.0.1", self._port), self)
        self._server = server
        self._thread = threading.Thread(
            # A short poll keeps stop() quick; serve_forever only notices shutdown() then.
            target=server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"FakeProvider:{server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        # Idle keep-alive connections would otherwise keep their handler threads and
        # sockets alive until the client hangs up, past the end of a test.
        server.abort_connections(timeout=5.0)
        server.server_close()
        if thread is not None:
            thread.join()
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeProvider is not running; call start() first")
        return int(self._server.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    # ---------------------------------------------------------------- knobs

    @property
    def script(self) -> collections.deque[str | None]:
        """Faults for the next requests, in order (None: a normal reply).

        This is the live queue: `append` and `extend` on it are safe while serving, but
        only assignment validates the names.
        """
        return self._script

    @script.setter
    def script(self, entries: Iterable[str | None]) -> None:
        checked = collections.deque(
            None if entry is None else _validate_fault(entry) for entry in entries
        )
        with self._lock:
            self._script = checked

    @property
    def fault_mix(self) -> dict[str, float] | None:
        return None if self._fault_mix is None else dict(self._fault_mix)

    @fault_mix.setter
    def fault_mix(self, mix: Mapping[str, float] | None) -> None:
        checked = _validate_mix(mix)
        with self._lock:
            self._fault_mix = checked

    def top_up(self) -> None:
        with self._lock:
            self.payment_after = None

    # ---------------------------------------------------------------- counters

    @property
    def requests_total(self) -> int:
        with self._lock:
            return self._requests_total

    @property
    def status_counts(self) -> collections.Counter[int]:
        with self._lock:
            return collections.Counter(self._status_counts)

    @property
    def paid(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(self._paid)

    @property
    def received(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(self._received)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def reset_counters(self) -> None:
        """Zero every counter; `payment_after` then counts paid edits from zero again."""
        with self._lock:
            self._requests_total = 0
            self._status_counts.clear()
            self._paid.clear()
            self._paid_total = 0
            self._received.clear()
            self._requests.clear()

    @staticmethod
    def fingerprint(image: bytes, mask: bytes | None, prompt: str, model: str) -> str:
        """sha256 hex identifying one edit's inputs: maps a job to the requests it made."""
        return _fingerprint(
            _digest(image), _digest(mask) if mask is not None else None, prompt, model
        )

    # ---------------------------------------------------------------- used by the handler

    def _next_request_number(self) -> int:
        with self._lock:
            self._requests_total += 1
            return self._requests_total

    def _note_received(self, fingerprint: str) -> None:
        with self._lock:
            self._received[fingerprint] += 1

    def _choose_fault(self) -> str | None:
        with self._lock:
            limit = self.payment_after
            if limit is not None and self._paid_total + self._reserved >= limit:
                return "payment"
            fault: str | None = None
            if self._script:
                fault = self._script.popleft()
            elif self._fault_mix:
                draw = self._rng.random()
                for name, probability in self._fault_mix.items():
                    if draw < probability:
                        fault = name
                        break
                    draw -= probability
            if fault is None:
                self._reserved += 1
            return fault

    def _record(self, request: RecordedRequest, *, reserved: bool, paid: bool) -> None:
        with self._lock:
            if reserved:
                self._reserved -= 1
            if paid:
                self._paid[request.fingerprint] += 1
                self._paid_total += 1
            self._status_counts[request.status] += 1
            self._requests.append(request)

    def _store_file(self, png: bytes) -> str:
        with self._lock:
            file_id = f"img_{next(self._file_ids)}"
            self._files[file_id] = png
            while len(self._files) > MAX_FILES:
                self._files.popitem(last=False)
            return file_id

    def _load_file(self, file_id: str) -> bytes | None:
        with self._lock:
            return self._files.get(file_id)

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the server is stopping; True when the sleep was cut short."""
        return self._stopping.wait(seconds) if seconds > 0 else self._stopping.is_set()


def _fingerprint(image_digest: bytes, mask_digest: bytes | None, prompt: str, model: str) -> str:
    h = hashlib.sha256()
    # Length-prefixed pieces so that no two different inputs hash the same bytes.
    for piece in (
        image_digest,
        b"\x00" if mask_digest is None else b"\x01" + mask_digest,
        prompt.encode("utf-8"),
        model.encode("utf-8"),
    ):
        h.update(len(piece).to_bytes(8, "big"))
        h.update(piece)
    return h.hexdigest()


def _usage(prompt: str, has_mask: bool, n: int) -> dict[str, Any]:
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


def _envelope(message: str, type_: str, code: str) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": "", "code": code}}
    ).encode()


_HTML_404 = (
    b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
    b"<body><center><h1>404 Not Found</h1></center><hr><center>nginx</center></body></html>\n"
)


# --------------------------------------------------------------------------- HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], provider: FakeProvider) -> None:
        self.provider = provider
        self._connections: set[socket.socket] = set()
        # ThreadingMixIn does not keep daemon threads, and stop() must join them.
        self._handlers: list[threading.Thread] = []
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host with getfqdn(), a reverse DNS lookup
        # that can stall for seconds in sandboxes; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"FakeProvider-conn:{client_address[1]}",
            daemon=True,
        )
        with self._connections_lock:
            self._connections.add(request)
            self._handlers = [t for t in self._handlers if t.is_alive()]
            self._handlers.append(thread)
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def abort_connections(self, timeout: float) -> None:
        """Cut every open connection and wait for the handler threads to finish."""
        with self._connections_lock:
            connections = list(self._connections)
            handlers = list(self._handlers)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for thread in handlers:
            thread.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-reply is routine here (timeouts, resets), not a bug.
        if isinstance(sys.exception(), OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeProvider/1.0"
    sys_version = ""
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown test and benchmark output

    # ---------------------------------------------------------------- plumbing

    def _read_body(self) -> bytes:
        """The request body; raises _BadRequest (and marks the connection to close)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        try:
            length = int(raw)
            if length < 0:
                raise ValueError(raw)
        except ValueError:
            self.close_connection = True
            raise _BadRequest(f"invalid Content-Length {raw!r}") from None
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise _BadRequest("request body too large")
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            raise ConnectionResetError("client closed the connection mid-body")
        return body

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise ConnectionResetError("client closed the connection mid-body")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise _BadRequest("malformed chunked body") from None
            if size == 0:
                while self.rfile.readline(1024).strip():
                    pass  # trailers carry nothing the fake needs
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                self.close_connection = True
                raise _BadRequest("request body too large")
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise ConnectionResetError("client closed the connection mid-body")
            chunks.append(chunk)
            self.rfile.readline(1024)

    def _send(
        self,
        status: int,
        body: bytes | list[bytes],
        content_type: str = "application/json",
        headers: Iterable[tuple[str, str]] = (),
        *,
        truncate: bool = False,
    ) -> None:
        """Reply; a list body is written piece by piece, sparing a copy of 2 MB replies."""
        chunks = [body] if isinstance(body, bytes) else body
        length = sum(map(len, chunks))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if truncate:
            chunks = [b"".join(chunks)[: length // 2]]
        for chunk in chunks:
            self.wfile.write(chunk)

    def _discard_body_or_close(self) -> None:
        try:
            self._read_body()
        except _BadRequest:
            self.close_connection = True

    # ---------------------------------------------------------------- routes

    def do_GET(self) -> None:
        self._discard_body_or_close()
        match = _FILE_PATH.fullmatch(urlsplit(self.path).path)
        data = self.server.provider._load_file(match.group(1)) if match else None
        if data is None:
            self._send(404, _envelope("Not found", "invalid_request_error", "not_found"))
        else:
            self._send(200, data, "image/png")

    def do_POST(self) -> None:
        if urlsplit(self.path).path == EDIT_PATH:
            self._edit()
            return
        self._discard_body_or_close()
        self._send(404, _envelope("Not found", "invalid_request_error", "not_found"))

    def _edit(self) -> None:
        provider = self.server.provider
        number = provider._next_request_number()
        request_id = f"req_{number}"
        headers = {name.lower(): value for name, value in self.headers.items()}
        fields: dict[str, str] = {}
        files: dict[str, tuple[str, str, int]] = {}
        fingerprint = ""
        reserved = False
        fault: str | None = None

        def record(status: int, *, paid: bool = False) -> None:
            nonlocal reserved
            release, reserved = reserved, False
            provider._record(
                RecordedRequest(fields, files, headers, fingerprint, status, request_id, fault),
                reserved=release,
                paid=paid,
            )

        problem: str | None = None
        parts: list[_Part] = []
        arrived = time.monotonic()
        try:
            body = self._read_body()
            # `latency` is the time from a whole upload to the reply, the server's own work
            # included, as a client sees a real provider: a benchmark's bound C/L then holds.
            arrived = time.monotonic()
            parts = _parse_multipart(self.headers.get("Content-Type", ""), body)
        except _BadRequest as exc:
            problem = str(exc)
        except OSError:
            self.close_connection = True
            record(0)
            return

        uploads: dict[str, _Part] = {}
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
            image_digest = _digest(image.data)
            mask_digest = _digest(mask.data) if mask is not None else None
            fingerprint = _fingerprint(image_digest, mask_digest, prompt, model)
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
        try:
            if provider._sleep(delay):
                self.close_connection = True
                record(0)
                return
            if fault is not None and fault not in _SUCCESS_LIKE:
                self._reply_fault(fault, request_id, record)
            elif problem is not None:
                record(400)
                self._send(
                    400,
                    _envelope(problem, "invalid_request_error", "invalid_request"),
                    headers=[("x-request-id", request_id)],
                )
            else:
                assert image is not None and prompt is not None  # no problem implies both
                self._reply_success(fault, request_id, image, image_digest, mask, prompt, n, record)
        finally:
            if reserved:
                # Only a bug gets here; its reservation must not block later edits.
                provider._record(
                    RecordedRequest(fields, files, headers, fingerprint, 0, request_id, fault),
                    reserved=True,
                    paid=False,
                )

    def _reply_success(
        self,
        fault: str | None,
        request_id: str,
        image: _Part,
        image_digest: bytes,
        mask: _Part | None,
        prompt: str,
        n: int,
        record: Callable[..., None],
    ) -> None:
        provider = self.server.provider
        headers = [("x-request-id", request_id), ("x-ratelimit-remaining-requests", "1000")]
        usage = json.dumps(_usage(prompt, mask is not None, n)).encode()
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
                _edit(image.data, image_digest, mask.data if mask else None, index)
                for index in range(n)
            ]
        except Exception as exc:  # any decode failure is the client's bad input
            record(400)
            self._send(
                400,
                _envelope(f"Invalid image: {exc}", "invalid_request_error", "invalid_request"),
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
        record(200, paid=fault is None)
        self._send(200, body, headers=headers)

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
            self._send(404, _HTML_404, "text/html; charset=utf-8", headers)
            return
        if fault not in _FAULT_REPLIES:
            # Only reachable through script.append(), which cannot validate its argument.
            status, message, type_, code = 500, f"FakeProvider: unknown fault {fault!r}", "", ""
        else:
            status, message, type_, code = _FAULT_REPLIES[fault]
        if fault == "rate_limit" and provider.retry_after is not None:
            headers.append(("Retry-After", _format_seconds(provider.retry_after)))
        record(status)
        self._send(
            status,
            _envelope(message.replace("{request_id}", request_id), type_, code),
            headers=headers,
        )

    def _abort(self) -> None:
        """Close with an RST instead of a FIN, as a crashing proxy would."""
        try:
            # The buffered reader holds a reference that would keep the descriptor open.
            self.rfile.close()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


# Faults whose reply is (the start of) a normal success.
_SUCCESS_LIKE = frozenset({"slow", "truncate", "empty_200"})

_FAULT_REPLIES: dict[str, tuple[int, str, str, str]] = {
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


# --------------------------------------------------------------------------- command line


def _parse_fault_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for item in filter(None, (piece.strip() for piece in text.split(","))):
        name, equals, value = item.partition("=")
        if not equals:
            raise argparse.ArgumentTypeError(f"expected NAME=PROBABILITY, got {item!r}")
        try:
            mix[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a probability: {value!r}") from None
    try:
        _validate_mix(mix)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return mix


def main(argv: list[str] | None = None) -> None:
    """Serve a fake provider until SIGTERM or SIGINT, printing its base URL first."""
    parser = argparse.ArgumentParser(
        prog="python -m runner.testing", description="Fake image-edit provider over HTTP."
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per edit")
    parser.add_argument(
        "--api-key", default="test-key", help="required bearer token; '' accepts any request"
    )
    parser.add_argument("--payment-after", type=int, default=None, metavar="K")
    parser.add_argument("--reply", choices=("b64_json", "url"), default="b64_json")
    parser.add_argument(
        "--fault-mix",
        type=_parse_fault_mix,
        default=None,
        metavar="NAME=P,...",
        help="random faults, e.g. rate_limit=0.1,server_error=0.05",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with FakeProvider(
            api_key=args.api_key or None,
            latency=args.latency,
            payment_after=args.payment_after,
            reply=args.reply,
            fault_mix=args.fault_mix,
            seed=args.seed,
            port=args.port,
        ) as provider:
            print(provider.base_url, flush=True)
            # A timed wait so that the signal handler gets to run promptly on every platform.
            while not done.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    main()
