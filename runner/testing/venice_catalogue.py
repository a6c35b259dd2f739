"""The fake Venice's model list (`GET /models?type=inpaint`) and what its edits cost.

Entries have the shape of the real list's `data[]` items (swagger `ModelResponse`), so the
fake serves them as they are and prices every edit from them, as PROVIDERS.md §4.4 says a
client should: the per-edit price, or the resolution x quality table where the model has
one, plus each input image past the included ones, plus $0.04 for an `enhance_prompt`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "DEFAULT_ASPECT_RATIOS",
    "DEFAULT_MODEL",
    "ENHANCE_PROMPT_USD",
    "default_catalogue",
    "effective_resolution",
    "format_usd",
    "max_input_images",
    "micro_usd",
    "model_entry",
    "price_micro_usd",
]

DEFAULT_MODEL = "firered-image-edit"  # swagger's default for `/image/edit`
DEFAULT_ASPECT_RATIOS = ("auto", "1:1", "3:2", "16:9", "9:16", "2:3", "3:4", "4:5")
ENHANCE_PROMPT_USD = 0.04

Json = dict[str, Any]


def micro_usd(usd: float) -> int:
    """Money is kept in integer micro-dollars (= USDC base units), so sums stay exact."""
    return round(usd * 1_000_000)


def format_usd(micro: int) -> str:
    """Micro-dollars as a header shows them: `9.96`, `0.0035`, `10`."""
    return f"{micro / 1_000_000:.6f}".rstrip("0").rstrip(".")


def _money(usd: float) -> Json:
    # One DIEM buys a dollar's worth of compute, so the fake prices both alike.
    return {"usd": usd, "diem": usd}


def model_entry(
    model_id: str,
    *,
    usd: float,
    name: str | None = None,
    aspect_ratios: Sequence[str] = DEFAULT_ASPECT_RATIOS,
    prompt_limit: int = 1500,
    combine_images: bool = False,
    max_images: int | None = None,
    resolutions: Sequence[str] | None = None,
    default_resolution: str | None = None,
    resolution_usd: Mapping[str, float] | None = None,
    qualities: Sequence[str] | None = None,
    default_quality: str | None = None,
    quality_usd: Mapping[str, Mapping[str, float]] | None = None,
    extra_image_usd: float | None = None,
    included_images: int = 1,
    offline: bool = False,
) -> Json:
    """One `data[]` item of `GET /models?type=inpaint`; optional parts only when given."""
    constraints: Json = {
        "aspectRatios": list(aspect_ratios),
        "promptCharacterLimit": prompt_limit,
        "combineImages": combine_images,
    }
    if max_images is not None:
        constraints["maxInputImages"] = max_images
    if resolutions is not None:
        constraints["resolutions"] = list(resolutions)
        constraints["defaultResolution"] = default_resolution or resolutions[0]
    if qualities is not None:
        constraints["qualities"] = list(qualities)
        constraints["defaultQuality"] = default_quality or qualities[-1]
    pricing: Json = {"inpaint": _money(usd)}
    if resolution_usd is not None:
        pricing["resolutions"] = {res: _money(v) for res, v in resolution_usd.items()}
    if extra_image_usd is not None:
        pricing["inputImages"] = {
            "included": included_images,
            "additional": _money(extra_image_usd),
        }
    if quality_usd is not None:
        pricing["quality"] = {
            res: {q: _money(v) for q, v in by_quality.items()}
            for res, by_quality in quality_usd.items()
        }
    return {
        "id": model_id,
        "object": "model",
        "type": "inpaint",
        "owned_by": "venice.ai",
        "model_spec": {
            "name": name or model_id,
            "offline": offline,
            "privacy": "private",
            "traits": [],
            "constraints": constraints,
            "pricing": pricing,
        },
    }


def default_catalogue() -> list[Json]:
    """Three models with the shapes that matter: flat, extra images, quality table."""
    return [
        model_entry(
            "firered-image-edit",
            name="FireRed Image Edit",
            usd=0.04,
            resolutions=("1K", "2K"),
        ),
        model_entry(
            "qwen-image-3-edit",
            name="Qwen Image 3 Edit",
            usd=0.04,
            combine_images=True,
            max_images=3,
            extra_image_usd=0.0035,
        ),
        model_entry(
            "gpt-image-2-edit",
            name="GPT Image 2 Edit",
            usd=0.34,  # 1K high, what an edit without `quality` costs
            prompt_limit=32000,
            combine_images=True,
            resolutions=("1K", "2K", "4K"),
            qualities=("low", "medium", "high"),
            default_quality="high",
            quality_usd={
                "1K": {"low": 0.03, "medium": 0.08, "high": 0.34},
                "2K": {"low": 0.03, "medium": 0.14, "high": 0.52},
                "4K": {"low": 0.04, "medium": 0.22, "high": 0.84},
            },
            extra_image_usd=0.0092,
        ),
    ]


def _spec(entry: Mapping[str, Any], part: str) -> Json:
    value = entry.get("model_spec", {}).get(part, {})
    return value if isinstance(value, dict) else {}


def max_input_images(entry: Mapping[str, Any]) -> int:
    """`maxInputImages`; absent means 3, or 1 when the model cannot combine images."""
    constraints = _spec(entry, "constraints")
    given = constraints.get("maxInputImages")
    if isinstance(given, int):
        return given
    return 3 if constraints.get("combineImages") else 1


def effective_resolution(entry: Mapping[str, Any], requested: str | None) -> str:
    return requested or str(_spec(entry, "constraints").get("defaultResolution", "1K"))


def price_micro_usd(
    entry: Mapping[str, Any],
    *,
    images: int,
    resolution: str | None,
    quality: str | None,
    enhance: bool,
) -> int:
    """What one edit with these parameters costs, in micro-dollars."""
    constraints, pricing = _spec(entry, "constraints"), _spec(entry, "pricing")
    res = effective_resolution(entry, resolution)
    usd = float(pricing.get("inpaint", {}).get("usd", 0.0))
    by_quality = pricing.get("quality", {}).get(res)
    if "qualities" in constraints and isinstance(by_quality, dict):
        q = quality if quality in by_quality else constraints.get("defaultQuality", "high")
        usd = float(by_quality.get(q, {}).get("usd", usd))
    elif res in pricing.get("resolutions", {}):
        usd = float(pricing["resolutions"][res]["usd"])
    total = micro_usd(usd)
    extra = pricing.get("inputImages")
    if isinstance(extra, dict):
        beyond = max(0, images - int(extra.get("included", 1)))
        total += beyond * micro_usd(float(extra["additional"]["usd"]))
    if enhance:
        total += micro_usd(ENHANCE_PROMPT_USD)
    return total
