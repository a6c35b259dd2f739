"""OpenAIProvider against a scripted httpx.MockTransport: what it sends, what it makes of
the reply, and which error each failure becomes. No network, no sleeping."""

from __future__ import annotations

import base64
import email
import email.utils
import io
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from helpers import multipart_by_name as multipart_parts
from PIL import Image

from runner.dialects.openai.client import OpenAIProvider
from runner.dialects.openai.rules import LIMITS as OPENAI_LIMITS
from runner.dialects.transfer import AddressPolicy
from runner.errors import (
    AttemptTimeout,
    AuthRejected,
    NotDelivered,
    PaymentRequired,
    ProviderError,
    RetryableError,
)
from runner.records import EditRequest, EditResult, ImagePart, ReplyImage, Usage

BASE_URL = "https://api.cometapi.test/v1"
EDITS_URL = f"{BASE_URL}/images/edits"
API_KEY = "sk-test-0123456789abcdef"
CDN_URL = "https://cdn.example.test/results/abc.png"


def picture(size: tuple[int, int] = (32, 24), fmt: str = "PNG", mode: str = "RGB") -> bytes:
    color = (10, 200, 30, 0) if mode == "RGBA" else (10, 200, 30)
    with Image.new(mode, size, color) as im:
        im.putpixel((1, 1), (250, 0, 0, 255) if mode == "RGBA" else (250, 0, 0))
        buf = io.BytesIO()
        im.save(buf, fmt)
        return buf.getvalue()


PNG = picture()
MASK = picture(mode="RGBA")
JPEG_OUT = picture((16, 16), "JPEG")
PNG_OUT = picture((48, 32))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def make_request(mask: bool = True, **params: Any) -> EditRequest:
    return EditRequest(
        model="gpt-image-2",
        prompt="paint the sky pink",
        image=ImagePart("boat.png", "image/png", PNG),
        mask=ImagePart("boat-sky.png", "image/png", MASK) if mask else None,
        params=params,
    )


# Usage exactly as in seed-comet (PROVIDERS.md §1).
SEED_USAGE = {
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "total_tokens": 981,
    "prompt_tokens_details": {"cached_tokens_details": {}},
    "completion_tokens_details": {},
    "input_tokens": 785,
    "output_tokens": 196,
    "input_tokens_details": {"image_tokens": 768, "text_tokens": 17, "cached_tokens_details": {}},
    "claude_cache_creation_5_m_tokens": 0,
    "claude_cache_creation_1_h_tokens": 0,
}
# The newer comet-edit / OpenAI SDK shape.
NEW_USAGE = {
    "input_tokens": 1200,
    "input_tokens_details": {"image_tokens": 1024, "text_tokens": 176},
    "output_tokens": 4160,
    "output_tokens_details": {"image_tokens": 4096, "text_tokens": 64},
    "total_tokens": 5360,
}


def ok_body(*images: bytes, usage: Any = SEED_USAGE, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "created": 1776836647,
        "data": [{"b64_json": b64(image)} for image in images],
        **extra,
    }
    if usage is not None:
        body["usage"] = usage
    return body


Handler = Callable[[httpx.Request], httpx.Response]


class FakeAPI:
    """Answers the POST with `post`, GETs from `downloads`; records every request."""

    def __init__(
        self,
        post: Handler | httpx.Response | dict[str, Any],
        downloads: dict[str, Handler] | None = None,
    ) -> None:
        self._post = post
        self._downloads = downloads or {}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "POST":
            if callable(self._post):
                return self._post(request)
            if isinstance(self._post, httpx.Response):
                return self._post
            return httpx.Response(200, json=self._post, headers={"x-request-id": "req_42"})
        return self._downloads[str(request.url)](request)


async def run_edit(
    api: FakeAPI,
    request: EditRequest | None = None,
    base_url: str = BASE_URL,
    wall_clock: Callable[[], float] | None = None,
) -> EditResult:
    async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as client:
        extra = {"wall_clock": wall_clock} if wall_clock else {}
        # Every *.test host "resolves" to a public address: downloads are checked for it.
        addresses = AddressPolicy(base_url, resolve=lambda host, port: _public_address())
        provider = OpenAIProvider("comet", base_url, API_KEY, client, addresses=addresses, **extra)
        return await provider.edit(request or make_request())


