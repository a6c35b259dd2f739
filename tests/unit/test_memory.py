"""Each reply (2 MB) and upload (1.5 MB) must be freed when done, not at the next full
garbage collection: httpx's response and stream point at each other (encode/httpx#3733)."""

from __future__ import annotations

import base64
import gc
import weakref
from collections.abc import Iterator

import httpx
import pytest
from helpers import png_bytes

from runner.dialects.openai.client import OpenAIProvider
from runner.errors import RetryableError
from runner.records import EditRequest, ImagePart


def png() -> bytes:
    return png_bytes((8, 8), (1, 2, 3))


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def test_an_exchange_is_freed_by_reference_counting(no_cyclic_gc: None) -> None:
    body = {"data": [{"b64_json": base64.b64encode(png()).decode()}]}
    responses: list[weakref.ref[httpx.Response]] = []

    async def remember(response: httpx.Response) -> None:
        responses.append(weakref.ref(response))

    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
    async with httpx.AsyncClient(
        transport=transport, event_hooks={"response": [remember]}
    ) as client:
        provider = OpenAIProvider("p", "https://example.test/v1", "key", client)
        request = EditRequest("m", "x", ImagePart("a.png", "image/png", png()), None, {})
        result = await provider.edit(request)

    assert len(result.images) == 1
    assert len(responses) == 1
    assert responses[0]() is None, "the response (and with it the upload) is still alive"


async def test_a_failed_exchange_is_freed_by_reference_counting(no_cyclic_gc: None) -> None:
    # A connection that breaks mid-reply: the error raised must not sit in a cycle with
    # the frames it came through, which hold the request and its upload.
    requests: list[weakref.ref[httpx.Request]] = []

    async def remember(request: httpx.Request) -> None:
        requests.append(weakref.ref(request))

    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset by peer", request=request)

    async with httpx.AsyncClient(
        transport=httpx.MockTransport(broken), event_hooks={"request": [remember]}
    ) as client:
        provider = OpenAIProvider("p", "https://example.test/v1", "key", client)
        request = EditRequest("m", "x", ImagePart("a.png", "image/png", png()), None, {})
        with pytest.raises(RetryableError, match="network error: ReadError"):
            await provider.edit(request)

    assert len(requests) == 1
    assert requests[0]() is None, "the failed request (and its upload) is still alive"
