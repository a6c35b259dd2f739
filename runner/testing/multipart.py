"""A strict `multipart/form-data` parser for the fakes (the standard library has none left)."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["BadRequest", "Part", "header_params", "parse_multipart"]


class BadRequest(Exception):
    """The request cannot be served; the message goes back in the dialect's 400 body."""


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def header_params(value: str) -> tuple[str, dict[str, str]]:
    """Split `form-data; name="a"; filename="b"` into its value and parameters."""
    head, _, _ = value.partition(";")
    params: dict[str, str] = {}
    for match in _PARAM.finditer(value[len(head) :]):
        key, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[key] = raw
    if "filename*" in params:
        # RFC 5987: charset'language'percent-encoded
        charset, _, rest = params["filename*"].partition("'")
        _, _, encoded = rest.partition("'")
        with contextlib.suppress(LookupError, UnicodeDecodeError):
            params["filename"] = unquote(encoded, encoding=charset or "utf-8", errors="strict")
    return head.strip().lower(), params


def parse_multipart(content_type: str, body: bytes) -> list[Part]:
    kind, params = header_params(content_type)
    if kind != "multipart/form-data":
        raise BadRequest(f"expected multipart/form-data, got {kind or 'no content type'!r}")
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise BadRequest("multipart body without a usable boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    separator = b"\r\n" + delimiter

    start = body.find(delimiter)
    if start < 0 or (start > 0 and body[start - 2 : start] != b"\r\n"):
        raise BadRequest("multipart body does not contain its boundary")
    pos = start + len(delimiter)
    parts: list[Part] = []
    while True:
        if body.startswith(b"--", pos):
            return parts
        eol = body.find(b"\r\n", pos)
        if eol < 0 or body[pos:eol].strip(b" \t"):
            raise BadRequest("malformed multipart boundary line")
        header_start = eol + 2
        if body.startswith(b"\r\n", header_start):
            header_block, content_start = b"", header_start + 2
        else:
            header_end = body.find(b"\r\n\r\n", header_start)
            if header_end < 0:
                raise BadRequest("multipart part headers are not terminated")
            header_block, content_start = body[header_start:header_end], header_end + 4
        content_end = body.find(separator, content_start)
        if content_end < 0:
            raise BadRequest("multipart body is not terminated by its boundary")
        parts.append(_make_part(header_block, body[content_start:content_end]))
        pos = content_end + len(separator)


def _make_part(header_block: bytes, data: bytes) -> Part:
    headers: dict[str, str] = {}
    for line in header_block.decode("utf-8", "replace").split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon:
            raise BadRequest(f"malformed multipart header {line!r}")
        headers[name.strip().lower()] = value.strip()
    disposition, params = header_params(headers.get("content-disposition", ""))
    if disposition != "form-data" or "name" not in params:
        raise BadRequest("multipart part without Content-Disposition: form-data; name=...")
    return Part(params["name"], params.get("filename"), headers.get("content-type"), data)
