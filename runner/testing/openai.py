"""A fake OpenAI/CometAPI image-edit provider: `POST /v1/images/edits` on 127.0.0.1.

It can be told to misbehave in every way the runner must survive (see `FAULTS`).

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
* `echo_key=True` plays a provider that sends the key back, as some gateways do: in every
  `x-request-id`, error message, HTML error page and in the reply's `usage` JSON.
* `drip` answers a normal 200 (headers with the full Content-Length) and then sends its body
  one byte every `DRIP_INTERVAL` seconds; it counts under 200, never in `paid`.

An edit request is judged in this order: credentials (401), then the body (400 for bad
multipart, a missing image or prompt, `n` outside 1..10, a mask of another size or an
image Pillow cannot decode), then the fault. Rejected requests consume no script entry.
Replies are always PNG whatever `output_format` asks for.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Mapping
from typing import ClassVar, Literal

from runner.testing.imaging import digest, fingerprint
from runner.testing.openai_batch import FakeBatchAPI
from runner.testing.openai_http import (
    DRIP_INTERVAL,
    EDIT_PATH,
    FAULTS,
    MAX_FILES,
    SLOW_EXTRA_SECONDS,
    OpenAIHandler,
    RecordedRequest,
)
from runner.testing.server import MAX_RECORDED, FakeBase

__all__ = [
    "DRIP_INTERVAL",
    "EDIT_PATH",
    "FAULTS",
    "MAX_FILES",
    "MAX_RECORDED",
    "SLOW_EXTRA_SECONDS",
    "FakeProvider",
    "RecordedRequest",
]


class FakeProvider(FakeBase[RecordedRequest]):
    """An in-process HTTP server playing a paid image-edit API; see the module docstring.

    `latency`, `payment_after`, `script` and `fault_mix` may be changed while it runs.
    """

    FAULT_NAMES: ClassVar[tuple[str, ...]] = FAULTS
    HANDLER = OpenAIHandler

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
        echo_key: bool = False,
        port: int = 0,
    ) -> None:
        if reply not in ("b64_json", "url"):
            raise ValueError(f"reply must be 'b64_json' or 'url', not {reply!r}")
        self.api_key = api_key
        self.latency = latency
        self.payment_after = payment_after
        self.retry_after = retry_after
        self.reply = reply
        self.echo_key = echo_key
        super().__init__(script=script, fault_mix=fault_mix, seed=seed, port=port)

        self._paid_total = 0
        # Normal replies decided on but not yet charged; counted against payment_after
        # so that concurrent requests cannot overshoot it.
        self._reserved = 0
        self._files: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        # OpenAI's Files and Batch APIs (openai_batch.py): `mode: batch` talks to these.
        self.batch = FakeBatchAPI(self)
        self._file_ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    def top_up(self) -> None:
        with self._lock:
            self.payment_after = None

    def reset_counters(self) -> None:
        """Zero every counter; `payment_after` then counts paid edits from zero again."""
        with self._lock:
            self._clear_counters()
            self._paid_total = 0

    @staticmethod
    def fingerprint(image: bytes, mask: bytes | None, prompt: str, model: str) -> str:
        """sha256 hex identifying one edit's inputs: maps a job to the requests it made."""
        return fingerprint(digest(image), digest(mask) if mask is not None else None, prompt, model)

    # ---------------------------------------------------------------- used by the handler

    def _echo(self, text: str, suffix: str = " (key {key})") -> str:
        """`text` with the key appended when this fake plays a provider that echoes it."""
        if not (self.echo_key and self.api_key):
            return text
        return text + suffix.format(key=self.api_key)

    def _next_request_number(self) -> int:
        return self._count_request()

    def _choose_fault(self) -> str | None:
        with self._lock:
            limit = self.payment_after
            if limit is not None and self._paid_total + self._reserved >= limit:
                return "payment"
            fault = self._draw_fault_locked()
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
