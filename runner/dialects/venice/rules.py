"""The Venice dialect's rules as data: its params (the whole list Venice accepts) and how a
price per edit becomes a job's cost. The dialect object that uses them is in `__init__.py`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from runner.dialects import params as p
from runner.dialects.venice.catalogue import DEFAULT_RESOLUTION, VenicePrice
from runner.records import JobSpec, ReplyFacts, Usage

if TYPE_CHECKING:
    pass

# Venice's EditImageRequest and MultiEditImageRequest (swagger, 2026-08-22) declare
# `additionalProperties: false`: any other field is a 400 for every job (each one counting
# towards Venice's lock-out), so this table is the whole list, not a selection. Which values
# a model takes (aspect ratios, resolutions, qualities) is per model and comes from Venice's
# catalogue at run time; these are the checks that hold for every model.
PARAMS: Mapping[str, p.Rule] = {
    "aspect_ratio": p.one_of("auto", "1:1", "3:2", "16:9", "21:9", "9:16", "2:3", "3:4", "4:5"),
    "resolution": p.short_text,
    "output_format": p.one_of("jpeg", "jpg", "png", "webp"),
    "safe_mode": p.boolean,
    "enhance_prompt": p.boolean,
    "disable_prompt_optimization_thinking": p.boolean,
    "quality": p.one_of("low", "medium", "high"),
    "n": p.unsupported("Venice returns one image per edit; remove n"),
}
UNKNOWN_PARAM = "unknown param: Venice refuses it (HTTP 400); accepted: " + ", ".join(
    sorted(name for name in PARAMS if name != "n")
)


class EditPricing:
    """`Pricing` per edit: by resolution (the model's default when the job names none) and
    quality, extra input images (a mask is one), and the prompt rewrite when applied."""

    def __init__(self, default_resolutions: Mapping[str, str]) -> None:
        self._resolutions = default_resolutions

    def estimate(self, spec: JobSpec, price: VenicePrice) -> float | None:
        # Before sending, assume an asked-for prompt rewrite will be applied (and billed).
        return self._edit_cost(spec, price, enhanced=spec.params.get("enhance_prompt") is True)

    def cost(
        self, spec: JobSpec, price: VenicePrice, usage: Usage | None, facts: ReplyFacts | None
    ) -> float | None:
        return self._edit_cost(spec, price, enhanced=bool(facts and facts.enhanced_prompt))

    def describe(self, spec: JobSpec, price: VenicePrice) -> dict[str, Any]:
        plain = self._edit_cost(spec, price, enhanced=False)
        enhanced = self._edit_cost(spec, price, enhanced=True)
        return {"per_edit_usd": plain, "enhance_prompt_usd": round(enhanced - plain, 6)}

    def _edit_cost(self, spec: JobSpec, price: VenicePrice, *, enhanced: bool) -> float:
        resolution = spec.params.get("resolution") or self._resolutions.get(
            spec.model, DEFAULT_RESOLUTION
        )
        quality = spec.params.get("quality")
        input_images = 2 if spec.mask is not None else 1
        return price.cost(
            str(resolution), str(quality) if quality else None, input_images, enhanced
        )
