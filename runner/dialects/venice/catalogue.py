"""Venice's edit-model catalogue (`GET /models?type=inpaint`, PROVIDERS.md §3): what each
model accepts and costs, so a job the model would refuse is stopped before it is paid for.

Parsing is pure and forgiving: the endpoint is marked experimental, so an entry of an odd
shape is skipped rather than allowed to stop a run. Only `fetch_catalogue` does I/O.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio

from runner.dialects.replies import loads
from runner.errors import CatalogueUnavailable, InputError, RetryableError
from runner.money import format_usd
from runner.records import ImageLimits
from runner.redact import redact
from runner.settings import CATALOGUE_MAX_AGE_S

if TYPE_CHECKING:
    import httpx

    from runner.records import ProviderProfile
    from runner.store.protocol import Store

log = logging.getLogger("runner")

ENHANCE_SURCHARGE_USD = 0.04  # per applied `enhance_prompt` rewrite
DEFAULT_MAX_INPUT_IMAGES = 3
DEFAULT_RESOLUTION = "1K"
_FETCH_TIMEOUT_S = 30.0  # the edit client's read timeout is minutes long
_FETCH_DEADLINE_S = 60.0
_MAX_CATALOGUE_BYTES = 8 * 1024 * 1024
_MB = 1024 * 1024

VENICE_LIMITS = ImageLimits(
    formats=frozenset({"PNG", "JPEG", "WEBP"}),
    max_image_bytes=25 * _MB - 1,  # "<25MB"
    max_mask_bytes=25 * _MB - 1,
    max_prompt_chars=32768,
    min_pixels=65_536,
    max_pixels=33_177_600,
)


@dataclass(frozen=True, slots=True)
class VenicePrice:
    per_edit_usd: float
    by_resolution: Mapping[str, float] = field(default_factory=dict)
    by_quality: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    included_images: int = 1
    extra_image_usd: float = 0.0

    def cost(
        self, resolution: str | None, quality: str | None, input_images: int, enhanced: bool
    ) -> float:
        base = self.per_edit_usd
        if resolution is not None and resolution in self.by_quality:
            # Venice bills an omitted quality as high (static-models.json).
            table = self.by_quality[resolution]
            base = table.get(quality or "high", self.by_resolution.get(resolution, base))
        elif resolution is not None and resolution in self.by_resolution:
            base = self.by_resolution[resolution]
        extra = self.extra_image_usd * max(0, input_images - self.included_images)
        surcharge = ENHANCE_SURCHARGE_USD if enhanced else 0.0
        return round(base + extra + surcharge, 6)


@dataclass(frozen=True, slots=True)
class VeniceModel:
    id: str
    name: str
    prompt_limit: int
    aspect_ratios: tuple[str, ...] = ()
    resolutions: tuple[str, ...] = ()
    default_resolution: str | None = None
    qualities: tuple[str, ...] = ()
    default_quality: str | None = None
    max_input_images: int = DEFAULT_MAX_INPUT_IMAGES
    single_image_aspect_ratio: bool = True
    offline: bool = False
    price: VenicePrice | None = None


Catalogue = Mapping[str, VeniceModel]


def _flat(usd: float, extra: float = 0.0) -> VenicePrice:
    return VenicePrice(per_edit_usd=usd, extra_image_usd=extra)


# overview/pricing.mdx at 2026-08-22: "Per Edit" covers the first input image.
BUILTIN_VENICE_PRICES: dict[str, VenicePrice] = {
    "firered-image-edit": _flat(0.04),
    "qwen-edit-uncensored": _flat(0.04),
    "qwen-image-3-edit": _flat(0.04, 0.0035),
    "qwen-image-3-pro-edit": _flat(0.05, 0.0035),
    "qwen-image-2-edit": _flat(0.05),
    "qwen-image-2-pro-edit": _flat(0.10),
    "grok-imagine-edit": _flat(0.03, 0.0023),
    "grok-imagine-quality-edit": _flat(0.06, 0.01),
    "grok-imagine-image-2-0-edit": _flat(0.07, 0.01),
    "seedream-v4-edit": _flat(0.05),
    "seedream-v5-lite-edit": _flat(0.05),
    "seedream-v5-pro-edit": _flat(0.06, 0.0035),
    "nano-banana-2-lite-edit": _flat(0.06),
    "nano-banana-2-edit": _flat(0.10),
    "nano-banana-pro-edit": _flat(0.18),
    "luma-uni-1-edit": _flat(0.06),
    "luma-uni-1-max-edit": _flat(0.13),
    "wan-2-7-pro-edit": _flat(0.09),
    "flux-2-max-edit": _flat(0.12, 0.03),
    "gpt-image-1-5-edit": _flat(0.31, 0.03),
    "gpt-image-2-edit": VenicePrice(
        per_edit_usd=0.34,
        by_resolution={"1K": 0.34, "2K": 0.52, "4K": 0.84},
        by_quality={
            "1K": {"low": 0.03, "medium": 0.08, "high": 0.34},
            "2K": {"low": 0.03, "medium": 0.14, "high": 0.52},
            "4K": {"low": 0.04, "medium": 0.22, "high": 0.84},
        },
        extra_image_usd=0.0092,
    ),
}


# --- parsing --------------------------------------------------------------------------------


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _usd(value: Any) -> float | None:
    return _number(_dict(value).get("usd"))


def _parse_price(pricing: Mapping[str, Any], default_resolution: str | None) -> VenicePrice | None:
    by_resolution = {
        res: usd for res, entry in _dict(pricing.get("resolutions")).items()
        if (usd := _usd(entry)) is not None
    }  # fmt: skip
    by_quality: dict[str, dict[str, float]] = {}
    for res, table in _dict(pricing.get("quality")).items():
        row = {q: usd for q, entry in _dict(table).items() if (usd := _usd(entry)) is not None}
        if row:
            by_quality[res] = row
    per_edit = _usd(pricing.get("inpaint"))
    if per_edit is None:
        per_edit = by_resolution.get(default_resolution or DEFAULT_RESOLUTION)
    if per_edit is None:
        return None
    images = _dict(pricing.get("inputImages"))
    included = _count(images.get("included"))
    return VenicePrice(
        per_edit_usd=per_edit,
        by_resolution=by_resolution,
        by_quality=by_quality,
        included_images=1 if included is None else included,
        extra_image_usd=_usd(images.get("additional")) or 0.0,
    )


def _parse_model(entry: Any) -> VeniceModel | None:
    if not isinstance(entry, dict) or not (model_id := _text(entry.get("id"))):
        return None
    if entry.get("type") not in (None, "inpaint"):
        return None
    spec = entry.get("model_spec")
    if not isinstance(spec, dict):
        return None
    constraints = _dict(spec.get("constraints"))
    limit = _count(constraints.get("promptCharacterLimit"))
    max_images = _count(constraints.get("maxInputImages"))
    if max_images is None:  # swagger: absent means 3, or 1 when images cannot be combined
        max_images = 1 if constraints.get("combineImages") is False else DEFAULT_MAX_INPUT_IMAGES
    default_resolution = _text(constraints.get("defaultResolution"))
    return VeniceModel(
        id=model_id,
        name=_text(spec.get("name")) or model_id,
        prompt_limit=limit if limit else VENICE_LIMITS.max_prompt_chars,
        aspect_ratios=_strings(constraints.get("aspectRatios")),
        resolutions=_strings(constraints.get("resolutions")),
        default_resolution=default_resolution,
        qualities=_strings(constraints.get("qualities")),
        default_quality=_text(constraints.get("defaultQuality")),
        max_input_images=max_images,
        single_image_aspect_ratio=constraints.get("singleImageAspectRatio") is not False,
        offline=spec.get("offline") is True,
        price=_parse_price(_dict(spec.get("pricing")), default_resolution),
    )


def parse_catalogue(body: bytes) -> dict[str, VeniceModel]:
    try:
        document = loads(body)
    except ValueError as exc:
        raise CatalogueUnavailable(f"model list is not JSON ({len(body)} bytes)") from exc
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list):
        raise CatalogueUnavailable("model list has no `data` list")
    models = (_parse_model(entry) for entry in data)
    return {model.id: model for model in models if model is not None}


async def fetch_catalogue(client: httpx.AsyncClient, base_url: str) -> bytes:
    """The raw list (for caching), once it is known to parse into at least one model."""
    import httpx  # here: reading a manifest's prices needs neither httpx nor this

    from runner.dialects.transfer import read_capped

    url = f"{base_url.rstrip('/')}/models"
    try:
        # Bounded like every reply: the real list is ~100 KB, a hostile one may never end.
        with anyio.fail_after(_FETCH_DEADLINE_S):
            # Public endpoint: no credential is sent, so none can leak through it.
            request = client.stream(
                "GET", url, params={"type": "inpaint"}, timeout=_FETCH_TIMEOUT_S
            )
            async with request as response:
                if response.status_code != 200:
                    raise CatalogueUnavailable(f"GET {url} answered HTTP {response.status_code}")
                content = await read_capped(response, _MAX_CATALOGUE_BYTES)
    except httpx.HTTPError as exc:
        raise CatalogueUnavailable(f"GET {url} failed: {type(exc).__name__}: {exc}") from exc
    except TimeoutError as exc:
        raise CatalogueUnavailable(f"GET {url} took over {_FETCH_DEADLINE_S:g} s") from exc
    except RetryableError as exc:  # over the cap
        raise CatalogueUnavailable(f"GET {url}: {exc.message}") from exc
    if not parse_catalogue(content):
        # An empty list would make every model look unknown; the static checks do better.
        raise CatalogueUnavailable(f"GET {url} listed no usable edit model")
    return content


# --- checks ---------------------------------------------------------------------------------


def _known(model_id: str, catalogue: Mapping[str, VeniceModel]) -> str:
    ids = sorted(catalogue)
    shown = difflib.get_close_matches(model_id, ids, n=3, cutoff=0.5)
    shown += [i for i in ids if i not in shown][: 5 - len(shown)]
    more = len(ids) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _one_of(values: tuple[str, ...]) -> str:
    return ", ".join(values)


def check_job(
    model_id: str,
    params: Mapping[str, Any],
    prompt: str,
    input_images: int,
    catalogue: Mapping[str, VeniceModel] | None,
) -> None:
    """Raise InputError for what the catalogue says this model would refuse."""
    if catalogue is None:
        return
    model = catalogue.get(model_id)
    if model is None:
        known = _known(model_id, catalogue)
        raise InputError("model", f"Venice has no edit model {model_id!r}; known: {known}")
    if model.offline:
        raise InputError("model", f"Venice lists {model_id} as offline at the moment")
    if len(prompt) > model.prompt_limit:
        raise InputError(
            "prompt",
            f"prompt is {len(prompt):,} characters, over {model_id}'s "
            f"{model.prompt_limit:,}-character limit",
        )
    ratio = params.get("aspect_ratio")
    # `auto` (or omitting it) asks Venice to infer the ratio from the input.
    if ratio not in (None, "auto") and model.aspect_ratios and ratio not in model.aspect_ratios:
        raise InputError(
            "params.aspect_ratio",
            f"{model_id} does not offer {ratio!r}; use auto or one of "
            f"{_one_of(model.aspect_ratios)}",
        )
    resolution = params.get("resolution")
    if resolution is not None and model.resolutions and resolution not in model.resolutions:
        raise InputError(
            "params.resolution",
            f"{model_id} does not offer {resolution!r}; use one of {_one_of(model.resolutions)}",
        )
    quality = params.get("quality")
    if quality is not None and not model.qualities:
        raise InputError("params.quality", f"{model_id} has no quality setting; remove it")
    if quality is not None and quality not in model.qualities:
        raise InputError(
            "params.quality",
            f"{model_id} does not offer {quality!r}; use one of {_one_of(model.qualities)}",
        )
    if input_images > model.max_input_images:
        # Our jobs send one image, two with a mask: a second image is always the mask.
        raise InputError(
            "mask" if input_images == 2 else "images",
            f"{model_id} takes at most {model.max_input_images} input image(s); "
            f"this job has {input_images} (a mask counts as one)",
        )


def limits_for(model_id: str, catalogue: Mapping[str, VeniceModel] | None) -> ImageLimits:
    model = catalogue.get(model_id) if catalogue is not None else None
    if model is None or model.prompt_limit >= VENICE_LIMITS.max_prompt_chars:
        return VENICE_LIMITS
    return dataclasses.replace(VENICE_LIMITS, max_prompt_chars=model.prompt_limit)


# --- presentation ---------------------------------------------------------------------------


def price_summary(price: VenicePrice | None) -> str:
    if price is None:
        return "unknown"
    if price.by_quality:
        parts = [
            f"{res} " + "/".join(f"{q} {format_usd(usd)}" for q, usd in row.items())
            for res, row in price.by_quality.items()
        ]
        text = "; ".join(parts)
    elif len(set(price.by_resolution.values())) > 1:
        text = ", ".join(f"{res} {format_usd(usd)}" for res, usd in price.by_resolution.items())
    else:
        text = f"{format_usd(price.per_edit_usd)}/edit"
    if price.extra_image_usd:
        text += f", +{format_usd(price.extra_image_usd)}/extra image"
    return text


def describe_models(catalogue: Mapping[str, VeniceModel]) -> list[dict[str, str]]:
    """One row of text per model a run would send to (offline ones are refused, so not
    listed), sorted by id, for `runner models` to lay out as a table."""
    return [
        {
            "id": model.id,
            "name": model.name,
            "prompt_limit": f"{model.prompt_limit:,}",
            "aspect_ratios": ", ".join(model.aspect_ratios) or "-",
            "resolutions": ", ".join(model.resolutions) or "-",
            "qualities": ", ".join(model.qualities) or "-",
            "max_input_images": str(model.max_input_images),
            "price": price_summary(model.price),
        }
        for model in sorted(catalogue.values(), key=lambda m: m.id)
        if not model.offline
    ]


# --- loading, with the database's copy as a cache ------------------------------------------


async def load_catalogue(
    profile: ProviderProfile,
    client: httpx.AsyncClient,
    store: Store | None,
    now: datetime,
) -> Catalogue | None:
    """The model list: the database's copy when under a day old, else a fresh one
    (saved), else an older copy, else None. Without one, runs go on with the checks that
    need no list and the built-in prices, and say so once."""
    source = f"{profile.base_url}/models?type=inpaint"
    cached = await store.load_catalogue(source) if store is not None else None
    if cached is not None and now - cached[0] < timedelta(seconds=CATALOGUE_MAX_AGE_S):
        return _parsed(cached[1])
    try:
        body = await fetch_catalogue(client, profile.base_url)
    except CatalogueUnavailable as exc:
        if cached is not None:
            log.warning(
                "%s: model list unavailable (%s); using the copy from %s",
                profile.name, exc, cached[0].isoformat(timespec="minutes"),
            )  # fmt: skip
            return _parsed(cached[1])
        log.warning(
            "%s: model list unavailable (%s); checking only what needs no list (image size "
            "and bytes), with built-in prices",
            profile.name, exc,
        )  # fmt: skip
        return None
    text = redact(body.decode("utf-8", "replace"))  # a provider's text, kept in the database
    if store is not None:
        await store.save_catalogue(source, text)
    return _parsed(text)


def _parsed(body: str) -> Catalogue | None:
    try:
        return parse_catalogue(body.encode())
    except CatalogueUnavailable:
        return None
