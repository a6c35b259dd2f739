"""Classifying provider answers (PROVIDERS.md §4.1) and reading wait hints (§4.2)."""

from __future__ import annotations

import email.utils
import json
from typing import Any

import httpx
import pytest

from runner.dialects.base import (
    ErrorBody,
    classify,
    parse_error_body,
    parse_go_duration,
    request_id_of,
    retry_after_seconds,
)
from runner.errors import (
    AttemptTimeout,
    AuthRejected,
    PaymentRequired,
    PermanentJobError,
    ProviderError,
    RetryableError,
    Throttled,
)

NOW = 1_800_000_000.0  # wall-clock epoch seconds handed to classify()


def oai_error(
    message: str = "something went wrong", code: str | None = None, type_: str | None = None
) -> dict[str, Any]:
    """The OpenAI / CometAPI envelope."""
    return {"error": {"message": message, "type": type_, "param": "", "code": code}}


def reply(
    status: int,
    body: Any = None,
    headers: dict[str, str] | None = None,
    *,
    html: str | None = None,
    content: bytes | None = None,
) -> httpx.Response:
    if html is not None:
        return httpx.Response(status, html=html, headers=headers)
    if content is not None:
        return httpx.Response(status, content=content, headers=headers)
    return httpx.Response(status, json=body, headers=headers)


# --- classify: the §4.1 table --------------------------------------------------------------

QUOTA_CODES_429 = [
    "insufficient_quota",
    "credit_balance_exhausted",
    "organization_spend_limit_exceeded",
    "project_spend_limit_exceeded",
    "organization_usage_limit_exceeded",
]

CASES: list[Any] = [
    # Stop everything: billing. The body decides before the status.
    pytest.param(reply(402, oai_error("pay up")), PaymentRequired, id="402-openai-body"),
    pytest.param(reply(402, content=b""), PaymentRequired, id="402-empty-body"),
    pytest.param(reply(402, html="<h1>Payment Required</h1>"), PaymentRequired, id="402-html"),
    pytest.param(
        reply(402, {"error": "Insufficient USD or Diem balance to complete request"}),
        PaymentRequired,
        id="402-venice-string-error",
    ),
    pytest.param(
        reply(403, oai_error("user quota is not enough", "insufficient_user_quota", "new_api")),
        PaymentRequired,
        id="403-insufficient_user_quota",
    ),
    pytest.param(
        reply(
            403,
            oai_error(
                "image pre-consumed quota failed, user quota: 12, need quota: 4000",
                "pre_consume_token_quota_failed",
            ),
        ),
        PaymentRequired,
        id="403-pre_consume_token_quota_failed",
    ),
    pytest.param(
        reply(500, oai_error("user quota is not enough (request id: 2026112101)", code="")),
        PaymentRequired,
        id="500-quota-message-no-code",
    ),
    pytest.param(
        reply(429, oai_error("You exceeded your current quota", None, "insufficient_quota")),
        PaymentRequired,
        id="429-type-insufficient_quota",
    ),
    *[
        pytest.param(
            reply(429, oai_error("billing says no", code, "insufficient_quota")),
            PaymentRequired,
            id=f"429-{code}",
        )
        for code in QUOTA_CODES_429
    ],
    *[
        # The code alone is enough, whatever `type` says.
        pytest.param(
            reply(429, oai_error("billing says no", code, "requests")),
            PaymentRequired,
            id=f"429-{code}-code-only",
        )
        for code in QUOTA_CODES_429
    ],
    pytest.param(
        reply(402, oai_error("pay up"), {"x-should-retry": "true"}),
        PaymentRequired,
        id="402-x-should-retry-true-still-payment",
    ),
    # Stop everything: auth.
    pytest.param(reply(401, oai_error("Incorrect API key provided")), AuthRejected, id="401"),
    pytest.param(
        reply(403, oai_error("Country, region, or territory not supported", "unsupported")),
        AuthRejected,
        id="403-plain",
    ),
    # Weather: a rate limit or "overloaded" (retried without using the job's attempts).
    pytest.param(
        reply(429, oai_error("Rate limit reached for requests", "rate_limit_exceeded", "requests")),
        Throttled,
        id="429-rate_limit_exceeded",
    ),
    pytest.param(
        reply(429, oai_error("slow down", "slow_down", "rate_limit_error")),
        Throttled,
        id="429-slow_down",
    ),
    *[
        pytest.param(reply(status, oai_error("upstream trouble")), Throttled, id=str(status))
        for status in (503, 529)
    ],
    pytest.param(
        reply(503, oai_error("overloaded", "server_is_overloaded", "service_unavailable_error")),
        Throttled,
        id="503-server_is_overloaded",
    ),
    pytest.param(
        reply(500, oai_error("busy"), {"retry-after": "3"}), Throttled, id="500-with-retry-after"
    ),
    # Retryable, using one of the job's attempts.
    *[
        pytest.param(reply(status, oai_error("upstream trouble")), RetryableError, id=str(status))
        for status in (408, 409, 500, 502, 504, 524)
    ],
    pytest.param(
        reply(502, html="<html><body>Bad gateway</body></html>"),
        RetryableError,
        id="502-html",
    ),
    pytest.param(
        reply(400, oai_error("try again"), {"x-should-retry": "true"}),
        RetryableError,
        id="400-x-should-retry-true",
    ),
    # Permanent, this job only.
    pytest.param(reply(400, oai_error("bad size", "invalid_value")), PermanentJobError, id="400"),
    pytest.param(
        reply(400, oai_error("blocked", "moderation_blocked", "image_generation_user_error")),
        PermanentJobError,
        id="400-moderation_blocked",
    ),
    pytest.param(
        reply(500, oai_error("bad multipart", "invalid_request", "comet_api_error")),
        PermanentJobError,
        id="500-invalid_request",
    ),
    pytest.param(
        reply(
            503,
            oai_error(
                "no available channel for group default and model gpt-image-1 (distributor) "
                "(request id: 20261121xyz)",
                "model_not_found",
                "comet_api_error",
            ),
        ),
        PermanentJobError,
        id="503-no-available-channel",
    ),
    pytest.param(reply(413, oai_error("too large")), PermanentJobError, id="413"),
    pytest.param(
        reply(413, html="<h1>413 Request Entity Too Large</h1>"), PermanentJobError, id="413-html"
    ),
    pytest.param(
        reply(500, oai_error("internal"), {"x-should-retry": "false"}),
        PermanentJobError,
        id="500-x-should-retry-false",
    ),
]


