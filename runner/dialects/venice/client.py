"""The Venice dialect: `POST {base_url}/image/edit` (or `/image/multi-edit`), the edited
image as the raw reply body, account facts in headers (PROVIDERS.md §3, §4).

Auth is an API key (Bearer) or an x402 wallet (a fresh SIGN-IN-WITH-X header per request).
"""

from __future__ import annotations

import base64
import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from runner.cpu_work import run_cpu_work
from runner.dialects.base import (
    is_throttling,
    parse_error_body,
    post_streamed,
    request_id_of,
    retry_after_seconds,
)
from runner.dialects.replies import loads
from runner.dialects.transfer import DEFAULT_LIMITS, ReplyLimits
from runner.dialects.venice.catalogue import (
    VENICE_LIMITS,
    VeniceModel,
    check_job,
    limits_for,
)
from runner.dialects.venice.siwx import HEADER as SIWX_HEADER
from runner.dialects.venice.siwx import SiwxSigner
from runner.errors import (
    AttemptTimeout,
    AuthRejected,
    PaymentRequired,
    PermanentJobError,
    ProviderError,
    RetryableError,
    Throttled,
)
from runner.files.preflight import read_image_info
from runner.files.uploads import close_uploads, part_bytes, upload_body
from runner.money import format_usd
from runner.records import EditRequest, EditResult, ImageLimits, ReplyFacts
from runner.redact import redact_error, redact_result

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
TOP_UP_URL = "https://venice.ai/settings/api"
LOCKOUT_S = 30.0  # "more than 20 failed requests within 30 s blocks the key for 30 s"
SPEND_LIMIT_CODES = frozenset(
    {"API_KEY_USD_SPEND_LIMIT_EXCEEDED", "API_KEY_DIEM_SPEND_LIMIT_EXCEEDED"}
)
PAYMENT_CODES = SPEND_LIMIT_CODES | {"INSUFFICIENT_BALANCE", "PAYMENT_REQUIRED"}
MODEL_CODES = frozenset({"PRO_ONLY_MODEL", "MODEL_NOT_FOUND", "INVALID_MODEL"})
INVALID_SIGN_IN = "X402_INVALID_SIGN_IN"
_USDC_UNITS = 1_000_000  # x402 `amount` is in USDC base units (6 decimals)
# Set from the job itself; a param of the same name would add a second, conflicting field.
_RESERVED = frozenset({"image", "images", "mask", "prompt", "model", "modelId"})


