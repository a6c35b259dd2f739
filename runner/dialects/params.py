"""Checks for request params, shared by the dialects' rule tables (`*/rules.py`): pure
rules, applied when the manifest is read, so a typo in `params` costs an exit 2 instead of
a paid (or failed) request per job."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from runner.errors import shown

Rule = Callable[[Any], str | None]

_SIZE = re.compile(r"^(auto|\d{2,5}x\d{2,5})$")
_SCALAR = (str, int, float, bool)
# Fields the runner sets itself; a param of the same name would silently fight them.
RESERVED = frozenset({"image", "image[]", "images", "mask", "prompt", "model", "modelId"})


def one_of(*allowed: str) -> Rule:
    def check(value: Any) -> str | None:
        if value in allowed:
            return None
        return f"must be one of {', '.join(allowed)} (got {shown(value)})"

    return check


def int_between(low: int, high: int) -> Rule:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"must be a whole number from {low} to {high} (got {shown(value)})"
        return None

    return check


def size(value: Any) -> str | None:
    if isinstance(value, str) and _SIZE.match(value):
        return None
    return f"must be 'auto' or WIDTHxHEIGHT such as 1024x1024 (got {shown(value)})"


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false (got {shown(value)})"


def short_text(value: Any) -> str | None:
    if isinstance(value, str) and 1 <= len(value) <= 10:
        return None
    return f"must be text such as 1K, 2K or 4K (got {shown(value)})"


def unsupported(reason: str) -> Rule:
    def check(value: Any) -> str | None:
        return reason

    return check


def check_against(
    rules: Mapping[str, Rule], params: Mapping[str, Any], unknown: str | None = None
) -> tuple[str, str] | None:
    """First problem as (param name, message), or None. `unknown`: the message for a param
    the table does not list (None: such params pass through unchecked)."""
    for name, value in params.items():
        if name in RESERVED:
            return name, f"'{name}' is set by the job itself, not by params"
        if unknown is not None and name not in rules:
            return name, unknown
        if not isinstance(value, _SCALAR):
            return name, f"must be a plain value (text, number or true/false), got {shown(value)}"
        rule = rules.get(name)
        problem = rule(value) if rule else None
        if problem:
            return name, problem
    return None


def expected_format(params: Mapping[str, Any]) -> str:
    """The image format a reply will most likely have, for spotting output-name clashes.
    Venice's default is PNG at 1K and JPEG at 2K/4K."""
    resolution = str(params.get("resolution", "1K")).upper()
    default = "png" if resolution == "1K" or "resolution" not in params else "jpeg"
    named = str(params.get("output_format", default)).lower()
    return "JPEG" if named == "jpg" else named.upper()