async def _public_address() -> list[str]:
    return ["93.184.216.34"]


async def edit_error(api: FakeAPI, request: EditRequest | None = None) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await run_edit(api, request)
    return caught.value


# --- the request ----------------------------------------------------------------------------


async def test_request_is_a_post_to_images_edits_with_bearer_key() -> None:
    api = FakeAPI(ok_body(PNG_OUT))
    await run_edit(api)
    [sent] = api.requests
    assert sent.method == "POST"
    assert str(sent.url) == EDITS_URL
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"


async def test_request_url_ignores_trailing_slash_of_base_url() -> None:
    api = FakeAPI(ok_body(PNG_OUT))
    await run_edit(api, base_url=BASE_URL + "/")
    assert str(api.requests[0].url) == EDITS_URL


async def test_request_multipart_carries_image_mask_prompt_and_model() -> None:
    api = FakeAPI(ok_body(PNG_OUT))
    await run_edit(api, make_request(mask=True))
    parts = multipart_parts(api.requests[0])
    assert parts["image"].filename == "boat.png"
    assert parts["image"].content_type == "image/png"
    assert parts["image"].data == PNG
    assert parts["mask"].filename == "boat-sky.png"
    assert parts["mask"].content_type == "image/png"
    assert parts["mask"].data == MASK
    assert parts["prompt"].data == b"paint the sky pink"
    assert parts["prompt"].filename is None
    assert parts["model"].data == b"gpt-image-2"


async def test_request_without_mask_sends_no_mask_part() -> None:
    api = FakeAPI(ok_body(PNG_OUT))
    await run_edit(api, make_request(mask=False))
    parts = multipart_parts(api.requests[0])
    assert "mask" not in parts
    assert set(parts) == {"image", "prompt", "model"}


async def test_request_non_ascii_prompt_is_sent_as_utf8() -> None:
    api = FakeAPI(ok_body(PNG_OUT))
    request = EditRequest(
        model="gpt-image-2",
        prompt="하늘을 분홍색으로 — ciel rose",
        image=ImagePart("b.png", "image/png", PNG),
        mask=None,
        params={},
    )
    await run_edit(api, request)
    assert multipart_parts(api.requests[0])["prompt"].data.decode() == request.prompt


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param({"n": 2}, {"n": b"2"}, id="int"),
        pytest.param({"stream": False}, {"stream": b"false"}, id="bool-false"),
        pytest.param({"partial": True}, {"partial": b"true"}, id="bool-true"),
        pytest.param(
            {"quality": "high", "size": "1024x1536", "output_format": "jpeg"},
            {"quality": b"high", "size": b"1024x1536", "output_format": b"jpeg"},
            id="strings",
        ),
        pytest.param({"output_compression": 80}, {"output_compression": b"80"}, id="int-80"),
    ],
)
async def test_request_params_are_sent_as_strings(
    params: dict[str, Any], expected: dict[str, bytes]
) -> None:
    api = FakeAPI(ok_body(PNG_OUT))
    await run_edit(api, make_request(**params))
    parts = multipart_parts(api.requests[0])
    for name, value in expected.items():
        assert parts[name].data == value
        assert parts[name].filename is None


# --- successful replies ---------------------------------------------------------------------


