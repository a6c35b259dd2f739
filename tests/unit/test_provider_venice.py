"""VeniceProvider against a scripted httpx.MockTransport: routes and request shapes, the raw
image reply and its headers, each error's class and message, and x402 wallet sign-in.
No network, no sleeping."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import pytest
from eth_account import Account
from helpers import Part, multipart_parts
from PIL import Image

from runner.dialects.venice.catalogue import VENICE_LIMITS, parse_catalogue
from runner.dialects.venice.client import VeniceProvider, classify_venice, parse_facts
from runner.dialects.venice.siwx import SiwxSigner, verify_header
from runner.errors import (
    AttemptTimeout,
    AuthRejected,
    InputError,
    NotDelivered,
    PaymentRequired,
    PermanentJobError,
    ProviderError,
    RetryableError,
    Throttled,
)
from runner.records import EditRequest, EditResult, ImagePart, ReplyFacts

BASE_URL = "https://api.venice.test/api/v1"
API_KEY = "venice-test-KEY-5d1e9a77c0"
NOW = 1_800_000_000.0  # wall clock of every test, epoch seconds


def picture(size: tuple[int, int] = (32, 24), fmt: str = "PNG", mode: str = "RGB") -> bytes:
    with Image.new(mode, size, (10, 200, 30, 0) if mode == "RGBA" else (10, 200, 30)) as im:
        buf = io.BytesIO()
        im.save(buf, fmt)
        return buf.getvalue()


PNG = picture()
MASK = picture(mode="RGBA")
OUT = picture((48, 40), "WEBP")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def make_request(
    mask: bool = False, model: str = "firered-image-edit", **params: Any
) -> EditRequest:
    return EditRequest(
        model=model,
        prompt="paint the boat red",
        image=ImagePart("boat.png", "image/png", PNG),
        mask=ImagePart("boat-mask.png", "image/png", MASK) if mask else None,
        params=params,
    )


Handler = Callable[[httpx.Request], httpx.Response]


def image_reply(data: bytes = OUT, kind: str = "image/webp", **headers: str) -> httpx.Response:
    return httpx.Response(200, content=data, headers={"content-type": kind, **headers})


class FakeVenice:
    """Answers each POST with the next scripted reply (the last one repeats)."""

    def __init__(self, *replies: httpx.Response | Handler) -> None:
        self._replies = list(replies) or [image_reply()]
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self._replies[min(len(self.requests), len(self._replies)) - 1]
        return reply if isinstance(reply, httpx.Response) else reply(request)


async def run_edit(
    api: FakeVenice, request: EditRequest | None = None, **options: Any
) -> EditResult:
    async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as client:
        if "signer" not in options:
            options["api_key"] = API_KEY
        provider = VeniceProvider("venice", BASE_URL, client, wall_clock=lambda: NOW, **options)
        return await provider.edit(request or make_request())


async def edit_error(api: FakeVenice, request: EditRequest | None = None, **options: Any) -> Any:
    with pytest.raises(ProviderError) as caught:
        await run_edit(api, request, **options)
    return caught.value


def error_reply(status: int, body: Any, **headers: str) -> httpx.Response:
    if isinstance(body, str):
        return httpx.Response(status, text=body, headers=headers)
    return httpx.Response(status, json=body, headers=headers)


def classify(status: int, body: Any, **headers: str) -> ProviderError:
    return classify_venice(error_reply(status, body, **headers), NOW)


def fields_of(parts: list[Part]) -> dict[str, bytes]:
    return {part.name: part.data for part in parts if part.filename is None}


def sent_json(request: httpx.Request) -> dict[str, Any]:
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.content)
    assert isinstance(body, dict)
    return body


def new_signer(clock: Callable[[], float] = lambda: NOW) -> SiwxSigner:
    account = Account.create()
    return SiwxSigner("0x" + bytes(account.key).hex(), env_name="VENICE_WALLET_KEY", clock=clock)


CATALOGUE = parse_catalogue(
    json.dumps(
        {
            "data": [
                {
                    "id": "firered-image-edit",
                    "model_spec": {
                        "name": "FireRed",
                        "constraints": {
                            "aspectRatios": ["1:1"],
                            "promptCharacterLimit": 1000,
                            "combineImages": False,
                        },
                        "pricing": {"inpaint": {"usd": 0.05}},
                    },
                },
                {
                    "id": "gpt-image-2-edit",
                    "model_spec": {
                        "name": "GPT Image 2",
                        "constraints": {
                            "aspectRatios": ["1:1"],
                            "promptCharacterLimit": 32000,
                            "combineImages": True,
                            "defaultResolution": "2K",
                            "resolutions": ["1K", "2K"],
                            "qualities": ["low", "medium", "high"],
                        },
                        "pricing": {
                            "inpaint": {"usd": 0.34},
                            "inputImages": {"included": 1, "additional": {"usd": 0.01}},
                            "quality": {
                                "1K": {"low": {"usd": 0.03}, "high": {"usd": 0.34}},
                                "2K": {"low": {"usd": 0.03}, "high": {"usd": 0.52}},
                            },
                        },
                    },
                },
            ]
        }
    ).encode()
)


# --- request shapes and routes --------------------------------------------------------------


async def test_small_input_is_json_to_image_edit_with_base64_image() -> None:
    api = FakeVenice()
    await run_edit(api, make_request(aspect_ratio="1:1", safe_mode=False, resolution="1K"))
    [sent] = api.requests
    assert sent.method == "POST"
    assert str(sent.url) == f"{BASE_URL}/image/edit"
    assert sent_json(sent) == {
        "model": "firered-image-edit",
        "prompt": "paint the boat red",
        "image": b64(PNG),
        "aspect_ratio": "1:1",
        "safe_mode": False,
        "resolution": "1K",
    }


async def test_input_over_json_limit_is_multipart_with_image_file() -> None:
    api = FakeVenice()
    request = make_request(safe_mode=False, enhance_prompt=True, output_format="png")
    await run_edit(api, request, json_limit_bytes=len(PNG) - 1)
    [sent] = api.requests
    assert str(sent.url) == f"{BASE_URL}/image/edit"
    parts = multipart_parts(sent)
    [image] = [part for part in parts if part.filename is not None]
    assert (image.name, image.filename, image.content_type) == ("image", "boat.png", "image/png")
    assert image.data == PNG
    assert fields_of(parts) == {
        "model": b"firered-image-edit",
        "prompt": b"paint the boat red",
        "safe_mode": b"false",
        "enhance_prompt": b"true",
        "output_format": b"png",
    }


async def test_input_exactly_at_json_limit_is_still_json() -> None:
    api = FakeVenice()
    await run_edit(api, json_limit_bytes=len(PNG))
    assert sent_json(api.requests[0])["image"] == b64(PNG)


async def test_mask_goes_to_multi_edit_with_model_id_and_two_images() -> None:
    api = FakeVenice()
    await run_edit(api, make_request(mask=True))
    [sent] = api.requests
    assert str(sent.url) == f"{BASE_URL}/image/multi-edit"
    body = sent_json(sent)
    assert body["modelId"] == "firered-image-edit"
    assert body["images"] == [b64(PNG), b64(MASK)]
    assert "model" not in body
    assert "image" not in body


async def test_mask_multipart_repeats_images_parts_in_order() -> None:
    api = FakeVenice()
    await run_edit(api, make_request(mask=True), json_limit_bytes=100)
    parts = multipart_parts(api.requests[0])
    files = [part for part in parts if part.filename is not None]
    assert [(p.name, p.filename, p.data) for p in files] == [
        ("images", "boat.png", PNG),
        ("images", "boat-mask.png", MASK),
    ]
    assert fields_of(parts)["modelId"] == b"firered-image-edit"
    assert "model" not in fields_of(parts)


async def test_quality_without_mask_goes_to_multi_edit_with_one_image() -> None:
    api = FakeVenice()
    await run_edit(api, make_request(model="gpt-image-2-edit", quality="low"))
    [sent] = api.requests
    assert str(sent.url) == f"{BASE_URL}/image/multi-edit"
    body = sent_json(sent)
    assert body["images"] == [b64(PNG)]
    assert body["quality"] == "low"
    assert body["modelId"] == "gpt-image-2-edit"


async def test_params_cannot_override_the_jobs_own_fields() -> None:
    api = FakeVenice()
    sneaky = {"model": "other-edit", "prompt": "other", "image": "x", "seed": 7}
    request = EditRequest("firered-image-edit", "paint", ImagePart("a.png", "image/png", PNG),
                          None, sneaky)  # fmt: skip
    await run_edit(api, request)
    await run_edit(api, request, json_limit_bytes=10)
    body = sent_json(api.requests[0])
    assert (body["model"], body["prompt"], body["image"]) == (
        "firered-image-edit",
        "paint",
        b64(PNG),
    )
    assert body["seed"] == 7  # other params pass through as given
    fields = fields_of(multipart_parts(api.requests[1]))
    assert (fields["model"], fields["prompt"], fields["seed"]) == (
        b"firered-image-edit",
        b"paint",
        b"7",
    )
    assert "image" not in fields  # the image goes only as a file part


async def test_api_key_is_a_bearer_header_per_request() -> None:
    api = FakeVenice()
    await run_edit(api)
    sent = api.requests[0]
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert "sign-in-with-x" not in sent.headers


async def test_wallet_requests_carry_a_verifiable_siwx_header_and_no_bearer() -> None:
    signer = new_signer()
    api = FakeVenice()
    await run_edit(api, signer=signer)
    await run_edit(api, make_request(mask=True), signer=signer)
    headers = [sent.headers["sign-in-with-x"] for sent in api.requests]
    for sent, header in zip(api.requests, headers, strict=True):
        assert "authorization" not in sent.headers
        assert verify_header(header, NOW).address == signer.address
    assert headers[0] != headers[1]  # a fresh nonce per request


def test_exactly_one_credential_is_required() -> None:
    client = httpx.AsyncClient()
    with pytest.raises(ValueError, match="exactly one"):
        VeniceProvider("venice", BASE_URL, client)
    with pytest.raises(ValueError, match="exactly one"):
        VeniceProvider("venice", BASE_URL, client, api_key=API_KEY, signer=new_signer())


def test_repr_hides_the_key() -> None:
    provider = VeniceProvider("venice", BASE_URL, httpx.AsyncClient(), api_key=API_KEY)
    assert API_KEY not in repr(provider)
    assert "venice" in repr(provider)


# --- successful replies ---------------------------------------------------------------------


async def test_image_reply_becomes_the_result_with_cf_ray_id() -> None:
    api = FakeVenice(image_reply(OUT, "image/webp", **{"CF-RAY": "8f1e2d3c4b5a-AMS"}))
    result = await run_edit(api)
    [image] = result.images
    assert (image.format, image.width, image.height) == ("WEBP", 48, 40)
    assert image.data == OUT
    assert result.request_id == "8f1e2d3c4b5a-AMS"
    assert result.usage is None
    assert result.facts is not None


async def test_content_type_parameters_are_ignored() -> None:
    result = await run_edit(FakeVenice(image_reply(PNG, "image/png; charset=binary")))
    assert result.images[0].format == "PNG"


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        pytest.param(
            httpx.Response(200, json={"images": [b64(OUT)]}), "content type application/json",
            id="json-body",
        ),
        pytest.param(httpx.Response(200, content=OUT), "content type none", id="no-type"),
        pytest.param(image_reply(b"\x89PNG\r\n\x1a\nbroken", "image/png"), "does not decode",
                     id="undecodable"),
        pytest.param(image_reply(OUT[: len(OUT) // 2]), "does not decode", id="truncated"),
        pytest.param(image_reply(b""), "does not decode", id="empty"),
    ],
)  # fmt: skip
async def test_bad_200_is_a_retryable_bad_response(reply: httpx.Response, words: str) -> None:
    reply.headers["cf-ray"] = "ray-1"
    reply.headers["x-venice-balance-usd"] = "3.5"
    error = await edit_error(FakeVenice(reply))
    assert type(error) is RetryableError
    assert error.status_code == 200
    assert error.message.startswith("bad_response")
    assert words in error.message
    assert error.request_id == "ray-1"
    assert error.facts.balance_usd == 3.5


async def test_reply_headers_become_facts() -> None:
    headers = {
        "x-venice-balance-usd": "12.3456",
        "x-venice-balance-diem": "0.5",
        "X-Balance-Remaining": "12.30",
        "x-venice-is-content-violation": "true",
        "x-venice-model-id": "firered-image-edit",
        "x-venice-enhanced-prompt": "a%20red%20boat",
        "x-ratelimit-limit-requests": "20",
        "x-ratelimit-remaining-requests": "17",
        "x-ratelimit-reset-requests": str(int(NOW) + 42),
    }
    result = await run_edit(FakeVenice(image_reply(**headers)))
    assert result.images  # a content violation is still a delivered (blurred) image
    assert result.facts == ReplyFacts(
        balance_usd=12.3456,
        balance_diem=0.5,
        balance_after_usd=12.30,
        content_violation=True,
        served_model="firered-image-edit",
        enhanced_prompt=True,
        deprecation=None,
        rate_limit=20,
        rate_remaining=17,
        rate_reset_in_s=42.0,
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(str(int(NOW) + 30), 30.0, id="seconds"),
        pytest.param(str(int(NOW * 1000) + 12_500), 12.5, id="milliseconds"),
        pytest.param(str(int(NOW) - 100), 0.0, id="past-clamped"),
        pytest.param("7", 7.0, id="small-is-a-duration"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("nan", None, id="nan"),
        pytest.param("-5", None, id="negative"),
    ],
)
def test_rate_reset_header_units(value: str, expected: float | None) -> None:
    facts = parse_facts(httpx.Headers({"x-ratelimit-reset-requests": value}), NOW)
    assert facts.rate_reset_in_s == (pytest.approx(expected) if expected is not None else None)


def test_garbage_headers_become_none_and_never_raise() -> None:
    facts = parse_facts(
        httpx.Headers(
            {
                "x-venice-balance-usd": "lots",
                "x-venice-balance-diem": "inf",
                "X-Balance-Remaining": "",
                "x-venice-is-content-violation": "maybe",
                "x-venice-model-id": "   ",
                "x-ratelimit-limit-requests": "20.5",
                "x-ratelimit-remaining-requests": "-1",
            }
        ),
        NOW,
    )
    assert facts == ReplyFacts()


def test_no_headers_mean_no_facts() -> None:
    facts = parse_facts(httpx.Headers(), NOW)
    assert facts == ReplyFacts()
    assert facts.enhanced_prompt is False


@pytest.mark.parametrize(
    ("headers", "sentence"),
    [
        pytest.param(
            {
                "x-venice-model-id": "qwen-edit",
                "x-venice-deprecated": "true",
                "x-venice-model-deprecation-date": "2026-12-01",
                "x-venice-deprecated-replacement": "qwen-image-2-edit",
            },
            "Venice marks qwen-edit as deprecated (date: 2026-12-01); use qwen-image-2-edit "
            "instead.",
            id="flags",
        ),
        pytest.param(
            {"x-venice-model-deprecation-warning": "This model\r\n  retires soon."},
            "This model retires soon.",
            id="warning-on-one-line",
        ),
        pytest.param({"x-venice-deprecated": "false"}, None, id="not-deprecated"),
    ],
)
def test_deprecation_headers_become_one_sentence(
    headers: dict[str, str], sentence: str | None
) -> None:
    assert parse_facts(httpx.Headers(headers), NOW).deprecation == sentence


# --- 402: payment ---------------------------------------------------------------------------

WALLET_402 = {
    "error": "Payment required",
    "code": "PAYMENT_REQUIRED",
    "reason": "insufficient_balance",
    "message": "Insufficient balance for this request",
    "currentBalanceUsd": 0.0123,
    "minimumBalanceUsd": 0.05,
    "suggestedTopUpUsd": 10,
    "minimumTopUpUsd": 5,
    "supportedTokens": ["USDC"],
    "supportedChains": ["base", "solana"],
    "topUpInstructions": {
        "step1": "POST /api/v1/x402/top-up without a payment header to get the requirements",
        "step2": "Sign one of the accepted options with the x402 SDK",
        "step3": "Send it again with the PAYMENT-SIGNATURE header",
        "receiverWallet": "0xabc",
        "tokenDecimals": 6,
    },
    "siwxChallenge": {"info": {"domain": "api.venice.ai"}},
}
DISCOVERY_402 = {
    "x402Version": 2,
    "error": "Payment required",
    "resource": {"url": "https://api.venice.ai/api/v1/image/edit", "mimeType": "image/png"},
    "accepts": [
        {
            "scheme": "exact",
            "network": "eip155:8453",
            "asset": "0x833589fcd6edb6e08f4c7c32d4f71b54bda02913",
            "amount": "40000",
            "payTo": "0xdef",
            "maxTimeoutSeconds": 300,
        }
    ],
    "authOptions": {
        "x402Wallet": {"header": "SIGN-IN-WITH-X", "topUp": "POST /api/v1/x402/top-up"}
    },
}


async def test_402_api_key_balance_says_top_up_with_balance() -> None:
    reply = error_reply(
        402,
        {
            "error": "Insufficient USD or Diem balance to complete request",
            "code": "INSUFFICIENT_BALANCE",
        },
        **{"x-venice-balance-usd": "0.01", "cf-ray": "ray-402"},
    )
    error = await edit_error(FakeVenice(reply))
    assert type(error) is PaymentRequired
    assert "Insufficient USD or Diem balance" in error.message
    assert "top up at https://venice.ai/settings/api" in error.message
    assert "$0.01" in error.message
    assert error.provider_code == "INSUFFICIENT_BALANCE"
    assert error.request_id == "ray-402"
    assert error.facts.balance_usd == 0.01


def test_402_without_code_is_still_payment() -> None:
    error = classify(402, {"error": "Insufficient USD or Diem balance"})
    assert isinstance(error, PaymentRequired)
    assert "top up at https://venice.ai/settings/api" in error.message


@pytest.mark.parametrize(
    "code", ["API_KEY_USD_SPEND_LIMIT_EXCEEDED", "API_KEY_DIEM_SPEND_LIMIT_EXCEEDED"]
)
def test_402_spend_limit_says_raise_the_keys_limit(code: str) -> None:
    error = classify(402, {"error": "Spend limit exceeded for this API key", "code": code})
    assert isinstance(error, PaymentRequired)
    assert "raise the API key's spend limit at https://venice.ai/settings/api" in error.message


def test_402_x402_discovery_says_not_signed_in_and_amount() -> None:
    error = classify(402, DISCOVERY_402, **{"PAYMENT-REQUIRED": "eyJ4NDAyVmVyc2lvbiI6Mn0="})
    assert isinstance(error, PaymentRequired)
    assert "$0.04 USDC" in error.message
    assert "not signed in" in error.message
    assert "auth: x402" in error.message
    assert "POST /api/v1/x402/top-up" in error.message
    assert "\n" not in error.message


def test_402_wallet_short_of_credit_gives_balances_and_steps_in_order() -> None:
    error = classify(402, WALLET_402)
    assert isinstance(error, PaymentRequired)
    message = error.message
    assert "current balance $0.0123" in message
    assert "minimum balance $0.05" in message
    assert "suggested top-up $10.00" in message
    assert "minimum top-up $5.00" in message
    steps = [message.index(f"{n}. ") for n in (1, 2, 3)]
    assert steps == sorted(steps)
    assert "PAYMENT-SIGNATURE header" in message
    assert "\n" not in message
    assert error.provider_code == "PAYMENT_REQUIRED"


def test_402_wallet_with_odd_fields_still_reads() -> None:
    body = {**WALLET_402, "currentBalanceUsd": "n/a", "topUpInstructions": ["x"]}
    error = classify(402, body)
    assert isinstance(error, PaymentRequired)
    assert "current balance" not in error.message
    assert "suggested top-up $10.00" in error.message


# --- other errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        pytest.param(401, {"error": "Authentication failed", "code": "AUTHENTICATION_FAILED"}, AuthRejected, id="401"),
        pytest.param(401, {"error": "Inactive", "code": "AUTHENTICATION_FAILED_INACTIVE_KEY"}, AuthRejected, id="401-inactive"),
        pytest.param(403, {"error": "Wallet mismatch", "code": "X402_WALLET_MISMATCH"}, AuthRejected, id="403-wallet"),
        pytest.param(403, {"error": "API access disabled"}, AuthRejected, id="403"),
        pytest.param(401, {"error": "Pro only", "code": "PRO_ONLY_MODEL"}, PermanentJobError, id="401-pro-only"),
        pytest.param(404, {"error": "Model not found", "code": "MODEL_NOT_FOUND"}, PermanentJobError, id="404-model"),
        pytest.param(400, {"error": "Invalid model", "code": "INVALID_MODEL"}, PermanentJobError, id="400-model"),
        pytest.param(400, {"error": "Invalid request", "details": {"_errors": []}}, PermanentJobError, id="400"),
        pytest.param(413, {"error": "Payload too large"}, PermanentJobError, id="413"),
        pytest.param(415, {"error": "Invalid content type"}, PermanentJobError, id="415"),
        pytest.param(422, {"error": "Content policy", "code": "CONTENT_POLICY_VIOLATION"}, PermanentJobError, id="422"),
        pytest.param(429, {"error": "Model overloaded", "code": "MODEL_OVERLOADED"}, Throttled, id="429-overloaded"),
        pytest.param(500, {"error": "Inference processing failed"}, RetryableError, id="500"),
        pytest.param(503, {"error": "The model is at capacity"}, Throttled, id="503"),
        pytest.param(502, "<html><title>502 Bad Gateway</title></html>", RetryableError, id="502-html"),
        pytest.param(504, {"error": "Request timeout"}, AttemptTimeout, id="504"),
    ],
)  # fmt: skip
def test_status_and_code_classification(status: int, body: Any, kind: type[ProviderError]) -> None:
    error = classify(status, body, **{"cf-ray": "ray-9", "x-venice-balance-usd": "4.25"})
    assert type(error) is kind
    assert error.status_code == status
    assert error.request_id == "ray-9"
    assert error.facts is not None
    assert error.facts.balance_usd == 4.25


def test_model_errors_say_this_model_only() -> None:
    assert "this model only" in classify(404, {"error": "x", "code": "MODEL_NOT_FOUND"}).message


def test_504_says_it_may_have_been_billed() -> None:
    assert "billed" in classify(504, {"error": "Request timeout"}).message


def test_429_waits_for_the_venice_reset_timestamp() -> None:
    error = classify(
        429,
        {"error": "Rate limit exceeded", "code": "RATE_LIMIT_EXCEEDED"},
        **{"x-ratelimit-reset-requests": str(int(NOW) + 25), "x-ratelimit-remaining-requests": "0"},
    )
    assert isinstance(error, RetryableError)
    assert error.retry_after == pytest.approx(25.0)
    assert error.facts.rate_remaining == 0


def test_429_reset_in_milliseconds_and_tokens_take_the_longest() -> None:
    error = classify(
        429,
        {"error": "Rate limit exceeded"},
        **{
            "x-ratelimit-reset-requests": str(int(NOW * 1000) + 4000),
            "x-ratelimit-reset-tokens": "9",
        },
    )
    assert error.retry_after == pytest.approx(9.0)


def test_429_retry_after_header_counts_too() -> None:
    error = classify(
        429,
        {"error": "Rate limit exceeded"},
        **{"retry-after": "40", "x-ratelimit-reset-requests": str(int(NOW) + 5)},
    )
    assert error.retry_after == pytest.approx(40.0)


def test_429_lockout_waits_at_least_30_seconds() -> None:
    body = {"error": "Too many failed attempts (> 20) from this key. Try again in a bit."}
    assert classify(429, body).retry_after == 30.0
    short = classify(429, body, **{"x-ratelimit-reset-requests": str(int(NOW) + 3)})
    assert short.retry_after == 30.0


def test_5xx_ignores_the_request_window_reset() -> None:
    error = classify(500, {"error": "x"}, **{"x-ratelimit-reset-requests": str(int(NOW) + 50)})
    assert error.retry_after is None
    assert classify(503, {"error": "x"}, **{"retry-after": "7"}).retry_after == 7.0


def test_error_as_an_object_is_read() -> None:
    error = classify(400, {"error": {"message": "bad size", "code": "IMAGE_TOO_SMALL"}})
    assert error.message == "bad size"
    assert error.provider_code == "IMAGE_TOO_SMALL"


async def test_key_does_not_appear_in_auth_errors() -> None:
    reply = error_reply(401, {"error": "Authentication failed", "code": "AUTHENTICATION_FAILED"})
    error = await edit_error(FakeVenice(reply))
    assert isinstance(error, AuthRejected)
    assert API_KEY not in str(error)
    assert API_KEY not in error.describe()


async def test_connect_error_is_not_delivered_and_read_timeout_may_be_billed() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def stall(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    assert type(await edit_error(FakeVenice(refuse))) is NotDelivered
    assert type(await edit_error(FakeVenice(stall))) is AttemptTimeout


# --- x402 sign-in retries -------------------------------------------------------------------

BAD_SIGN_IN = {"error": "Invalid SIWX sign-in", "code": "X402_INVALID_SIGN_IN"}


async def test_invalid_sign_in_re_signs_once_then_stops() -> None:
    signer = new_signer()
    api = FakeVenice(error_reply(401, BAD_SIGN_IN, **{"cf-ray": "ray-401"}))
    error = await edit_error(api, signer=signer)
    assert type(error) is AuthRejected
    assert "refused" in error.message
    assert "twice" in error.message
    assert error.provider_code == "X402_INVALID_SIGN_IN"
    assert error.request_id == "ray-401"
    first, second = api.requests  # exactly one resend
    assert first.headers["sign-in-with-x"] != second.headers["sign-in-with-x"]
    for sent in api.requests:
        assert verify_header(sent.headers["sign-in-with-x"], NOW).address == signer.address


async def test_invalid_sign_in_then_success_returns_the_image() -> None:
    api = FakeVenice(error_reply(401, BAD_SIGN_IN), image_reply())
    result = await run_edit(api, signer=new_signer())
    assert result.images[0].data == OUT
    assert len(api.requests) == 2


async def test_invalid_sign_in_then_another_error_is_classified_normally() -> None:
    api = FakeVenice(error_reply(401, BAD_SIGN_IN), error_reply(402, WALLET_402))
    error = await edit_error(api, signer=new_signer())
    assert type(error) is PaymentRequired
    assert len(api.requests) == 2


async def test_other_401_with_a_wallet_is_not_resent() -> None:
    api = FakeVenice(error_reply(401, {"error": "nope", "code": "AUTHENTICATION_FAILED"}))
    error = await edit_error(api, signer=new_signer())
    assert type(error) is AuthRejected
    assert len(api.requests) == 1


async def test_invalid_sign_in_with_an_api_key_is_not_resent() -> None:
    api = FakeVenice(error_reply(401, BAD_SIGN_IN))
    error = await edit_error(api)
    assert type(error) is AuthRejected
    assert len(api.requests) == 1


# --- catalogue-backed checks and cost -------------------------------------------------------


def provider(catalogue: Mapping[str, Any] | None = CATALOGUE) -> VeniceProvider:
    return VeniceProvider(
        "venice", BASE_URL, httpx.AsyncClient(), api_key=API_KEY, catalogue=catalogue
    )


def test_check_request_counts_the_mask_as_an_image() -> None:
    provider().check_request(make_request())
    with pytest.raises(InputError) as caught:
        provider().check_request(make_request(mask=True))
    assert caught.value.field == "mask"


def test_check_request_without_catalogue_passes() -> None:
    provider(None).check_request(make_request(mask=True, model="anything"))


def test_limits_for_uses_the_catalogue() -> None:
    assert provider().limits_for("firered-image-edit").max_prompt_chars == 1000
    assert provider(None).limits_for("firered-image-edit") is VENICE_LIMITS