@pytest.mark.parametrize(("response", "expected"), CASES)
def test_classify_follows_the_providers_table(
    response: httpx.Response, expected: type[ProviderError]
) -> None:
    error = classify(response, NOW)
    assert type(error) is expected
    assert error.status_code == response.status_code


def test_classify_redirect_is_permanent_and_points_at_base_url() -> None:
    response = reply(
        301, content=b"", headers={"location": "https://www.cometapi.com/v1/images/edits"}
    )
    error = classify(response, NOW)
    assert type(error) is PermanentJobError
    assert error.status_code == 301
    assert "base_url" in error.message
    assert "https://www.cometapi.com/v1/images/edits" in error.message


def test_classify_html_404_is_permanent_and_points_at_base_url() -> None:
    response = reply(404, html="<!doctype html><html><body>Not Found</body></html>")
    error = classify(response, NOW)
    assert type(error) is PermanentJobError
    assert error.status_code == 404
    assert error.provider_code is None
    assert "base_url" in error.message
    assert "non-JSON" in error.message
    assert "text/html" in error.message


def test_classify_keeps_status_code_message_and_request_id_header() -> None:
    response = reply(
        429,
        oai_error("Rate limit reached for gpt-image-2", "rate_limit_exceeded", "requests"),
        {"x-request-id": "req_123", "retry-after": "3"},
    )
    error = classify(response, NOW)
    assert isinstance(error, RetryableError)
    assert not isinstance(error, AttemptTimeout)
    assert error.status_code == 429
    assert error.provider_code == "rate_limit_exceeded"
    assert error.request_id == "req_123"
    assert error.message == "Rate limit reached for gpt-image-2"
    assert error.retry_after == 3.0
    assert error.describe() == "HTTP 429 rate_limit_exceeded: Rate limit reached for gpt-image-2"


def test_classify_takes_request_id_from_cometapi_message() -> None:
    message = "upstream error: do request failed (request id: 20261121093011abc123)"
    error = classify(reply(500, oai_error(message, type_="comet_api_error")), NOW)
    assert type(error) is RetryableError
    assert error.request_id == "20261121093011abc123"
    assert error.message == message
    assert error.provider_code is None  # "Some responses leave code empty"


def test_classify_prefers_request_id_header_over_message() -> None:
    response = reply(
        500, oai_error("boom (request id: from-message)"), {"x-request-id": "from-header"}
    )
    assert classify(response, NOW).request_id == "from-header"


def test_classify_venice_string_error_keeps_message_and_code() -> None:
    response = reply(
        402, {"error": "Insufficient USD or Diem balance", "code": "INSUFFICIENT_BALANCE"}
    )
    error = classify(response, NOW)
    assert type(error) is PaymentRequired
    assert error.message == "Insufficient USD or Diem balance"
    assert error.provider_code == "INSUFFICIENT_BALANCE"
    assert error.exit_code == 3