async def test_success_decodes_every_b64_image() -> None:
    api = FakeAPI(ok_body(PNG_OUT, JPEG_OUT))
    result = await run_edit(api, make_request(n=2))
    assert result.images == (
        ReplyImage(PNG_OUT, "PNG", 48, 32),
        ReplyImage(JPEG_OUT, "JPEG", 16, 16),
    )
    assert result.request_id == "req_42"
    assert result.status_code == 200


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            SEED_USAGE,
            Usage(
                input_tokens=785,
                output_tokens=196,
                total_tokens=981,
                input_image_tokens=768,
                input_text_tokens=17,
                output_image_tokens=None,
            ),
            id="seed-shape",
        ),
        pytest.param(
            NEW_USAGE,
            Usage(
                input_tokens=1200,
                output_tokens=4160,
                total_tokens=5360,
                input_image_tokens=1024,
                input_text_tokens=176,
                output_image_tokens=4096,
            ),
            id="new-shape",
        ),
        pytest.param(
            {
                "input_tokens": "785",
                "output_tokens": True,
                "total_tokens": 981,
                "input_tokens_details": "n/a",
                "output_tokens_details": {"image_tokens": 12.5},
            },
            Usage(total_tokens=981),
            id="odd-types",
        ),
        pytest.param(
            {"input_tokens": None, "input_tokens_details": {"image_tokens": False}},
            Usage(),
            id="nulls-and-bools",
        ),
    ],
)
async def test_success_reads_usage(raw: dict[str, Any], expected: Usage) -> None:
    api = FakeAPI(ok_body(PNG_OUT, usage=raw))
    result = await run_edit(api)
    assert result.usage is not None
    assert json.loads(result.usage.raw or "") == raw
    assert result.usage == Usage(
        input_tokens=expected.input_tokens,
        output_tokens=expected.output_tokens,
        total_tokens=expected.total_tokens,
        input_image_tokens=expected.input_image_tokens,
        input_text_tokens=expected.input_text_tokens,
        output_image_tokens=expected.output_image_tokens,
        raw=result.usage.raw,
        suspect=result.usage.suspect,  # figures no real reply has: see test_usage_sanity
    )


@pytest.mark.parametrize("usage", [None, "981 tokens", [1, 2], 7], ids=repr)
async def test_success_without_usable_usage_has_none(usage: Any) -> None:
    body = ok_body(PNG_OUT, usage=None)
    if usage is not None:
        body["usage"] = usage
    result = await run_edit(FakeAPI(body))
    assert result.usage is None
    assert len(result.images) == 1


async def test_success_request_id_from_oneapi_header() -> None:
    api = FakeAPI(
        httpx.Response(200, json=ok_body(PNG_OUT), headers={"x-oneapi-request-id": "one_7"})
    )
    assert (await run_edit(api)).request_id == "one_7"


async def test_success_newer_reply_fields_are_tolerated() -> None:
    body = ok_body(
        PNG_OUT, usage=NEW_USAGE, background="opaque", output_format="png", quality="high"
    )
    body["size"] = "1024x1024"
    body["data"][0]["revised_prompt"] = "a pink sky"
    result = await run_edit(FakeAPI(body))
    assert result.images == (ReplyImage(PNG_OUT, "PNG", 48, 32),)


# --- data[].url replies ---------------------------------------------------------------------


async def test_url_reply_is_downloaded_without_the_api_key() -> None:
    body = {"created": 1, "data": [{"url": CDN_URL}], "usage": NEW_USAGE}
    api = FakeAPI(body, {CDN_URL: lambda _: httpx.Response(200, content=PNG_OUT)})
    result = await run_edit(api)
    assert result.images == (ReplyImage(PNG_OUT, "PNG", 48, 32),)
    assert result.usage is not None
    assert result.usage.output_image_tokens == 4096
    post, get = api.requests
    assert post.headers["authorization"] == f"Bearer {API_KEY}"
    assert get.method == "GET"
    assert str(get.url) == CDN_URL
    assert "authorization" not in get.headers
    assert API_KEY not in str(get.headers)


async def test_b64_and_url_images_are_both_returned() -> None:
    body = {"created": 1, "data": [{"b64_json": b64(JPEG_OUT)}, {"url": CDN_URL}]}
    api = FakeAPI(body, {CDN_URL: lambda _: httpx.Response(200, content=PNG_OUT)})
    result = await run_edit(api)
    assert {image.data for image in result.images} == {JPEG_OUT, PNG_OUT}


