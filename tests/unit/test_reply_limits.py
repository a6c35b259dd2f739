"""Replies are bounded: a byte cap (refused at once when announced, cut off when not), an
overall deadline, and `data[].url` downloads that stay on public addresses. MockTransport
streams count what was pulled from them, so "never held more than the cap" is checked."""

from __future__ import annotations

import base64
import gzip
import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml
from PIL import Image

from runner.dialects.openai.client import OpenAIProvider
from runner.dialects.replies import too_deep
from runner.dialects.transfer import MIB, AddressPolicy, ReplyLimits, non_public, reply_limits
from runner.dialects.venice.catalogue import fetch_catalogue, parse_catalogue
from runner.dialects.venice.client import VeniceProvider
from runner.errors import (
    AttemptTimeout,
    CatalogueUnavailable,
    ManifestError,
    PaymentRequired,
    PermanentJobError,
    ProviderError,
    RetryableError,
    Throttled,
)
from runner.manifest.expand import parse_manifest
from runner.records import EditRequest, ImagePart
from runner.settings import DEFAULT_MAX_REPLY_MB

BASE = "https://api.gateway.test/v1"
VENICE_BASE = "https://api.venice.test/api/v1"
GiB = 1024**3
CHUNK = 64 * 1024
SMALL = ReplyLimits(max_image_bytes=1 * MIB)


def picture(size: tuple[int, int] = (320, 240)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (40, 90, 200)).save(buffer, "PNG")
    return buffer.getvalue()


PNG = picture()


def request(**params: Any) -> EditRequest:
    return EditRequest("m", "make it blue", ImagePart("a.png", "image/png", PNG), None, params)


class Endless(httpx.AsyncByteStream):
    """A body that never ends; counts the bytes the client pulled."""

    def __init__(self, chunk: bytes = b"\0" * CHUNK) -> None:
        self.chunk = chunk
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            self.pulled += len(self.chunk)
            yield self.chunk


Answer = Callable[[httpx.Request], httpx.Response]


async def _resolve_public(host: str, port: int) -> list[str]:
    return {"private.gateway.test": ["10.1.2.3"]}.get(host, ["93.184.216.34"])


async def openai_edit(
    answer: Answer, limits: ReplyLimits = SMALL, base: str = BASE, **params: Any
) -> Any:
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        provider = OpenAIProvider(
            "comet", base, "sk-key-123456789", client, limits=limits,
            addresses=AddressPolicy(base, resolve=_resolve_public),
        )  # fmt: skip
        try:
            return await provider.edit(request(**params))
        except ProviderError as exc:
            return exc


async def venice_edit(answer: Answer, limits: ReplyLimits = SMALL) -> Any:
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        provider = VeniceProvider("v", VENICE_BASE, client, api_key="k" * 12, limits=limits)
        try:
            return await provider.edit(request())
        except ProviderError as exc:
            return exc


def b64_reply(image: bytes = PNG, copies: int = 1, pad: int = 0) -> dict[str, Any]:
    data = [{"b64_json": base64.b64encode(image).decode()} for _ in range(copies)]
    return {"created": 1, "data": data, "padding": "x" * pad}


# --- the byte cap ---------------------------------------------------------------------------


@pytest.mark.parametrize("edit", [openai_edit, venice_edit], ids=["openai", "venice"])
async def test_an_announced_3_gib_reply_is_refused_before_reading(edit: Any) -> None:
    body = Endless()
    headers = {"content-length": str(3 * GiB), "content-type": "image/png"}
    error = await edit(lambda _: httpx.Response(200, headers=headers, stream=body))
    assert type(error) is RetryableError  # the provider did answer: not a timeout
    assert "over the 1 MB cap" in error.message and "Content-Length 3,221,225,472" in error.message
    assert body.pulled <= CHUNK  # at most what httpx buffers while opening the stream


@pytest.mark.parametrize("edit", [openai_edit, venice_edit], ids=["openai", "venice"])
async def test_an_endless_chunked_reply_is_cut_off_at_the_cap(edit: Any) -> None:
    body = Endless()
    headers = {"content-type": "image/png"}  # no length: chunked
    error = await edit(lambda _: httpx.Response(200, headers=headers, stream=body))
    assert type(error) is RetryableError
    assert "more than 1,048,576 bytes" in error.message
    assert body.pulled <= 1 * MIB + CHUNK


async def test_a_reply_under_the_cap_is_read_whole() -> None:
    reply = b64_reply(pad=int(0.8 * MIB))  # a large reply, but under 1 MB
    result = await openai_edit(lambda _: httpx.Response(200, json=reply))
    assert len(result.images) == 1


