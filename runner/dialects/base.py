"""The Provider protocol and what is common to reading providers' answers.

A provider turns an EditRequest into an EditResult or raises one ProviderError subclass;
deciding *which* subclass is this module's job (PROVIDERS.md §4.1): the body first, since
gateways put quota errors behind 403s and 500s, then the status.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from runner.dialects.replies import loads
from runner.dialects.transfer import DEFAULT_LIMITS, ReplyLimits, read_capped, read_head
from runner.errors import (
    AttemptTimeout,
    AuthRejected,
    NotDelivered,
    PaymentRequired,
    PermanentJobError,
    ProviderError,
    RetryableError,
    Throttled,
)

# Codes that mean "no money left" whatever status carries them: OpenAI's 429 quota codes,
# and the new-api gateway's (which CometAPI appears to run) user and key quota codes.
PAYMENT_CODES = frozenset(
    {
        "insufficient_quota",
        "insufficient_user_quota",
        "pre_consume_token_quota_failed",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
        "billing_hard_limit_reached",
        "insufficient_balance",
    }
)
PAYMENT_PHRASES = ("quota is not enough", "insufficient balance", "insufficient_quota")
# A 500 that is really the client's fault (CometAPI): retrying sends the same bad request.
PERMANENT_CODES = frozenset({"invalid_request", "moderation_blocked", "invalid_mask_image_format"})
MODEL_GONE_PHRASES = ("no available channel",)
_REQUEST_ID = re.compile(r"\(request id: ([^)]+)\)")
REQUEST_ID_HEADERS = ("x-request-id", "x-oneapi-request-id", "request-id")


@dataclass(frozen=True, slots=True)
class ErrorBody:
    message: str
    code: str | None = None
    type: str | None = None


def parse_error_body(response: httpx.Response) -> ErrorBody:
    """`{"error": {...}}` (OpenAI, CometAPI), `{"error": "..."}` (Venice), a bare
    `{"message"|"detail": ...}`, or not JSON at all (proxies, gateways, HTML pages)."""
    try:
        body = loads(response.content)
    except ValueError:
        return ErrorBody(message=_non_json_summary(response))
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = error.get("message") or json.dumps(error)[:300]
        return ErrorBody(str(message), _text(error.get("code")), _text(error.get("type")))
    code = _text(body.get("code")) if isinstance(body, dict) else None
    if isinstance(error, str):
        return ErrorBody(error, code)
    for key in ("message", "detail"):
        if isinstance(body, dict) and isinstance(body.get(key), str):
            return ErrorBody(body[key], code)
    return ErrorBody(message=json.dumps(body)[:300])


_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def _non_json_summary(response: httpx.Response) -> str:
    """What a person needs from a non-JSON body: its kind, and its words if it has some."""
    kind = response.headers.get("content-type", "no content type").split(";")[0].strip()
    content = response.content
    if "html" in kind:  # a page's title says it; its markup would only clutter the line
        found = _TITLE.search(content[:4096])
        text = found.group(1) if found else b""
    else:
        text = content[:300] if kind.startswith("text/") else b""
    words = " ".join(text.decode("utf-8", "replace").split())
    head = f"non-JSON reply ({kind}, {len(content)} bytes)"
    return f"{head}: {words}" if words else head


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def request_id_of(response: httpx.Response, message: str = "") -> str | None:
    for header in REQUEST_ID_HEADERS:
        if value := response.headers.get(header):
            return str(value)
    found = _REQUEST_ID.search(message)
    return found.group(1) if found else None


def classify(response: httpx.Response, now: float) -> ProviderError:
    """The error a non-success answer stands for; `now` is wall-clock epoch seconds."""
    status = response.status_code
    body = parse_error_body(response)
    code = (body.code or "").lower()
    request_id = request_id_of(response, body.message)
    retry_after = retry_after_seconds(response.headers, now)

    def make(kind: type[ProviderError], message: str = body.message) -> ProviderError:
        return kind(
            message,
            status_code=status,
            provider_code=body.code,
            request_id=request_id,
            retry_after=retry_after,
        )

    lowered = body.message.lower()
    if (
        status == 402
        or code in PAYMENT_CODES
        or (body.type or "").lower() == "insufficient_quota"
        or any(phrase in lowered for phrase in PAYMENT_PHRASES)
    ):
        return make(PaymentRequired)
    if status in (401, 403):
        return make(AuthRejected)
    if code in PERMANENT_CODES or any(p in lowered for p in MODEL_GONE_PHRASES):
        return make(PermanentJobError)
    should_retry = response.headers.get("x-should-retry")
    if should_retry == "false":
        return make(PermanentJobError)
    if should_retry == "true" or status in (408, 409, 425, 429) or status >= 500:
        return make(Throttled if is_throttling(status, response.headers) else RetryableError)
    if 300 <= status < 400:
        target = response.headers.get("location", "elsewhere")
        return make(PermanentJobError, f"redirected to {target}: check base_url")
    if status == 404 and body.code is None:
        return make(PermanentJobError, f"{body.message}: check base_url and model")
    return make(PermanentJobError)


# "Busy, come back later" statuses: too many requests, service unavailable (OpenAI's and
# CometAPI's "overloaded", Venice's "at capacity"), and the 529 some gateways send.
THROTTLE_STATUSES = frozenset({429, 503, 529})


def is_throttling(status: int, headers: Mapping[str, str]) -> bool:
    """A rate-limit answer: nothing was done and nothing billed; the provider asks us to
    slow down (a quota 429 is classified before this is asked)."""
    return status in THROTTLE_STATUSES or any(
        name in headers for name in ("retry-after", "retry-after-ms")
    )


async def post_streamed(
    client: httpx.AsyncClient,
    url: str,
    *,
    limits: ReplyLimits = DEFAULT_LIMITS,
    images: int = 1,
    **request: Any,
) -> tuple[httpx.Response, bytes]:
    """POST and read the whole reply; the body is returned apart from the response object.

    Streamed, the reply (an image of up to tens of MB) is ours and goes when the caller drops
    it, instead of riding on the Response; only error bodies are put on a Response, for
    classifying. A 200 over `limits` (for `images` images) is refused, an error body is cut
    to its head, and the whole exchange has `limits.deadline_s`. Transport failures come back
    as ProviderErrors.
    """
    status: int | None = None  # once the status line is in: a 200 cut short was billed
    try:
        with anyio.fail_after(limits.deadline_s):
            async with client.stream("POST", url, **request) as streamed:
                status = streamed.status_code
                if status == 200:
                    content = await read_capped(streamed, limits.reply_cap(images))
                else:
                    content = await read_head(streamed)
    except TimeoutError as exc:
        raise AttemptTimeout(
            f"no complete reply within {limits.deadline_s:g} s (the profile's timeout_s); "
            "the provider may have billed it",
            status_code=status,
        ) from exc
    except httpx.HTTPError as exc:
        # Raised straight from the call: an error held in a local of this frame would make a
        # cycle with its own traceback, keeping the upload (`request`) until a full garbage
        # collection.
        raise translate_transport_error(exc, status) from exc
    # Its stream points back at the response, which holds the request and so our upload: a
    # cycle only a full garbage collection frees (encode/httpx#3733). Read and closed, the
    # stream is not needed; dropping it lets the whole exchange go at once.
    streamed.stream = httpx.ByteStream(b"")
    if streamed.status_code == 200:
        return streamed, content
    # The body is decoded already and may be cut short: its length and encoding headers
    # would no longer describe it.
    headers = [(k, v) for k, v in streamed.headers.multi_items() if k not in _BODY_HEADERS]
    complete = httpx.Response(
        streamed.status_code, headers=headers, content=content, request=streamed.request
    )
    return complete, content


_BODY_HEADERS = frozenset({"content-length", "content-encoding", "transfer-encoding"})

# No connection, or it broke while the request was being written: a provider cannot act on
# (nor bill) a request it never received whole.
NOT_DELIVERED = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteError,
                 httpx.WriteTimeout)  # fmt: skip


def translate_transport_error(exc: httpx.HTTPError, status: int | None = None) -> ProviderError:
    """Network failures. A request that never got through is weather; a read timeout may
    have been processed (and billed) upstream, hence its own class; anything else broke
    after the request was sent. `status`: the reply's, if its status line had come in."""
    name = type(exc).__name__
    detail = str(exc) or name
    if isinstance(exc, httpx.ReadTimeout):
        message = f"no reply in time ({detail}); the provider may have billed it"
        return AttemptTimeout(message, status_code=status)
    if isinstance(exc, NOT_DELIVERED):
        return NotDelivered(f"not delivered: {name}: {detail}", status_code=status)
    return RetryableError(f"network error: {name}: {detail}", status_code=status)


_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_go_duration(value: str) -> float | None:
    """OpenAI's reset headers: '17ms', '1s', '6m0s', '1h2m3.5s'."""
    value = value.strip()
    parts = _GO_DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def _seconds(text: str, scale: float = 1.0) -> float | None:
    try:
        value = float(text) * scale
    except ValueError:
        return None
    return max(0.0, value) if math.isfinite(value) else None


def _http_date_delay(text: str, now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def retry_after_seconds(headers: Mapping[str, str], now: float) -> float | None:
    """The server's own wait hint, in seconds (PROVIDERS.md §4.2, in its order); a value
    that does not parse counts as no hint. Callers cap it: a hint is not an order."""
    if (ms := headers.get("retry-after-ms")) is not None and (
        value := _seconds(ms, 1e-3)
    ) is not None:
        return value
    if (after := headers.get("retry-after")) is not None:
        value = _seconds(after)
        if value is None and after.strip():
            value = _http_date_delay(after, now)
        if value is not None:
            return value
    resets = [
        parse_go_duration(headers[name])
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
        if name in headers
    ]
    known = [value for value in resets if value is not None]
    return max(known) if known else None
