"""What a job costs: token rates (openai dialect, USD per million tokens) or a price per
edit (venice), from the manifest's `pricing:`, else Venice's catalogue, else built-ins.

Sources (PROVIDERS.md): gpt-image-2 from CometAPI's model page ("Input $4/M, Output $24/M";
an older copy said $0.04 per request, so treat it as an estimate); gpt-image-1 from OpenAI's
model page; Venice's table in catalogue.py. A model without a price gets no cost (shown as
unknown), never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from runner.dialects.venice.catalogue import BUILTIN_VENICE_PRICES, DEFAULT_RESOLUTION, VenicePrice
from runner.records import JobSpec, ReplyFacts, Usage


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
    model: str,
    params: Mapping[str, Any],
    prompt: str,
    has_mask: bool,
    price: TokenPrice | None = None,
) -> float | None:
    """A before-sending estimate; the real cost comes from each reply's usage."""
    price = price or OPENAI_TOKEN_PRICES.get(model)
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


Price = TokenPrice | VenicePrice
_TOKEN_FIELDS = ("text_input", "image_input", "image_output")


def price_from_fields(dialect: str, fields: Mapping[str, float]) -> Price:
    """A manifest `pricing:` entry; ValueError names what is missing or misplaced."""
    if dialect == "openai":
        missing = [name for name in _TOKEN_FIELDS if name not in fields]
        if missing or set(fields) - set(_TOKEN_FIELDS):
            raise ValueError(
                "the openai dialect is priced per million tokens: give text_input, "
                "image_input and image_output (USD per million)"
            )
        return TokenPrice(fields["text_input"], fields["image_input"], fields["image_output"])
    if "per_edit" not in fields or set(fields) - {"per_edit", "extra_image"}:
        raise ValueError(
            "venice is priced per edit: give per_edit (USD) and optionally extra_image "
            "(USD per input image after the first)"
        )
    return VenicePrice(
        per_edit_usd=fields["per_edit"], extra_image_usd=fields.get("extra_image", 0)
    )


def _input_images(spec: JobSpec) -> int:
    return 2 if spec.mask is not None else 1


class PriceBook:
    """One provider profile's prices: the manifest's, then the catalogue's, then built-in."""

    def __init__(
        self,
        dialect: str,
        manifest_prices: Mapping[str, Price],
        catalogue_prices: Mapping[str, VenicePrice] | None = None,
        default_resolutions: Mapping[str, str] | None = None,
    ) -> None:
        self._dialect = dialect
        self._sources: list[tuple[str, Mapping[str, Price]]] = [("manifest", manifest_prices)]
        if catalogue_prices:
            self._sources.append(("catalogue", catalogue_prices))
        builtin: Mapping[str, Price] = (
            OPENAI_TOKEN_PRICES if dialect == "openai" else BUILTIN_VENICE_PRICES
        )
        self._sources.append(("built-in", builtin))
        self._resolutions = default_resolutions or {}

    def lookup(self, model: str) -> tuple[Price, str] | None:
        for source, prices in self._sources:
            if model in prices:
                return prices[model], source
        return None

    def describe(self, spec: JobSpec) -> dict[str, Any] | None:
        """The price a job is costed at, as stored with it (`jobs.price_json`)."""
        found = self.lookup(spec.model)
        if found is None:
            return None
        price, source = found
        if isinstance(price, TokenPrice):
            return {"per_million_tokens": asdict(price), "source": source}
        plain = self._edit_cost(spec, price, enhanced=False)
        enhanced = self._edit_cost(spec, price, enhanced=True)
        return {
            "per_edit_usd": plain,
            "enhance_prompt_usd": round(enhanced - plain, 6),
            "source": source,
        }

    def estimate(self, spec: JobSpec) -> float | None:
        """Before sending: what the job will likely cost (for limits and `validate`)."""
        found = self.lookup(spec.model)
        if found is None:
            return None
        price = found[0]
        if isinstance(price, TokenPrice):
            return estimate_openai_cost(
                spec.model, spec.params, spec.prompt, spec.mask is not None, price
            )
        return self._edit_cost(spec, price, enhanced=spec.params.get("enhance_prompt") is True)

    def cost(self, spec: JobSpec, usage: Usage | None, facts: ReplyFacts | None) -> float | None:
        """After an answer: token usage for openai; per edit for venice, the $0.04 prompt
        rewrite only when the reply says it was applied."""
        found = self.lookup(spec.model)
        if found is None:
            return None
        price = found[0]
        if isinstance(price, TokenPrice):
            return price.cost(usage) if usage is not None else None
        return self._edit_cost(spec, price, enhanced=bool(facts and facts.enhanced_prompt))

    def _edit_cost(self, spec: JobSpec, price: VenicePrice, *, enhanced: bool) -> float:
        resolution = spec.params.get("resolution") or self._resolutions.get(
            spec.model, DEFAULT_RESOLUTION
        )
        quality = spec.params.get("quality")
        return price.cost(
            str(resolution), str(quality) if quality else None, _input_images(spec), enhanced
        )
