"""Lifting base64 images out of a JSON reply must give exactly what json.loads would."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest

from runner.dialects.replies import lift_base64, restore


def parse(content: bytes) -> tuple[Any, list[bytes]]:
    small, lifted = lift_base64(content)
    return json.loads(small), lifted


def images_of(body: Any, lifted: list[bytes]) -> list[Any]:
    return [restore(item.get("b64_json"), lifted) for item in body["data"]]


@pytest.mark.parametrize("indent", [None, 2])
def test_lifted_values_equal_the_parsed_strings(indent: int | None) -> None:
    encoded = [base64.b64encode(os.urandom(n)).decode() for n in (3000, 10, 7777)]
    document = {
        "created": 1,
        "data": [{"b64_json": value, "revised_prompt": "p"} for value in encoded],
        "usage": {"total_tokens": 5},
    }
    body, lifted = parse(json.dumps(document, indent=indent).encode())
    assert images_of(body, lifted) == [value.encode() for value in encoded]
    assert body["usage"] == {"total_tokens": 5}
    assert len(json.dumps(body)) < 400  # the big strings were not parsed


@pytest.mark.parametrize(
    "document",
    [
        # JSON may escape "/" as "\/": the lift backs off and json.loads does it all.
        '{"data": [{"b64_json": "ab\\/cd=="}]}',
        # The key's text inside another string is escaped, so never mistaken for the key.
        '{"data": [{"revised_prompt": "say \\"b64_json\\": \\"x\\"", "b64_json": "QUJD"}]}',
        # The text as a value, a null value, and no image at all.
        '{"kind": "b64_json", "data": [{"b64_json": null, "url": "https://x/y.png"}]}',
        '{"data": []}',
    ],
)
def test_unusual_bodies_parse_as_json_loads_would(document: str) -> None:
    expected = json.loads(document)
    body, lifted = parse(document.encode())
    restored = [
        {**item, "b64_json": _as_text(restore(item.get("b64_json"), lifted))}
        if "b64_json" in item
        else item
        for item in body["data"]
    ]
    assert {**body, "data": restored} == expected


def _as_text(value: object) -> object:
    return bytes(value).decode() if isinstance(value, bytes | memoryview) else value


def test_a_placeholder_is_only_honoured_for_lifted_values() -> None:
    assert restore("\x00lifted:7", [b"only one"]) == "\x00lifted:7"
    assert restore("plain", []) == "plain"