def _raise_connect_error(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.mark.parametrize(
    "download",
    [
        pytest.param(lambda _: httpx.Response(404, text="expired"), id="404"),
        pytest.param(lambda _: httpx.Response(500), id="500"),
        pytest.param(_raise_connect_error, id="connect-error"),
        pytest.param(lambda _: httpx.Response(200, content=b"<html>gone</html>"), id="not-image"),
        pytest.param(lambda _: httpx.Response(200, content=PNG_OUT[:-30]), id="truncated"),
    ],
)
async def test_failed_download_is_retryable_and_keeps_usage(download: Handler) -> None:
    body = {"created": 1, "data": [{"url": CDN_URL}], "usage": NEW_USAGE}
    api = FakeAPI(
        httpx.Response(200, json=body, headers={"x-request-id": "req_dl"}),
        {CDN_URL: download},
    )
    error = await edit_error(api)
    assert type(error) is RetryableError
    assert error.request_id == "req_dl"
    assert error.usage is not None
    assert error.usage.total_tokens == 5360
    assert [r.method for r in api.requests] == ["POST", "GET"]


async def test_redirected_download_is_followed_without_the_api_key() -> None:
    moved = "https://cdn2.example.test/final.png"
    api = FakeAPI(
        {"created": 1, "data": [{"url": CDN_URL}]},
        {
            CDN_URL: lambda _: httpx.Response(302, headers={"location": moved}),
            moved: lambda _: httpx.Response(200, content=PNG_OUT),
        },
    )
    result = await run_edit(api)
    assert [image.data for image in result.images] == [PNG_OUT]
    assert [str(r.url) for r in api.requests[1:]] == [CDN_URL, moved]
    assert all("authorization" not in r.headers for r in api.requests[1:])


async def test_b64_sent_as_a_data_url_is_decoded() -> None:
    api = FakeAPI({"created": 1, "data": [{"b64_json": "data:image/png;base64," + b64(PNG_OUT)}]})
    result = await run_edit(api)
    assert [image.data for image in result.images] == [PNG_OUT]


async def test_malformed_download_url_is_retryable() -> None:
    body = {"created": 1, "data": [{"url": "https://[::1/result.png"}], "usage": NEW_USAGE}
    error = await edit_error(FakeAPI(body))
    assert type(error) is RetryableError
    assert error.usage is not None


# --- unusable 200 replies -------------------------------------------------------------------

NOT_AN_IMAGE = b64(b"hello, this is not an image at all")


@pytest.mark.parametrize(
    ("content", "usage_kept"),
    [
        pytest.param(ok_body(usage=SEED_USAGE), True, id="empty-data"),
        pytest.param({"created": 1, "usage": SEED_USAGE}, True, id="no-data"),
        pytest.param({"created": 1, "data": None, "usage": SEED_USAGE}, True, id="null-data"),
        pytest.param(
            {"created": 1, "data": [{"b64_json": ""}], "usage": SEED_USAGE}, True, id="empty-b64"
        ),
        pytest.param(
            {"created": 1, "data": ["not-an-object"], "usage": SEED_USAGE}, True, id="data-item-str"
        ),
        pytest.param(
            {"created": 1, "data": [{"url": "ftp://x.test/a.png"}], "usage": SEED_USAGE},
            True,
            id="non-http-url",
        ),
        pytest.param(
            {"created": 1, "data": [{"b64_json": NOT_AN_IMAGE}], "usage": SEED_USAGE},
            True,
            id="b64-not-an-image",
        ),
        pytest.param(
            {"created": 1, "data": [{"b64_json": "abc"}], "usage": SEED_USAGE},
            True,
            id="b64-bad-padding",
        ),
        pytest.param(
            {"created": 1, "data": [{"b64_json": "@@@@####"}], "usage": SEED_USAGE},
            True,
            id="b64-garbage",
        ),
        pytest.param(
            {"created": 1, "data": [{"b64_json": b64(PNG_OUT[:-30])}], "usage": SEED_USAGE},
            True,
            id="b64-truncated-png",
        ),
        pytest.param(
            {"created": 1, "data": [{"b64_json": b64(PNG_OUT)}, {"b64_json": NOT_AN_IMAGE}]},
            False,
            id="second-image-bad-no-usage",
        ),
        pytest.param(b"<html><body>maintenance</body></html>", False, id="non-json"),
        pytest.param(b"", False, id="empty-body"),
        pytest.param(b'["a", "list"]', False, id="json-list"),
    ],
)
async def test_unusable_200_is_retryable(content: dict[str, Any] | bytes, usage_kept: bool) -> None:
    if isinstance(content, bytes):
        reply = httpx.Response(200, content=content, headers={"x-request-id": "req_bad"})
    else:
        reply = httpx.Response(200, json=content, headers={"x-request-id": "req_bad"})
    api = FakeAPI(reply)
    error = await edit_error(api)
    assert type(error) is RetryableError
    assert error.status_code == 200
    assert error.request_id == "req_bad"
    if usage_kept:
        assert error.usage is not None
        assert error.usage.total_tokens == 981
    else:
        assert error.usage is None
    assert len(api.requests) == 1  # nothing was downloaded


@pytest.mark.parametrize("data", [5, True], ids=repr)
async def test_non_list_data_is_retryable(data: Any) -> None:
    error = await edit_error(FakeAPI({"created": 1, "data": data, "usage": SEED_USAGE}))
    assert type(error) is RetryableError


# --- error statuses go through classify -----------------------------------------------------


async def test_error_status_is_classified_with_the_injected_wall_clock() -> None:
    now = 1_800_000_000.0
    reply = httpx.Response(
        429,
        json={"error": {"message": "slow down", "code": "rate_limit_exceeded"}},
        headers={
            "retry-after": email.utils.formatdate(now + 10, usegmt=True),
            "x-request-id": "req_429",
        },
    )
    api = FakeAPI(reply)
    with pytest.raises(RetryableError) as caught:
        await run_edit(api, wall_clock=lambda: now)
    assert caught.value.retry_after == pytest.approx(10.0)
    assert caught.value.request_id == "req_429"
    assert caught.value.status_code == 429


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (402, {"error": "Insufficient USD or Diem balance"}, PaymentRequired),
        (401, {"error": {"message": "bad key", "code": "invalid_api_key"}}, AuthRejected),
    ],
)
async def test_error_status_raises_classified_error(
    status: int, body: dict[str, Any], expected: type[ProviderError]
) -> None:
    error = await edit_error(FakeAPI(httpx.Response(status, json=body)))
    assert type(error) is expected
    assert error.status_code == status


