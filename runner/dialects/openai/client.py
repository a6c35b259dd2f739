"""The OpenAI dialect (CometAPI and other OpenAI-compatible gateways):
multipart `POST {base_url}/images/edits`, JSON reply with `data[].b64_json` or `data[].url`.
"""

from __future__ import annotations

import binascii
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import httpx
from pybase64 import b64decode  # SIMD: ~3x faster than binascii on a 2 MB reply

from runner.cpu_work import run_cpu_work
from runner.dialects.base import classify, post_streamed, request_id_of
from runner.dialects.openai.rules import LIMITS as OPENAI_LIMITS
from runner.dialects.replies import lift_base64, loads, restore
from runner.dialects.transfer import (
    DEFAULT_LIMITS,
    AddressPolicy,
    AddressRefused,
    DownloadRefused,
    ReplyLimits,
    download,
)
from runner.errors import PermanentJobError, ProviderError, RetryableError
from runner.files.preflight import read_image_info
from runner.files.uploads import FileUpload, close_uploads, upload_body
from runner.records import EditRequest, EditResult, ImageLimits, ReplyImage, Usage, images_asked
from runner.redact import redact_error, redact_result

# ProviderError: an image over the cap.
_DOWNLOAD_FAILURES = (httpx.HTTPError, httpx.InvalidURL, ValueError, DownloadRefused, ProviderError)


@dataclass(frozen=True, slots=True)
class _Parsed:
    images: tuple[ReplyImage, ...]
    urls: tuple[str, ...]
    usage: Usage | None


class OpenAIProvider:
    limits: ImageLimits = OPENAI_LIMITS

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str,
        client: httpx.AsyncClient,
        wall_clock: Callable[[], float] = time.time,
        *,
        limits: ReplyLimits = DEFAULT_LIMITS,
        addresses: AddressPolicy | None = None,
    ) -> None:
        self.name = name
        self._url = f"{base_url.rstrip('/')}/images/edits"
        self._client = client
        # Sent per request, never set on the client: image URLs in replies may point at
        # other hosts, and those downloads must not carry the key.
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._wall_clock = wall_clock
        self._limits = limits
        self._addresses = addresses or AddressPolicy(base_url)

    def __repr__(self) -> str:  # the key stays out of logs and tracebacks
        return f"OpenAIProvider(name={self.name!r}, url={self._url!r})"

    async def edit(self, request: EditRequest) -> EditResult:
        """The provider boundary: every text in what comes back is redacted here."""
        try:
            return redact_result(await self._edit(request))
        except ProviderError as exc:
            redact_error(exc)
            raise

    async def _edit(self, request: EditRequest) -> EditResult:
        response, content = await self._post(request)
        if response.status_code != 200:
            raise classify(response, self._wall_clock())
        request_id = request_id_of(response)
        parsed = await run_cpu_work(len(content), _parse_reply, content, request_id)
        images = parsed.images + await self._download(parsed, request_id)
        if not images:
            raise RetryableError(
                "reply has no image in data[]",
                status_code=200,
                request_id=request_id,
                usage=parsed.usage,
            )
        return EditResult(images=images, usage=parsed.usage, request_id=request_id)

    async def _post(self, request: EditRequest) -> tuple[httpx.Response, bytes]:
        files = _file_parts(request)
        try:
            return await post_streamed(
                self._client,
                self._url,
                data=_form_fields(request),
                files=files,
                headers=self._auth,
                limits=self._limits,
                images=images_asked(request.params),
            )
        finally:
            close_uploads(files)

    async def _download(self, parsed: _Parsed, request_id: str | None) -> tuple[ReplyImage, ...]:
        """Fetch `data[].url` images (the provider deletes them after a while)."""
        fetched = []
        for url in parsed.urls:
            try:
                content = await download(self._client, url, self._addresses, self._limits)
            except AddressRefused as exc:
                # Sending it again would pay again for another link the runner will not follow.
                raise PermanentJobError(
                    f"the result image is at an address the runner does not fetch from: {exc}",
                    status_code=200,
                    request_id=request_id,
                    usage=parsed.usage,
                ) from exc
            except _DOWNLOAD_FAILURES as exc:  # the reply was paid for: its usage stays with it
                raise RetryableError(
                    f"could not download the result image {url}: {exc}",
                    status_code=200,  # the edit itself was answered, and billed
                    request_id=request_id,
                    usage=parsed.usage,
                ) from exc
            image = await run_cpu_work(len(content), read_image_info, content)
            if image is None:
                raise _bad_image(request_id, parsed.usage)
            fetched.append(image)
        return tuple(fetched)

    def limits_for(self, model: str) -> ImageLimits:
        return self.limits

    def check_request(self, request: EditRequest) -> None:
        """Nothing beyond the manifest's and pre-flight's checks: no model list to ask."""


