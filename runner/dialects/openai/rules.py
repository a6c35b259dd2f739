"""The OpenAI / CometAPI dialect's rules as data: input limits, params, retired models and
token prices. The dialect object that uses them is in `__init__.py`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from runner import settings
from runner.dialects import params as p
from runner.records import ImageLimits, JobSpec, ReplyFacts, Usage, images_asked
from runner.settings import OPENAI_MAX_N

LIMITS = ImageLimits(
    formats=settings.OPENAI_IMAGE_FORMATS,
    max_image_bytes=settings.OPENAI_MAX_IMAGE_BYTES,
    max_mask_bytes=settings.OPENAI_MAX_MASK_BYTES,
    max_prompt_chars=settings.OPENAI_MAX_PROMPT_CHARS,
)

# OpenAI shut these down; CometAPI answers them with "no available channel" (PROVIDERS.md §1).
RETIRED_MODELS = {
    "gpt-image-1": "2026-10-23",
    "dall-e-2": "2026-05-12",
    "dall-e-3": "2026-05-12",
}

PARAMS: Mapping[str, p.Rule] = {
    "n": p.int_between(1, OPENAI_MAX_N),
    "quality": p.one_of("low", "medium", "high", "auto", "standard"),
    "size": p.size,
    "output_format": p.one_of("png", "jpeg", "webp"),
    "background": p.one_of("transparent", "opaque", "auto"),
    "input_fidelity": p.one_of("high", "low"),
    "output_compression": p.int_between(0, 100),
    "response_format": p.one_of("url", "b64_json"),
    "stream": p.unsupported("streaming replies are not supported by the runner; remove it"),
    "partial_images": p.unsupported("needs streaming, which the runner does not use; remove it"),
}


def check_combinations(params: Mapping[str, Any]) -> tuple[str, str] | None:
    fmt = params.get("output_format", "png")
    if "output_compression" in params and fmt not in ("jpeg", "webp"):
        return "output_compression", "only applies with output_format jpeg or webp"
    if params.get("background") == "transparent" and fmt == "jpeg":
        return "background", "transparent needs output_format png or webp"
    return None


# --- prices: USD per million tokens ---------------------------------------------------------
# Sources (PROVIDERS.md): gpt-image-2 from CometAPI's model page ("Input $4/M, Output $24/M";
# an older copy said $0.04 per request, so treat it as an estimate); gpt-image-1 from
# OpenAI's model page.


@dataclass(frozen=True, slots=True)
class TokenPrice:
    text_input: float
    image_input: float
    image_output: float

    def cost(self, usage: Usage) -> float | None:
        if usage.input_tokens is None and usage.output_tokens is None:
            return None
        text_in = usage.input_text_tokens
        image_in = usage.input_image_tokens
        if text_in is None and image_in is None:
            # No split reported: price all input at the dearer rate rather than under-report.
            image_in, text_in = usage.input_tokens or 0, 0
        return self.of_tokens(text_in or 0, image_in or 0, usage.output_tokens or 0)

    def of_tokens(self, text_in: int, image_in: int, output: int) -> float:
        total = text_in * self.text_input + image_in * self.image_input + output * self.image_output
        return round(total / 1_000_000, 8)


TOKEN_PRICES: dict[str, TokenPrice] = {
    "gpt-image-2": TokenPrice(text_input=4.0, image_input=4.0, image_output=24.0),
    "gpt-image-1": TokenPrice(text_input=5.0, image_input=10.0, image_output=40.0),
}
_TOKEN_FIELDS = ("text_input", "image_input", "image_output")


def price_from_fields(fields: Mapping[str, float]) -> TokenPrice:
    """A manifest `pricing:` entry for an openai profile."""
    missing = [name for name in _TOKEN_FIELDS if name not in fields]
    if missing or set(fields) - set(_TOKEN_FIELDS):
        raise ValueError(
            "the openai dialect is priced per million tokens: give text_input, "
            "image_input and image_output (USD per million)"
        )
    return TokenPrice(fields["text_input"], fields["image_input"], fields["image_output"])


def openai_cost(model: str, usage: Usage | None) -> float | None:
    price = TOKEN_PRICES.get(model)
    if price is None or usage is None:
        return None
    return price.cost(usage)


# Output tokens per image by quality and size, from OpenAI's image-generation guide
# (gpt-image-1 figures; CometAPI bills gpt-image-2 the same way as far as is known).
_OUTPUT_TOKENS = {
    "low": {"square": 272, "wide": 408},
    "medium": {"square": 1056, "wide": 1584},
    "high": {"square": 4160, "wide": 6240},
}
_IMAGE_INPUT_TOKENS = 765  # one 1024x1024 input image; a mask adds as much again


def estimate_openai_cost(
    model: str,
    params: Mapping[str, Any],
    prompt: str,
    has_mask: bool,
    price: TokenPrice | None = None,
) -> float | None:
    """A before-sending estimate; the real cost comes from each reply's usage."""
    price = price or TOKEN_PRICES.get(model)
    if price is None:
        return None
    quality = str(params.get("quality", "high"))
    per_size = _OUTPUT_TOKENS.get(quality, _OUTPUT_TOKENS["high"])  # auto may pick high
    size = str(params.get("size", "1024x1024"))
    shape = "square" if size in ("1024x1024", "auto") else "wide"
    # What the usage of such a reply would be, priced as `price.cost` prices usage (no
    # Usage made: validate estimates every job of a manifest).
    image_tokens = _IMAGE_INPUT_TOKENS * (2 if has_mask else 1)
    return price.of_tokens(len(prompt) // 4, image_tokens, per_size[shape] * images_asked(params))


class TokenPricing:
    """`Pricing` for token prices: estimated before sending, costed from reported usage."""

    def estimate(self, spec: JobSpec, price: TokenPrice) -> float | None:
        return estimate_openai_cost(
            spec.model, spec.params, spec.prompt, spec.mask is not None, price
        )

    def cost(
        self, spec: JobSpec, price: TokenPrice, usage: Usage | None, facts: ReplyFacts | None
    ) -> float | None:
        return price.cost(usage) if usage is not None else None

    def describe(self, spec: JobSpec, price: TokenPrice) -> dict[str, Any]:
        return {"per_million_tokens": asdict(price)}
