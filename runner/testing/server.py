"""Machinery shared by the fake providers: the HTTP server, handler plumbing, lifecycle,
and the fault knobs (`script`, `fault_mix`).

Each fake is a real HTTP/1.1 server on 127.0.0.1, not a mock transport, so connection
pooling, keep-alive, resets and truncated bodies are exercised exactly as they would be
against a remote API.
"""

from __future__ import annotations

import collections
import contextlib
import random
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar

from runner.testing.multipart import BadRequest

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_RECORDED",
    "BaseHandler",
    "FakeBase",
    "FakeServer",
    "format_seconds",
    "validate_fault",
    "validate_mix",
]

MAX_BODY_BYTES = 64 * 1024 * 1024

P = TypeVar("P")


def validate_fault(name: object, names: tuple[str, ...]) -> str:
    if not isinstance(name, str) or name not in names:
        raise ValueError(f"unknown fault {name!r}; expected one of {', '.join(names)}")
    return name


def validate_mix(
    mix: Mapping[str, float] | None, names: tuple[str, ...]
) -> dict[str, float] | None:
    if mix is None:
        return None
    checked = {validate_fault(name, names): float(p) for name, p in mix.items()}
    if any(not 0.0 <= p <= 1.0 for p in checked.values()):
        raise ValueError("fault_mix probabilities must lie in [0, 1]")
    if sum(checked.values()) > 1.0 + 1e-9:
        raise ValueError("fault_mix probabilities must add up to at most 1")
    return checked


def format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


MAX_RECORDED = 10_000  # requests kept for inspection; counters count them all
Recorded = TypeVar("Recorded")


class FakeBase(Generic[Recorded]):
    """Lifecycle (start/stop, context manager, port), fault knobs and request counters of
    a fake provider.

    Subclasses set `FAULT_NAMES` and `HANDLER`, and guard their own state with `_lock`.
    """

    FAULT_NAMES: ClassVar[tuple[str, ...]] = ()
    HANDLER: ClassVar[type[BaseHTTPRequestHandler]]

    def __init__(
        self,
        *,
        script: Iterable[str | None],
        fault_mix: Mapping[str, float] | None,
        seed: int,
        port: int,
    ) -> None:
        self._port = port
        self._lock = threading.Lock()
        self._script: collections.deque[str | None] = collections.deque()
        self.script = script
        self._fault_mix = validate_mix(fault_mix, self.FAULT_NAMES)
        self._rng = random.Random(seed)
        self._server: FakeServer[Any] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._requests_total = 0
        self._status_counts: collections.Counter[int] = collections.Counter()
        self._paid: collections.Counter[str] = collections.Counter()
        self._received: collections.Counter[str] = collections.Counter()
        self._requests: collections.deque[Recorded] = collections.deque(maxlen=MAX_RECORDED)
        self._in_flight = 0  # requests between a whole upload and the end of their reply
        self._in_flight_peak = 0

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
    def in_flight_peak(self) -> int:
        """The most requests this fake was working on at once: what a concurrency limit
        (one runner's, or a whole fleet's) must keep under."""
        with self._lock:
            return self._in_flight_peak

    def _flight(self, change: int) -> None:
        with self._lock:
            self._in_flight += change
            self._in_flight_peak = max(self._in_flight_peak, self._in_flight)

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def _clear_counters(self) -> None:
        """Zero the shared counters; the caller holds `_lock`."""
        self._requests_total = 0
        self._status_counts.clear()
        self._paid.clear()
        self._received.clear()
        self._requests.clear()
        self._in_flight_peak = self._in_flight

    def _count_request(self) -> int:
        with self._lock:
            self._requests_total += 1
            return self._requests_total

    def _note_received(self, fingerprint: str) -> None:
        with self._lock:
            self._received[fingerprint] += 1

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        name = type(self).__name__
        if self._server is not None:
            raise RuntimeError(f"{name} is already running")
        self._stopping = threading.Event()
        server = FakeServer(("127.0.0.1", self._port), self, self.HANDLER)
        self._server = server
        self._thread = threading.Thread(
            # A short poll keeps stop() quick; serve_forever only notices shutdown() then.
            target=server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"{name}:{server.server_address[1]}",
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

    def __enter__(self) -> Self:
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
            raise RuntimeError(f"{type(self).__name__} is not running; call start() first")
        return int(self._server.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---------------------------------------------------------------- fault knobs

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
            None if entry is None else validate_fault(entry, self.FAULT_NAMES) for entry in entries
        )
        with self._lock:
            self._script = checked

    @property
    def fault_mix(self) -> dict[str, float] | None:
        return None if self._fault_mix is None else dict(self._fault_mix)

    @fault_mix.setter
    def fault_mix(self, mix: Mapping[str, float] | None) -> None:
        checked = validate_mix(mix, self.FAULT_NAMES)
        with self._lock:
            self._fault_mix = checked

    def _draw_fault_locked(self) -> str | None:
        """The next script entry, else a draw from `fault_mix`; the caller holds `_lock`."""
        if self._script:
            return self._script.popleft()
        if self._fault_mix:
            draw = self._rng.random()
            for name, probability in self._fault_mix.items():
                if draw < probability:
                    return name
                draw -= probability
        return None

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the server is stopping; True when the sleep was cut short."""
        return self._stopping.wait(seconds) if seconds > 0 else self._stopping.is_set()


# --------------------------------------------------------------------------- HTTP


class FakeServer(ThreadingHTTPServer, Generic[P]):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(
        self, address: tuple[str, int], provider: P, handler: type[BaseHTTPRequestHandler]
    ) -> None:
        self.provider = provider
        self._name = type(provider).__name__
        self._connections: set[socket.socket] = set()
        # ThreadingMixIn does not keep daemon threads, and stop() must join them.
        self._handlers: list[threading.Thread] = []
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

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
            name=f"{self._name}-conn:{client_address[1]}",
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


class BaseHandler(BaseHTTPRequestHandler):
    """Body reading and reply writing; the dialects add the routes."""

    protocol_version = "HTTP/1.1"
    sys_version = ""
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown test and benchmark output

    def _read_body(self) -> bytes:
        """The request body; raises BadRequest (and marks the connection to close)."""
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
            raise BadRequest(f"invalid Content-Length {raw!r}") from None
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise BadRequest("request body too large")
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
                raise BadRequest("malformed chunked body") from None
            if size == 0:
                while self.rfile.readline(1024).strip():
                    pass  # trailers carry nothing the fake needs
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                self.close_connection = True
                raise BadRequest("request body too large")
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
        except BadRequest:
            self.close_connection = True

    def _abort(self) -> None:
        """Close with an RST instead of a FIN, as a crashing proxy would."""
        try:
            # The buffered reader holds a reference that would keep the descriptor open.
            self.rfile.close()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