class VeniceProvider:
    limits: ImageLimits = VENICE_LIMITS

    def __init__(
        self,
        name: str,
        base_url: str,
        client: httpx.AsyncClient,
        *,
        api_key: str | None = None,
        signer: SiwxSigner | None = None,
        catalogue: Mapping[str, VeniceModel] | None = None,
        wall_clock: Callable[[], float] = time.time,
        json_limit_bytes: int = 256 * 1024,
        limits: ReplyLimits = DEFAULT_LIMITS,
    ) -> None:
        if (api_key is None) == (signer is None):
            raise ValueError("VeniceProvider needs exactly one of api_key and signer")
        self.name = name
        self._base = base_url.rstrip("/")
        self._client = client
        # Per request, never on the client: the catalogue fetch shares it and is public.
        self._bearer = {"Authorization": f"Bearer {api_key}"} if api_key is not None else {}
        self._signer = signer
        self._catalogue = catalogue
        self._wall_clock = wall_clock
        self._json_limit = json_limit_bytes
        self._limits = limits

    def __repr__(self) -> str:  # the key stays out of logs and tracebacks
        auth = f"wallet {self._signer.address}" if self._signer else "api key"
        return f"VeniceProvider(name={self.name!r}, base_url={self._base!r}, auth={auth})"

    def limits_for(self, model: str) -> ImageLimits:
        return limits_for(model, self._catalogue)

    def check_request(self, request: EditRequest) -> None:
        images = 1 if request.mask is None else 2
        check_job(request.model, request.params, request.prompt, images, self._catalogue)

    async def edit(self, request: EditRequest) -> EditResult:
        """The provider boundary: every text in what comes back is redacted here."""
        try:
            return redact_result(await self._edit(request))
        except ProviderError as exc:
            redact_error(exc)
            raise

    async def _edit(self, request: EditRequest) -> EditResult:
        response, content = await self._post(request)
        if self._signer and response.status_code == 401 and _is_bad_sign_in(response):
            # A clock skew or a consumed nonce: one fresh signature settles it, or nothing will.
            response, content = await self._post(request)
            if response.status_code == 401 and _is_bad_sign_in(response):
                error = classify_venice(response, self._wall_clock())
                raise AuthRejected(
                    f"Venice refused the wallet sign-in (SIGN-IN-WITH-X) twice for "
                    f"{self._signer.address}: {error.message}",
                    status_code=401,
                    provider_code=INVALID_SIGN_IN,
                    request_id=error.request_id,
                    facts=error.facts,
                )
        if response.status_code != 200:
            raise classify_venice(response, self._wall_clock())
        facts = parse_facts(response.headers, self._wall_clock())
        request_id = response.headers.get("cf-ray")
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in IMAGE_TYPES:
            raise RetryableError(
                f"bad_response: HTTP 200 with content type {kind or 'none'}, not an image "
                f"({len(content)} bytes)",
                status_code=200,
                request_id=request_id,
                facts=facts,
            )
        image = await run_cpu_work(len(content), read_image_info, content)
        if image is None:
            raise RetryableError(
                f"bad_response: reply image ({kind}, {len(content)} bytes) does not decode",
                status_code=200,
                request_id=request_id,
                facts=facts,
            )
        return EditResult(images=(image,), usage=None, request_id=request_id, facts=facts)

    def _headers(self) -> dict[str, str]:
        if self._signer is not None:  # a header per request: each carries its own nonce
            return {SIWX_HEADER: self._signer.header()}
        return dict(self._bearer)

    def _request_body(self, request: EditRequest) -> tuple[str, dict[str, Any]]:
        """URL and httpx keyword arguments: JSON for small inputs, multipart for large ones
        (base64 adds a third, which makes 413s likelier)."""
        # `/image/edit` has no mask field, so masks go to multi-edit as a second image. Its
        # JSON schema has no `quality` either (additionalProperties: false; whether it is
        # accepted anyway is UNCONFIRMED) while multi-edit documents it: quality goes there.
        multi = request.mask is not None or "quality" in request.params
        parts = [request.image] if request.mask is None else [request.image, request.mask]
        url = f"{self._base}/image/multi-edit" if multi else f"{self._base}/image/edit"
        model_field = "modelId" if multi else "model"
        params = {k: _wire_value(k, v) for k, v in request.params.items() if k not in _RESERVED}
        if sum(part.size for part in parts) <= self._json_limit:
            # JSON carries the images whole (base64): read and checked here, small by now.
            named = zip(("image", "mask"), parts, strict=False)
            encoded = [base64.b64encode(part_bytes(f, part)).decode("ascii") for f, part in named]
            images: dict[str, Any] = {"images": encoded} if multi else {"image": encoded[0]}
            body = {**params, "prompt": request.prompt, model_field: request.model}
            return url, {"json": {**body, **images}}
        fields = {name: _form_value(value) for name, value in params.items()}
        fields.update({"prompt": request.prompt, model_field: request.model})
        name = "images" if multi else "image"
        files = [
            (name, (part.filename, upload_body(field, part), part.content_type))
            for field, part in zip(("image", "mask"), parts, strict=False)
        ]
        return url, {"data": fields, "files": files}

    async def _post(self, request: EditRequest) -> tuple[httpx.Response, bytes]:
        url, body = self._request_body(request)
        try:
            return await post_streamed(
                self._client, url, headers=self._headers(), limits=self._limits, **body
            )
        finally:
            close_uploads(body.get("files", ()))


def _wire_value(name: str, value: Any) -> Any:
    """Venice's schemas enumerate `jpeg` only (their prose also names `jpg`)."""
    return "jpeg" if name == "output_format" and value == "jpg" else value


def _form_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _is_bad_sign_in(response: httpx.Response) -> bool:
    body = parse_error_body(response)
    return body.code == INVALID_SIGN_IN or INVALID_SIGN_IN in body.message


# --- headers --------------------------------------------------------------------------------