async def test_the_cap_scales_with_the_images_asked_for() -> None:
    reply = b64_reply(pad=int(1.5 * MIB))
    refused = await openai_edit(lambda _: httpx.Response(200, json=reply))
    assert type(refused) is RetryableError
    result = await openai_edit(lambda _: httpx.Response(200, json=reply), n=2)
    assert len(result.images) == 1


async def test_an_endless_error_body_is_cut_to_its_head_and_still_classified() -> None:
    head = json.dumps({"error": {"message": "quota is not enough", "code": "x"}}).encode()
    body = Endless(head + b" " * CHUNK)  # valid JSON first, then garbage forever
    error = await openai_edit(lambda _: httpx.Response(402, stream=body))
    assert isinstance(error, PaymentRequired)  # the status still decides
    assert body.pulled <= 512 * 1024


async def test_a_compressed_error_body_is_classified() -> None:
    body = gzip.compress(json.dumps({"error": {"message": "slow down"}}).encode())
    headers = {"content-encoding": "gzip", "content-type": "application/json"}
    error = await openai_edit(lambda _: httpx.Response(429, content=body, headers=headers))
    assert type(error) is Throttled  # a 429 is weather
    assert error.message == "slow down"


NESTED = b"[" * 200_000  # parsing it recurses past Python's limit


@pytest.mark.parametrize("status", [200, 500])
async def test_hostile_nesting_is_a_bad_reply_not_a_crash(status: int) -> None:
    error = await openai_edit(lambda _: httpx.Response(status, content=NESTED))
    assert type(error) is RetryableError


async def test_hostile_nesting_from_venice_is_classified_by_status() -> None:
    error = await venice_edit(lambda _: httpx.Response(400, content=NESTED))
    assert type(error) is PermanentJobError


def test_hostile_nesting_in_the_model_list_makes_it_unavailable() -> None:
    with pytest.raises(CatalogueUnavailable, match="not JSON"):
        parse_catalogue(NESTED)


# --- data[].url downloads -------------------------------------------------------------------


def url_reply(url: str) -> dict[str, Any]:
    return {"created": 1, "data": [{"url": url}], "usage": {"total_tokens": 7}}


class Downloads:
    """Answers the POST with a url reply; GETs from `routes`; records every GET."""

    def __init__(self, url: str, routes: dict[str, Answer] | None = None) -> None:
        self.url = url
        self.routes = routes or {}
        self.gets: list[str] = []

    def __call__(self, req: httpx.Request) -> httpx.Response:
        if req.method == "POST":
            return httpx.Response(200, json=url_reply(self.url))
        self.gets.append(str(req.url))
        return self.routes.get(str(req.url), lambda _: httpx.Response(200, content=PNG))(req)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/x.png",
        "http://[::1]/x.png",
        "http://0.0.0.0/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "https://private.gateway.test/x.png",  # a name that resolves to 10.1.2.3
    ],
)
async def test_downloads_to_non_public_addresses_are_refused(url: str) -> None:
    api = Downloads(url)
    error = await openai_edit(api)
    assert type(error) is PermanentJobError  # sending again would pay for another such link
    assert "public addresses only" in error.message
    assert error.usage is not None  # the reply was billed: its usage is kept
    assert api.gets == []  # nothing was fetched


async def test_a_redirect_to_a_private_address_is_refused() -> None:
    first = "https://cdn.gateway.test/x.png"
    api = Downloads(
        first,
        {first: lambda _: httpx.Response(302, headers={"location": "http://169.254.169.254/"})},
    )
    error = await openai_edit(api)
    assert type(error) is PermanentJobError
    assert "169.254.169.254" in error.message and "link-local" in error.message
    assert api.gets == [first]


async def test_a_public_redirect_is_followed_and_endless_ones_are_not() -> None:
    first, second = "https://cdn.gateway.test/a.png", "https://cdn2.gateway.test/b.png"
    api = Downloads(first, {first: lambda _: httpx.Response(301, headers={"location": second})})
    result = await openai_edit(api)
    assert [image.data for image in result.images] == [PNG]
    assert api.gets == [first, second]

    loop = Downloads(first, {first: lambda _: httpx.Response(302, headers={"location": first})})
    error = await openai_edit(loop)
    assert type(error) is RetryableError
    assert "redirects" in error.message
    assert len(loop.gets) == 6


async def test_a_download_over_the_cap_is_refused_and_keeps_the_usage() -> None:
    url = "https://cdn.gateway.test/big.png"
    body = Endless()
    api = Downloads(url, {url: lambda _: httpx.Response(200, stream=body)})
    error = await openai_edit(api)
    assert type(error) is RetryableError
    assert "over the 1 MB cap" in error.message
    assert error.usage is not None and error.usage.total_tokens == 7
    assert body.pulled <= 1 * MIB + CHUNK


