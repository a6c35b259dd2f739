"""What a reply cost, from the usage it reports. Prices in USD per million tokens.

Sources (PROVIDERS.md): gpt-image-2 from CometAPI's model page ("Input $4/M, Output $24/M";
an older copy said $0.04 per request, so treat it as an estimate); gpt-image-1 from OpenAI's
model page. A model without a price gets no cost (shown as unknown), never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .models import Usage


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
        total = (
            (text_in or 0) * self.text_input
            + (image_in or 0) * self.image_input
            + (usage.output_tokens or 0) * self.image_output
        )
        return round(total / 1_000_000, 8)


OPENAI_TOKEN_PRICES: dict[str, TokenPrice] = {
    "gpt-image-2": TokenPrice(text_input=4.0, image_input=4.0, image_output=24.0),
    "gpt-image-1": TokenPrice(text_input=5.0, image_input=10.0, image_output=40.0),
}


def openai_cost(model: str, usage: Usage | None) -> float | None:
    price = OPENAI_TOKEN_PRICES.get(model)
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
    model: str, params: Mapping[str, Any], prompt: str, has_mask: bool
) -> float | None:
    """A before-sending estimate for `validate`; the real cost comes from each reply."""
    price = OPENAI_TOKEN_PRICES.get(model)
    if price is None:
        return None
    quality = str(params.get("quality", "high"))
    per_size = _OUTPUT_TOKENS.get(quality, _OUTPUT_TOKENS["high"])  # auto may pick high
    size = str(params.get("size", "1024x1024"))
    shape = "square" if size in ("1024x1024", "auto") else "wide"
    n = params.get("n", 1)
    images = n if isinstance(n, int) and not isinstance(n, bool) else 1
    usage = Usage(
        input_tokens=_IMAGE_INPUT_TOKENS * (2 if has_mask else 1) + len(prompt) // 4,
        input_image_tokens=_IMAGE_INPUT_TOKENS * (2 if has_mask else 1),
        input_text_tokens=len(prompt) // 4,
        output_tokens=per_size[shape] * images,
    )
    return price.cost(usage)