def _form_fields(request: EditRequest) -> dict[str, str]:
    fields = {"prompt": request.prompt, "model": request.model}
    for name, value in request.params.items():
        fields[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return fields


def _file_parts(request: EditRequest) -> list[tuple[str, tuple[str, bytes | FileUpload, str]]]:
    """The multipart file fields; an input left on disk is read as it is sent (uploads.py)."""
    named = [("image", request.image), *([("mask", request.mask)] if request.mask else [])]
    return [
        (field, (part.filename, upload_body(field, part), part.content_type))
        for field, part in named
    ]


def _bad_image(request_id: str | None, usage: Usage | None) -> ProviderError:
    return RetryableError(
        "reply image does not decode", status_code=200, request_id=request_id, usage=usage
    )


def _parse_reply(content: bytes, request_id: str | None) -> _Parsed:
    small, lifted = lift_base64(content)
    try:
        body = loads(small)
    except ValueError as exc:
        raise RetryableError(
            f"reply is not JSON ({len(content)} bytes)", status_code=200, request_id=request_id
        ) from exc
    return parse_body(body, lifted, request_id)


def parse_body(body: Any, lifted: list[memoryview], request_id: str | None) -> _Parsed:
    """A parsed reply body (its `b64_json` values lifted out, see `lift_base64`): the
    images decoded and checked, the `url`s to fetch, the usage. A batch output line
    carries the same body inside it (dialects/openai/batch.py)."""
    if not isinstance(body, dict):
        raise RetryableError("reply is not a JSON object", status_code=200, request_id=request_id)
    usage = parse_usage(body.get("usage"))
    images: list[ReplyImage] = []
    urls: list[str] = []
    data_items = body.get("data")
    for item in data_items if isinstance(data_items, list) else []:
        if not isinstance(item, dict):
            continue
        encoded = restore(item.get("b64_json"), lifted)
        if isinstance(encoded, str):
            encoded = memoryview(encoded.encode("ascii", "replace"))
        if isinstance(encoded, memoryview) and encoded.nbytes:
            # Some gateways send a data URL; the lenient decoder would skip the prefix's
            # bad characters and decode garbage.
            head = bytes(encoded[:256])
            marker = head.find(b"base64,") if head.startswith(b"data:") else -1
            if marker != -1:
                encoded = encoded[marker + len(b"base64,") :]
            try:
                data = b64decode(encoded)
            except (binascii.Error, ValueError) as exc:
                raise _bad_image(request_id, usage) from exc
            image = read_image_info(data)
            if image is None:
                raise _bad_image(request_id, usage)
            images.append(image)
        elif isinstance(url := item.get("url"), str) and url.startswith(("http://", "https://")):
            urls.append(url)
    return _Parsed(tuple(images), tuple(urls), usage)


# No real image edit comes near this many tokens in any usage field (a 4K output at high
# quality is in the tens of thousands); a larger figure is a gateway's bug, not a bill.
MAX_PLAUSIBLE_TOKENS = 2_000_000


def _dict(mapping: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = mapping.get(name)
    return value if isinstance(value, dict) else {}


def _tokens(mapping: Mapping[str, Any], name: str, path: str, problems: list[str]) -> int | None:
    """A token count, or None when absent; a value that is not a plausible count is left
    out and said why, so no sum or cost is built on it."""
    value = mapping.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{path} is not a whole number ({str(value)[:40]!r})")
        return None
    if value < 0:
        problems.append(f"{path} is negative ({value})")
        return None
    if value > MAX_PLAUSIBLE_TOKENS:
        problems.append(f"{path} is beyond any real image ({value:,})")
        return None
    return value


def parse_usage(raw: Any) -> Usage | None:
    """Read what is there, whatever the gateway's shape (PROVIDERS.md §1: it varies).
    Figures no real reply has (negative, fractional, absurd) are flagged in `suspect`."""
    if not isinstance(raw, dict):
        return None
    problems: list[str] = []
    input_details = _dict(raw, "input_tokens_details")
    output_details = _dict(raw, "output_tokens_details")
    usage = Usage(
        input_tokens=_tokens(raw, "input_tokens", "input_tokens", problems),
        output_tokens=_tokens(raw, "output_tokens", "output_tokens", problems),
        total_tokens=_tokens(raw, "total_tokens", "total_tokens", problems),
        input_image_tokens=_tokens(
            input_details, "image_tokens", "input_tokens_details.image_tokens", problems
        ),
        input_text_tokens=_tokens(
            input_details, "text_tokens", "input_tokens_details.text_tokens", problems
        ),
        output_image_tokens=_tokens(
            output_details, "image_tokens", "output_tokens_details.image_tokens", problems
        ),
        raw=json.dumps(raw, separators=(",", ":"), sort_keys=True),
    )
    return replace(usage, suspect="; ".join(problems)) if problems else usage