def _float(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _int(value: str | None) -> int | None:
    number = _float(value)
    return int(number) if number is not None and number.is_integer() and number >= 0 else None


def _flag(value: str | None) -> bool | None:
    text = (value or "").strip().lower()
    return True if text in ("true", "1", "yes") else False if text in ("false", "0", "no") else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A text header on one line and of sane length, for messages and the database."""
    text = " ".join(headers.get(name, "").split())[:200]
    return text or None


def reset_in_seconds(value: str | None, now: float) -> float | None:
    """`x-ratelimit-reset-requests`: a Unix time, its unit unstated (PROVIDERS.md §4.2)."""
    stamp = _float(value)
    if stamp is None or stamp < 0:
        return None
    if stamp > 1e12:
        stamp /= 1000.0
    elif stamp < 1e9:  # before 2001: a duration after all, not a time
        return stamp
    return max(0.0, stamp - now)


def _deprecation(headers: Mapping[str, str]) -> str | None:
    warning = _header(headers, "x-venice-model-deprecation-warning")
    date = _header(headers, "x-venice-model-deprecation-date")
    deprecated = _flag(headers.get("x-venice-deprecated"))
    replacement = _header(headers, "x-venice-deprecated-replacement")
    if not (warning or date or replacement or deprecated):
        return None
    model = _header(headers, "x-venice-model-id") or "this model"
    sentence = warning.rstrip(".") if warning else f"Venice marks {model} as deprecated"
    if date:
        sentence += f" (date: {date})"
    if replacement:
        sentence += f"; use {replacement} instead"
    return sentence + "."


def parse_facts(headers: Mapping[str, str], now: float) -> ReplyFacts:
    """What Venice's headers say; a value that does not parse is left out, never fatal."""
    return ReplyFacts(
        balance_usd=_float(headers.get("x-venice-balance-usd")),
        balance_diem=_float(headers.get("x-venice-balance-diem")),
        balance_after_usd=_float(headers.get("x-balance-remaining")),
        content_violation=_flag(headers.get("x-venice-is-content-violation")),
        served_model=_header(headers, "x-venice-model-id"),
        enhanced_prompt="x-venice-enhanced-prompt" in headers,
        deprecation=_deprecation(headers),
        rate_limit=_int(headers.get("x-ratelimit-limit-requests")),
        rate_remaining=_int(headers.get("x-ratelimit-remaining-requests")),
        rate_reset_in_s=reset_in_seconds(headers.get("x-ratelimit-reset-requests"), now),
    )


# --- errors ---------------------------------------------------------------------------------


def _json_object(content: bytes) -> Mapping[str, Any]:
    try:
        body = loads(content)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _usd(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return format_usd(number) if math.isfinite(number) else None


def _payment_message(body: Mapping[str, Any], message: str, code: str, facts: ReplyFacts) -> str:
    if "x402Version" in body or isinstance(body.get("accepts"), list):
        offer = next((a for a in body.get("accepts") or [] if isinstance(a, dict)), {})
        try:
            amount: str | None = format_usd(int(offer["amount"]) / _USDC_UNITS)
        except (KeyError, TypeError, ValueError):
            amount = None
        asked = f" (asked {amount} USDC on {offer.get('network', '?')})" if amount else ""
        return (
            f"Venice wants payment{asked}: the request was not signed in, or the wallet has "
            "no prepaid credit. Use an API key with balance, or sign in with a wallet "
            "(auth: x402) and top up its credit with POST /api/v1/x402/top-up."
        )
    if code == "PAYMENT_REQUIRED" or body.get("reason") == "insufficient_balance":
        parts = [str(body.get("message") or message).rstrip(".")]
        for label, key in (
            ("current balance", "currentBalanceUsd"),
            ("minimum balance", "minimumBalanceUsd"),
            ("suggested top-up", "suggestedTopUpUsd"),
            ("minimum top-up", "minimumTopUpUsd"),
        ):
            if (usd := _usd(body.get(key))) is not None:
                parts.append(f"{label} {usd}")
        steps = body.get("topUpInstructions")
        steps = steps if isinstance(steps, dict) else {}
        numbered = [
            f"{n}. {' '.join(str(steps[f'step{n}']).split())}"
            for n in (1, 2, 3) if steps.get(f"step{n}")
        ]  # fmt: skip
        if numbered:
            parts.append("to top up: " + " ".join(numbered))
        return "Venice wallet credit is too low: " + "; ".join(parts) + "."
    if code in SPEND_LIMIT_CODES:
        advice = f"raise the API key's spend limit at {TOP_UP_URL}"
    else:
        advice = f"top up at {TOP_UP_URL}"
    before = facts.balance_usd
    balance = f" (balance before the request: {format_usd(before)})" if before is not None else ""
    return f"{message.rstrip('.')}{balance}; {advice}."


def _venice_reset(headers: Mapping[str, str], now: float) -> float | None:
    resets = [
        reset_in_seconds(headers.get("x-ratelimit-reset-requests"), now),
        _float(headers.get("x-ratelimit-reset-tokens")),  # already seconds
    ]
    known = [max(0.0, value) for value in resets if value is not None]
    return max(known) if known else None


_DETAILS_CHARS = 300


def _zod_errors(node: Any, path: str, found: list[str], depth: int = 0) -> None:
    """Collect zod's `format()` tree: `{"_errors": [...], "field": {"_errors": [...]}}`."""
    if not isinstance(node, dict) or depth > 8:  # a request's fields nest a level or two
        return
    errors = node.get("_errors")
    if isinstance(errors, list):
        found.extend(f"{path}: {m}" if path else str(m) for m in errors)
    for name, child in node.items():
        if name != "_errors":
            _zod_errors(child, f"{path}.{name}" if path else str(name), found, depth + 1)


def invalid_params(raw: Mapping[str, Any]) -> str | None:
    """A 400's field-by-field reasons (`details`, or zod `issues`), on one short line."""
    found: list[str] = []
    _zod_errors(raw.get("details"), "", found)
    issues = raw.get("issues")
    for issue in issues if isinstance(issues, list) else []:
        if isinstance(issue, dict) and issue.get("message"):
            path = issue.get("path")
            where = ".".join(map(str, path)) if isinstance(path, list) else str(path or "")
            found.append(f"{where}: {issue['message']}" if where else str(issue["message"]))
    if not found:
        return None
    text = " ".join("; ".join(dict.fromkeys(found)).split())  # one line, no repeats
    return text if len(text) <= _DETAILS_CHARS else text[: _DETAILS_CHARS - 1] + "…"


def classify_venice(response: httpx.Response, now: float) -> ProviderError:
    """The error a non-200 Venice answer stands for (PROVIDERS.md §4.1)."""
    status = response.status_code
    body = parse_error_body(response)
    raw = _json_object(response.content)
    if details := invalid_params(raw):  # "Invalid request" alone does not say what to fix
        message = f"{body.message.rstrip('.')}: invalid params: {details}"
        body = dataclasses.replace(body, message=message)
    code = (body.code or "").upper()
    facts = parse_facts(response.headers, now)
    request_id = response.headers.get("cf-ray") or request_id_of(response, body.message)
    retry_after = retry_after_seconds(response.headers, now)

    def make(
        kind: type[ProviderError], message: str = body.message, wait: float | None = retry_after
    ) -> ProviderError:
        return kind(
            message,
            status_code=status,
            provider_code=body.code,
            request_id=request_id,
            retry_after=wait,
            facts=facts,
        )

    if status == 402 or code in PAYMENT_CODES:
        return make(PaymentRequired, _payment_message(raw, body.message, code, facts))
    if code in MODEL_CODES:
        return make(PermanentJobError, f"{body.message} (this model only)")
    if status in (401, 403):
        return make(AuthRejected)
    if status == 429:
        # Only a 429 is about the request window; on a 5xx its reset would be a needless wait.
        hints = [h for h in (retry_after, _venice_reset(response.headers, now)) if h is not None]
        if "too many failed attempts" in body.message.lower():
            hints.append(LOCKOUT_S)  # the key is locked for 30 s whatever the window says
        return make(Throttled, wait=max(hints) if hints else None)
    if status == 504:
        return make(AttemptTimeout, f"{body.message} (gateway timeout: may have been billed)")
    if status in (408, 409, 425) or status >= 500:
        # 503 is Venice's "model at capacity" (or offline): busy, nothing done or billed.
        return make(Throttled if is_throttling(status, response.headers) else RetryableError)
    if 300 <= status < 400:
        target = response.headers.get("location", "elsewhere")
        return make(PermanentJobError, f"redirected to {target}: check base_url")
    if status == 404:
        return make(PermanentJobError, f"{body.message}: check base_url and model")
    return make(PermanentJobError)