async def test_a_provider_on_a_private_address_may_point_at_private_addresses() -> None:
    api = Downloads("http://127.0.0.1:8000/files/x.png")
    result = await openai_edit(api, base="http://127.0.0.1:8000/v1")
    assert [image.data for image in result.images] == [PNG]


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("127.0.0.2", "loopback"),
        ("169.254.169.254", "link-local"),
        ("10.0.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("::1", "loopback"),
        ("fe80::1%eth0", "link-local"),
        ("fd00::1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:a00:1::", "private"),  # 6to4 around 10.0.0.1
    ],
)
def test_non_public_addresses(address: str, reason: str | None) -> None:
    assert non_public(address) == reason


async def test_an_endless_model_list_is_cut_off() -> None:
    body = Endless()
    transport = httpx.MockTransport(lambda _: httpx.Response(200, stream=body))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(CatalogueUnavailable, match="over the 8 MB cap"):
            await fetch_catalogue(client, VENICE_BASE)
    assert body.pulled <= 8 * MIB + CHUNK


# --- the overall deadline (real time: a short one) ------------------------------------------


class Drip(httpx.AsyncByteStream):
    """One byte every `every` seconds, for ever."""

    def __init__(self, every: float) -> None:
        self.every = every

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            await anyio.sleep(self.every)
            yield b" "


@pytest.mark.slow
@pytest.mark.parametrize("edit", [openai_edit, venice_edit], ids=["openai", "venice"])
async def test_a_dripping_reply_ends_at_the_deadline(edit: Any) -> None:
    limits = ReplyLimits(max_image_bytes=MIB, deadline_s=0.3)
    headers = {"content-length": "1000", "content-type": "image/png"}
    with anyio.fail_after(5):
        error = await edit(
            lambda _: httpx.Response(200, headers=headers, stream=Drip(0.02)), limits
        )
    assert type(error) is AttemptTimeout
    assert "0.3 s" in error.message


@pytest.mark.slow
async def test_a_dripping_download_ends_at_the_deadline() -> None:
    url = "https://cdn.gateway.test/x.png"
    api = Downloads(url, {url: lambda _: httpx.Response(200, stream=Drip(0.02))})
    with anyio.fail_after(5):
        error = await openai_edit(api, ReplyLimits(max_image_bytes=MIB, deadline_s=0.3))
    assert type(error) is RetryableError  # the edit itself was answered (and billed)
    assert "not complete within 0.3 s" in error.message
    assert error.usage is not None


# --- the profile key ------------------------------------------------------------------------


def _profile(tmp_path: Path, **extra: Any) -> Any:
    document = {
        "providers": {"p": {"dialect": "openai", "base_url": BASE, "api_key_env": "K", **extra}},
        "jobs": [{"image": "a.png", "prompt": "x"}],
    }
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump(document))
    return parse_manifest(path).providers["p"]


def test_max_reply_mb_defaults_and_timeout_bounds_the_exchange(tmp_path: Path) -> None:
    limits = reply_limits(_profile(tmp_path, timeout_s=90))
    assert limits == ReplyLimits(DEFAULT_MAX_REPLY_MB * MIB, deadline_s=90.0)
    assert DEFAULT_MAX_REPLY_MB * MIB > 35 * 10**6  # above a 4K PNG in base64
    assert reply_limits(_profile(tmp_path, max_reply_mb=0.5)).max_image_bytes == MIB // 2


def test_max_reply_mb_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"providers\.p\.max_reply_mb"):
        _profile(tmp_path, max_reply_mb=0)


@pytest.mark.parametrize(
    ("content", "deep"),
    [
        (b"[" * 64 + b"]" * 64, False),
        (b"[" * 65 + b"]" * 65, True),
        (b"[0," * 65, True),  # invalid, and deep before it is invalid
        (b'{"a": "' + b"[" * 500 + b'", "b": [1, {"c": 2}]}', False),  # inside a string
        (b'{"a": "\\"[[[[' + b"[" * 500 + b'"}', False),  # after an escaped quote
        (b"[]" * 10_000, False),  # many, but shallow
    ],
)
def test_nesting_depth(content: bytes, deep: bool) -> None:
    assert too_deep(content) is deep


@pytest.mark.slow
def test_hostile_nesting_is_refused_even_with_a_raised_recursion_limit() -> None:
    # eth-account (imported for wallet profiles) sets the recursion limit to 100,000, past
    # what the C stack holds: json.loads then crashes the process instead of raising.
    script = (
        "import sys, eth_account; assert sys.getrecursionlimit() >= 100_000\n"
        "from runner.dialects.replies import loads\n"
        "try:\n    loads(b'[' * 2_000_000)\nexcept ValueError:\n    print('refused')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout == "refused\n"
