"""Reading big JSON replies cheaply: the base64 images are cut out before parsing.

A 2 MB reply is nearly all one base64 string, and `json.loads` walks it character by
character only to hand back the same characters (1.7 ms of GIL per reply, measured). A JSON
string cannot hold an unescaped quote, so each `"b64_json": "..."` value can be lifted out of
the raw bytes exactly; the small remainder is parsed as usual and the images are decoded
straight from the lifted bytes. Anything unusual (an escape inside a value) falls back to
parsing the whole body.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

_KEY = b'"b64_json"'
_SPACE = b" \t\r\n"
PLACEHOLDER = "\x00lifted:"  # never the start of base64 text


def _skip_space(content: bytes, index: int) -> int:
    while index < len(content) and content[index] in _SPACE:
        index += 1
    return index


def lift_base64(content: bytes) -> tuple[bytes, list[memoryview]]:
    """The body with every `b64_json` string value replaced by a placeholder, and the
    values; or the body untouched and no values when it is safer to parse it whole."""
    parts: list[bytes] = []
    lifted: list[memoryview] = []  # views into `content`: no 2 MB copies
    position = 0
    while (key := content.find(_KEY, position)) != -1:
        colon = _skip_space(content, key + len(_KEY))
        if content[colon : colon + 1] != b":":
            position = colon  # the text "b64_json" as a value, not a key
            continue
        opening = _skip_space(content, colon + 1)
        if content[opening : opening + 1] != b'"':
            position = opening  # null or another non-string value: json.loads reads it
            continue
        closing = content.find(b'"', opening + 1)
        if closing == -1 or content.find(b"\\", opening + 1, closing) != -1:
            return content, []
        parts += [content[position:opening], b'"\\u0000lifted:%d"' % len(lifted)]
        lifted.append(memoryview(content)[opening + 1 : closing])
        position = closing + 1
    if not lifted:
        return content, []
    parts.append(content[position:])
    return b"".join(parts), lifted


def restore(value: object, lifted: list[memoryview]) -> object:
    """A parsed `b64_json` value: the lifted bytes its placeholder stands for, else as is."""
    if isinstance(value, str) and value.startswith(PLACEHOLDER):
        index = value[len(PLACEHOLDER) :]
        if index.isdigit() and int(index) < len(lifted):
            return lifted[int(index)]
    return value


# Provider JSON nests a few levels. Deeper is hostile, and json.loads must never see it: it
# recurses in C, and with eth-account imported (py_ecc raises the recursion limit to
# 100,000) "[[[[…" overflows the C stack and kills the process instead of raising.
MAX_JSON_DEPTH = 64
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)  # possessive: linear on megabytes
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
_STEP = [1 if byte in b"[{" else -1 if byte in b"]}" else 0 for byte in range(256)]


def too_deep(content: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `content` nests arrays and objects more than `limit` deep (brackets inside
    strings do not count)."""
    if content.count(b"[") + content.count(b"{") <= limit:  # most replies: done here
        return False
    brackets = _STRING.sub(b"", content).translate(None, _NOT_BRACKET)
    return any(depth > limit for depth in itertools.accumulate(map(_STEP.__getitem__, brackets)))


def loads(content: bytes) -> Any:
    """`json.loads` for what a provider sent: ValueError for nesting past MAX_JSON_DEPTH."""
    if too_deep(content):
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return json.loads(content)
