"""What a reply cost, from the usage it reports. Prices in USD per million tokens.

Sources (PROVIDERS.md): gpt-image-2 from CometAPI's model page ("Input $4/M, Output $24/M";
an older copy said $0.04 per request, so treat it as an estimate); gpt-image-1 from OpenAI's
model page. A model without a price gets no cost (shown as unknown), never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

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