def test_classify_auth_error_exit_code() -> None:
    error = classify(reply(401, oai_error("bad key")), NOW)
    assert isinstance(error, AuthRejected)
    assert error.exit_code == 4


def test_classify_hands_the_wait_hint_through() -> None:
    when = email.utils.formatdate(NOW + 10, usegmt=True)
    error = classify(reply(503, oai_error("busy"), {"retry-after": when}), NOW)
    assert type(error) is Throttled
    assert error.retry_after == pytest.approx(10.0, abs=1.0)


def test_classify_survives_garbage_retry_after() -> None:
    error = classify(
        reply(429, oai_error("slow", "rate_limit_exceeded"), {"retry-after": "soon"}), NOW
    )
    assert type(error) is Throttled
    assert error.retry_after is None


# --- parse_error_body ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            oai_error("bad mask", "invalid_mask_image_format", "invalid_request_error"),
            ErrorBody("bad mask", "invalid_mask_image_format", "invalid_request_error"),
            id="openai-envelope",
        ),
        pytest.param(
            {"error": {"message": "no code", "type": "comet_api_error", "code": ""}},
            ErrorBody("no code", None, "comet_api_error"),
            id="empty-code-is-none",
        ),
        pytest.param(
            {"error": {"message": "numeric code", "code": 1234}},
            ErrorBody("numeric code", "1234", None),
            id="numeric-code-as-text",
        ),
        pytest.param(
            {"error": "Insufficient USD or Diem balance"},
            ErrorBody("Insufficient USD or Diem balance"),
            id="venice-string",
        ),
        pytest.param(
            {"error": "Payment required", "code": "PAYMENT_REQUIRED", "reason": "x"},
            ErrorBody("Payment required", "PAYMENT_REQUIRED"),
            id="venice-string-with-code",
        ),
    ],
)
def test_parse_error_body_shapes(body: Any, expected: ErrorBody) -> None:
    assert parse_error_body(reply(400, body)) == expected


def test_parse_error_body_object_without_message_keeps_its_json() -> None:
    parsed = parse_error_body(reply(400, {"error": {"code": "weird", "detail": "x"}}))
    assert parsed.code == "weird"
    assert json.loads(parsed.message) == {"code": "weird", "detail": "x"}


@pytest.mark.parametrize("body", [["a", "list"], "just a string", None, {"x": 1}], ids=repr)
def test_parse_error_body_json_without_error_key_keeps_the_json(body: Any) -> None:
    parsed = parse_error_body(reply(500, content=json.dumps(body).encode()))
    assert parsed.code is None
    assert json.loads(parsed.message) == body


@pytest.mark.parametrize(
    ("body", "message", "code"),
    [
        ({"detail": "Not Found"}, "Not Found", None),
        ({"message": "Balance too low", "code": "LOW"}, "Balance too low", "LOW"),
    ],
)
def test_parse_error_body_reads_top_level_message_or_detail(
    body: dict[str, str], message: str, code: str | None
) -> None:
    parsed = parse_error_body(reply(402, body))
    assert (parsed.message, parsed.code) == (message, code)


@pytest.mark.parametrize(
    ("content_type", "content", "expected"),
    [
        (
            "text/plain",
            b"Payment  required:\n top up at example.test",
            "Payment required: top up at example.test",
        ),
        (
            "text/html; charset=utf-8",
            b"<html><head><title> 502 Bad\nGateway </title></head><body>x</body>",
            "502 Bad Gateway",
        ),
        (
            "application/octet-stream",
            b"\x00\x01",
            "non-JSON reply (application/octet-stream, 2 bytes)",
        ),
    ],
)
def test_non_json_error_bodies_keep_their_words(
    content_type: str, content: bytes, expected: str
) -> None:
    response = httpx.Response(402, content=content, headers={"content-type": content_type})
    parsed = parse_error_body(response)
    assert parsed.message.startswith("non-JSON reply (") and parsed.message.endswith(expected)
    assert isinstance(classify(response, NOW), PaymentRequired)


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (reply(404, html="<html>nope</html>"), "text/html"),
        (reply(500, content=b"\xff\xfe not utf8"), "no content type"),
        (reply(502, content=b""), "no content type"),
    ],
    ids=["html", "binary", "empty"],
)
def test_parse_error_body_non_json_says_so(response: httpx.Response, kind: str) -> None:
    parsed = parse_error_body(response)
    assert parsed.code is None
    assert parsed.message == f"non-JSON reply ({kind}, {len(response.content)} bytes)"