# --- transport errors -----------------------------------------------------------------------


def raising(exc_type: type[httpx.TransportError]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type("boom", request=request)

    return handler


@pytest.mark.parametrize(
    ("exc_type", "expected"),
    [
        (httpx.ReadTimeout, AttemptTimeout),
        (httpx.ConnectError, NotDelivered),  # never reached the provider: not billed
        (httpx.ConnectTimeout, NotDelivered),
        (httpx.WriteError, NotDelivered),  # broke before the request was written whole
        (httpx.RemoteProtocolError, RetryableError),
        (httpx.ReadError, RetryableError),
    ],
)
async def test_transport_error_is_translated(
    exc_type: type[httpx.TransportError], expected: type[ProviderError]
) -> None:
    error = await edit_error(FakeAPI(raising(exc_type)))
    assert type(error) is expected
    assert isinstance(error.__cause__, exc_type)
    assert exc_type.__name__ in error.message or isinstance(error, AttemptTimeout)


async def test_read_timeout_says_the_provider_may_have_billed() -> None:
    error = await edit_error(FakeAPI(raising(httpx.ReadTimeout)))
    assert isinstance(error, AttemptTimeout)
    assert error.outcome == "timeout"
    assert "billed" in error.message


# --- cost and limits ------------------------------------------------------------------------


async def test_limits() -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(FakeAPI({}))) as client:
        provider = OpenAIProvider("comet", BASE_URL, API_KEY, client)
        assert provider.limits is OPENAI_LIMITS
        assert provider.name == "comet"
