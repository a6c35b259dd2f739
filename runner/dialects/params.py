"""What each API dialect accepts, as pure rules: checked when the manifest is read, so a
typo in `params` costs an exit 2 instead of a paid (or failed) request per job."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from runner.errors import shown
from runner.settings import OPENAI_MAX_N

DIALECTS = ("openai", "venice")
# Venice: swagger's default since 2026-05; the seed's qwen-edit left the docs (PROVIDERS.md §3).
DEFAULT_MODELS = {"openai": "gpt-image-2", "venice": "firered-image-edit"}

# OpenAI shut these down; CometAPI answers them with "no available channel" (PROVIDERS.md §1).
RETIRED_OPENAI_MODELS = {
    "gpt-image-1": "2026-10-23",
    "dall-e-2": "2026-05-12",
    "dall-e-3": "2026-05-12",
}

_SIZE = re.compile(r"^(auto|\d{2,5}x\d{2,5})$")
_SCALAR = (str, int, float, bool)


def _one_of(*allowed: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value in allowed:
            return None
        return f"must be one of {', '.join(allowed)} (got {shown(value)})"

    return check


def _int_between(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"must be a whole number from {low} to {high} (got {shown(value)})"
        return None

    return check


def _size(value: Any) -> str | None:
    if isinstance(value, str) and _SIZE.match(value):
        return None
    return f"must be 'auto' or WIDTHxHEIGHT such as 1024x1024 (got {shown(value)})"


def _unsupported(reason: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return reason

    return check


_OPENAI_PARAMS: Mapping[str, Callable[[Any], str | None]] = {
    "n": _int_between(1, OPENAI_MAX_N),
    "quality": _one_of("low", "medium", "high", "auto", "standard"),
    "size": _size,
    "output_format": _one_of("png", "jpeg", "webp"),
    "background": _one_of("transparent", "opaque", "auto"),
    "input_fidelity": _one_of("high", "low"),
    "output_compression": _int_between(0, 100),
    "response_format": _one_of("url", "b64_json"),
    "stream": _unsupported("streaming replies are not supported by the runner; remove it"),
    "partial_images": _unsupported("needs streaming, which the runner does not use; remove it"),
}


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false (got {shown(value)})"


def _short_text(value: Any) -> str | None:
    if isinstance(value, str) and 1 <= len(value) <= 10:
        return None
    return f"must be text such as 1K, 2K or 4K (got {shown(value)})"


# Venice's EditImageRequest and MultiEditImageRequest (swagger, 2026-08-22) declare
# `additionalProperties: false`: any other field is a 400 for every job (each one counting
# towards Venice's lock-out), so this table is the whole list, not a selection. Which values
# a model takes (aspect ratios, resolutions, qualities) is per model and comes from Venice's
# catalogue at run time; these are the checks that hold for every model.
_VENICE_PARAMS: Mapping[str, Callable[[Any], str | None]] = {
    "aspect_ratio": _one_of("auto", "1:1", "3:2", "16:9", "21:9", "9:16", "2:3", "3:4", "4:5"),
    "resolution": _short_text,
    "output_format": _one_of("jpeg", "jpg", "png", "webp"),
    "safe_mode": _boolean,
    "enhance_prompt": _boolean,
    "disable_prompt_optimization_thinking": _boolean,
    "quality": _one_of("low", "medium", "high"),
    "n": _unsupported("Venice returns one image per edit; remove n"),
}

# Fields the runner sets itself; a param of the same name would silently fight them.
_RESERVED = frozenset({"image", "image[]", "images", "mask", "prompt", "model", "modelId"})
_RULES = {"openai": _OPENAI_PARAMS, "venice": _VENICE_PARAMS}


def check_params(dialect: str, params: Mapping[str, Any]) -> tuple[str, str] | None:
    """First problem as (param name, message), or None. On `openai`, unknown params pass
    through (gateways add fields faster than this table can follow); Venice refuses them."""
    rules = _RULES.get(dialect, {})
    for name, value in params.items():
        if name in _RESERVED:
            return name, f"'{name}' is set by the job itself, not by params"
        if dialect == "venice" and name not in rules:
            accepted = ", ".join(sorted(n for n in rules if n != "n"))
            return name, f"unknown param: Venice refuses it (HTTP 400); accepted: {accepted}"
        if not isinstance(value, _SCALAR):
            return name, f"must be a plain value (text, number or true/false), got {shown(value)}"
        rule = rules.get(name)
        problem = rule(value) if rule else None
        if problem:
            return name, problem
    if dialect == "openai":
        return _check_openai_combinations(params)
    return None


def _check_openai_combinations(params: Mapping[str, Any]) -> tuple[str, str] | None:
    fmt = params.get("output_format", "png")
    if "output_compression" in params and fmt not in ("jpeg", "webp"):
        return "output_compression", "only applies with output_format jpeg or webp"
    if params.get("background") == "transparent" and fmt == "jpeg":
        return "background", "transparent needs output_format png or webp"
    return None


def check_model(dialect: str, model: str) -> str | None:
    retired = RETIRED_OPENAI_MODELS.get(model) if dialect == "openai" else None
    if retired:
        return f"model {model} was shut down by OpenAI on {retired}; use gpt-image-2"
    return None


def expected_format(params: Mapping[str, Any]) -> str:
    """The image format a reply will most likely have, for spotting output-name clashes.
    Venice's default is PNG at 1K and JPEG at 2K/4K."""
    resolution = str(params.get("resolution", "1K")).upper()
    default = "png" if resolution == "1K" or "resolution" not in params else "jpeg"
    named = str(params.get("output_format", default)).lower()
    return "JPEG" if named == "jpg" else named.upper()


def images_per_job(params: Mapping[str, Any]) -> int:
    n = params.get("n", 1)
    return n if isinstance(n, int) and not isinstance(n, bool) else 1