# --- request_id_of -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "message", "expected"),
    [
        ({"x-request-id": "req_a"}, "", "req_a"),
        ({"X-Request-Id": "req_b"}, "", "req_b"),
        ({"x-oneapi-request-id": "one_c"}, "", "one_c"),
        ({"request-id": "plain_d"}, "", "plain_d"),
        ({}, "quota is not enough (request id: abc123)", "abc123"),
        ({"x-request-id": "hdr"}, "oops (request id: msg)", "hdr"),
        ({}, "no id here", None),
        ({}, "", None),
    ],
)
def test_request_id_of(headers: dict[str, str], message: str, expected: str | None) -> None:
    assert request_id_of(httpx.Response(500, headers=headers), message) == expected


# --- parse_go_duration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("17ms", 0.017),
        ("1s", 1.0),
        ("0s", 0.0),
        ("1.5s", 1.5),
        ("6m0s", 360.0),
        ("1h2m3.5s", 3723.5),
        ("2h", 7200.0),
        ("250us", 250e-6),
        ("250µs", 250e-6),
        ("100ns", 100e-9),
        (" 6m0s ", 360.0),
    ],
)
def test_parse_go_duration(value: str, seconds: float) -> None:
    assert parse_go_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["", "abc", "6m0", "17", "1d", "-1s", "1s ago", "6m 0s", "s", "1.s", "1735689600"]
)
def test_parse_go_duration_rejects_what_is_not_a_duration(value: str) -> None:
    assert parse_go_duration(value) is None


# --- retry_after_seconds -------------------------------------------------------------------


def http_date(offset: float) -> str:
    return email.utils.formatdate(NOW + offset, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        pytest.param({"retry-after-ms": "1500"}, 1.5, id="retry-after-ms"),
        pytest.param({"Retry-After": "2"}, 2.0, id="retry-after-int"),
        pytest.param({"Retry-After": "0.5"}, 0.5, id="retry-after-float"),
        pytest.param({"Retry-After": http_date(10)}, 10.0, id="retry-after-http-date"),
        pytest.param({"retry-after-ms": "1500", "Retry-After": "30"}, 1.5, id="ms-wins"),
        pytest.param({"retry-after-ms": "soon", "Retry-After": "3"}, 3.0, id="bad-ms-falls-back"),
        pytest.param({"x-ratelimit-reset-requests": "6m0s"}, 360.0, id="reset-6m0s"),
        pytest.param({"x-ratelimit-reset-requests": "17ms"}, 0.017, id="reset-17ms"),
        pytest.param({"x-ratelimit-reset-tokens": "1h2m3.5s"}, 3723.5, id="reset-tokens"),
        pytest.param(
            {"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"},
            360.0,
            id="reset-takes-the-longer",
        ),
        pytest.param(
            {"x-ratelimit-reset-requests": "bogus", "x-ratelimit-reset-tokens": "2s"},
            2.0,
            id="reset-ignores-bad-one",
        ),
        pytest.param(
            {"Retry-After": "4", "x-ratelimit-reset-requests": "6m0s"}, 4.0, id="retry-after-wins"
        ),
        pytest.param({"retry-after-ms": "-500"}, 0.0, id="negative-ms-clamped"),
        pytest.param({"Retry-After": "-3"}, 0.0, id="negative-seconds-clamped"),
        pytest.param({"Retry-After": http_date(-60)}, 0.0, id="past-date-clamped"),
    ],
)
def test_retry_after_seconds(headers: dict[str, str], seconds: float) -> None:
    # httpx.Headers, as classify() passes them: names are case-insensitive.
    assert retry_after_seconds(httpx.Headers(headers), NOW) == pytest.approx(seconds, abs=1e-6)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-headers"),
        pytest.param({"Retry-After": ""}, id="blank-retry-after"),
        pytest.param({"x-ratelimit-reset-requests": "soon"}, id="bad-reset"),
        pytest.param({"x-ratelimit-reset-requests": "1735689600"}, id="venice-timestamp-reset"),
        pytest.param({"x-ratelimit-reset-tokens": ""}, id="empty-reset"),
        pytest.param({"x-ratelimit-remaining-requests": "0"}, id="unrelated-header"),
    ],
)
def test_retry_after_seconds_none_without_a_usable_hint(headers: dict[str, str]) -> None:
    assert retry_after_seconds(httpx.Headers(headers), NOW) is None


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e999"])
def test_retry_after_seconds_ignores_non_finite_hints(value: str) -> None:
    assert retry_after_seconds(httpx.Headers({"retry-after": value}), NOW) is None
    assert retry_after_seconds(httpx.Headers({"retry-after-ms": value}), NOW) is None


@pytest.mark.parametrize(
    "value", ["soon", "tomorrow-ish", "Mon, 32 Oct 2026 00:00:00 GMT"], ids=repr
)
def test_retry_after_seconds_garbage_retry_after_is_none(value: str) -> None:
    assert retry_after_seconds(httpx.Headers({"Retry-After": value}), NOW) is None
