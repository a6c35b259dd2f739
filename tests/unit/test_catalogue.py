"""Venice's model catalogue: parsing (odd shapes included), prices, the per-model checks
made before paying for a request, and the fetch. No network: httpx.MockTransport."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from runner.dialects.venice.catalogue import (
    BUILTIN_VENICE_PRICES,
    ENHANCE_SURCHARGE_USD,
    VENICE_LIMITS,
    CatalogueUnavailable,
    VeniceModel,
    VenicePrice,
    check_job,
    describe_models,
    fetch_catalogue,
    limits_for,
    parse_catalogue,
)
from runner.errors import InputError, RunnerError
from runner.money import format_usd

BASE_URL = "https://api.venice.test/api/v1"


def usd(value: float) -> dict[str, float]:
    return {"usd": value, "diem": value}


GPT_IMAGE_2 = {
    "id": "gpt-image-2-edit",
    "type": "inpaint",
    "model_spec": {
        "name": "GPT Image 2",
        "offline": False,
        "constraints": {
            "aspectRatios": ["auto", "1:1", "3:2", "2:3"],
            "promptCharacterLimit": 32000,
            "combineImages": True,
            "defaultResolution": "1K",
            "resolutions": ["1K", "2K", "4K"],
            "defaultQuality": "high",
            "qualities": ["low", "medium", "high"],
        },
        "pricing": {
            "inpaint": usd(0.34),
            "resolutions": {"1K": usd(0.34), "2K": usd(0.52), "4K": usd(0.84)},
            "inputImages": {"included": 1, "additional": usd(0.0092)},
            "quality": {
                "1K": {"low": usd(0.03), "medium": usd(0.08), "high": usd(0.34)},
                "2K": {"low": usd(0.03), "medium": usd(0.14), "high": usd(0.52)},
            },
        },
    },
}
FIRERED = {
    "id": "firered-image-edit",
    "type": "inpaint",
    "model_spec": {
        "name": "FireRed Edit",
        "constraints": {
            "aspectRatios": ["1:1", "16:9"],
            "promptCharacterLimit": 1500,
            "combineImages": False,
            "singleImageAspectRatio": False,
        },
        "pricing": {"inpaint": usd(0.04)},
    },
}
GROK = {
    "id": "grok-imagine-edit",
    "type": "inpaint",
    "model_spec": {
        "name": "Grok Imagine",
        "constraints": {
            "aspectRatios": ["1:1"],
            "promptCharacterLimit": 4000,
            "combineImages": True,
            "maxInputImages": 2,
            "resolutions": ["1K", "2K"],
        },
        "pricing": {
            "inpaint": usd(0.03),
            "resolutions": {"1K": usd(0.03), "2K": usd(0.04)},
            "inputImages": {"included": 0, "additional": usd(0.0023)},
        },
    },
}
OFFLINE = {
    "id": "seedream-v4-edit",
    "type": "inpaint",
    "model_spec": {
        "name": "Seedream",
        "offline": True,
        "constraints": {"aspectRatios": ["1:1"], "promptCharacterLimit": 2000},
        "pricing": {"inpaint": usd(0.05)},
    },
}
MALFORMED: list[Any] = [
    "not an object",
    None,
    {"id": 7, "model_spec": {}},
    {"model_spec": {"name": "no id"}},
    {"id": "no-spec"},
    {"id": "spec-is-text", "model_spec": "nope"},
    {"id": "tts-kokoro", "type": "tts", "model_spec": {"name": "Kokoro"}},
]
ODD = {  # a model whose fields all have the wrong types: kept, with defaults
    "id": "odd-edit",
    "model_spec": {
        "name": 12,
        "offline": "yes",
        "constraints": {
            "aspectRatios": "1:1",
            "promptCharacterLimit": "lots",
            "maxInputImages": True,
            "resolutions": ["1K", 2],
        },
        "pricing": {"inpaint": {"usd": "0.04"}, "inputImages": "many"},
    },
}


def catalogue_body(*entries: Any) -> bytes:
    return json.dumps({"object": "list", "type": "inpaint", "data": list(entries)}).encode()


CATALOGUE = parse_catalogue(catalogue_body(GPT_IMAGE_2, FIRERED, GROK, OFFLINE))


# --- parsing --------------------------------------------------------------------------------


def test_parse_reads_constraints_and_name() -> None:
    model = CATALOGUE["gpt-image-2-edit"]
    assert model.name == "GPT Image 2"
    assert model.prompt_limit == 32000
    assert model.aspect_ratios == ("auto", "1:1", "3:2", "2:3")
    assert model.resolutions == ("1K", "2K", "4K")
    assert model.default_resolution == "1K"
    assert model.qualities == ("low", "medium", "high")
    assert model.default_quality == "high"
    assert model.offline is False
    assert model.single_image_aspect_ratio is True


def test_parse_reads_pricing_tables() -> None:
    price = CATALOGUE["gpt-image-2-edit"].price
    assert price is not None
    assert price.per_edit_usd == 0.34
    assert price.by_resolution == {"1K": 0.34, "2K": 0.52, "4K": 0.84}
    assert price.by_quality["2K"] == {"low": 0.03, "medium": 0.14, "high": 0.52}
    assert price.included_images == 1
    assert price.extra_image_usd == 0.0092
    grok = CATALOGUE["grok-imagine-edit"].price
    assert grok is not None
    assert grok.included_images == 0  # every input image costs extra on this one


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        pytest.param("gpt-image-2-edit", 3, id="absent-means-3"),
        pytest.param("firered-image-edit", 1, id="absent-without-combine-means-1"),
        pytest.param("grok-imagine-edit", 2, id="given"),
    ],
)
def test_parse_max_input_images_default_rules(model_id: str, expected: int) -> None:
    assert CATALOGUE[model_id].max_input_images == expected


def test_parse_single_image_aspect_ratio_and_offline_flags() -> None:
    assert CATALOGUE["firered-image-edit"].single_image_aspect_ratio is False
    assert CATALOGUE["seedream-v4-edit"].offline is True


def test_parse_skips_malformed_entries_and_keeps_good_ones() -> None:
    parsed = parse_catalogue(catalogue_body(*MALFORMED, FIRERED))
    assert set(parsed) == {"firered-image-edit"}


def test_parse_keeps_an_entry_of_odd_types_with_defaults() -> None:
    model = parse_catalogue(catalogue_body(ODD))["odd-edit"]
    assert model.name == "odd-edit"
    assert model.prompt_limit == VENICE_LIMITS.max_prompt_chars
    assert model.aspect_ratios == ()
    assert model.resolutions == ("1K",)
    assert model.max_input_images == 3
    assert model.offline is False  # only a real `true` takes a model out
    assert model.price is None  # a price given as text is not trusted


def test_parse_per_edit_price_falls_back_to_default_resolution() -> None:
    entry = json.loads(json.dumps(GROK))
    del entry["model_spec"]["pricing"]["inpaint"]
    price = parse_catalogue(catalogue_body(entry))["grok-imagine-edit"].price
    assert price is not None
    assert price.per_edit_usd == 0.03


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html>502 Bad Gateway</html>", id="not-json"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param(b'{"object": "list"}', id="no-data"),
        pytest.param(b'{"data": {"id": "x"}}', id="data-not-a-list"),
        pytest.param(b"[1, 2]", id="top-level-list"),
    ],
)
def test_parse_unusable_body_raises_catalogue_unavailable(body: bytes) -> None:
    with pytest.raises(CatalogueUnavailable):
        parse_catalogue(body)
    assert issubclass(CatalogueUnavailable, RunnerError)


def test_parse_empty_data_list_is_an_empty_catalogue() -> None:
    assert parse_catalogue(catalogue_body()) == {}


# --- prices ---------------------------------------------------------------------------------


def test_cost_per_edit_for_a_flat_price() -> None:
    assert VenicePrice(per_edit_usd=0.04).cost("1K", None, 1, False) == 0.04


def test_cost_adds_extra_images_beyond_the_included_ones() -> None:
    price = VenicePrice(per_edit_usd=0.12, included_images=1, extra_image_usd=0.03)
    assert price.cost(None, None, 1, False) == 0.12
    assert price.cost(None, None, 3, False) == pytest.approx(0.18)
    assert VenicePrice(0.03, included_images=0, extra_image_usd=0.0023).cost(
        None, None, 2, False
    ) == pytest.approx(0.0346)


def test_cost_reads_the_quality_table() -> None:
    price = BUILTIN_VENICE_PRICES["gpt-image-2-edit"]
    assert price.cost("2K", "medium", 1, False) == 0.14
    assert price.cost("4K", "low", 1, False) == 0.04
    assert price.cost("1K", "low", 2, False) == pytest.approx(0.0392)


def test_cost_omitted_quality_is_billed_as_high() -> None:
    price = BUILTIN_VENICE_PRICES["gpt-image-2-edit"]
    assert price.cost("4K", None, 1, False) == 0.84
    assert price.cost("2K", None, 1, False) == price.cost("2K", "high", 1, False)


def test_cost_by_resolution_without_quality_table() -> None:
    price = CATALOGUE["grok-imagine-edit"].price
    assert price is not None
    assert price.cost("2K", None, 1, False) == pytest.approx(0.04 + 0.0023)
    assert price.cost("8K", None, 0, False) == 0.03  # unknown resolution: the per-edit price


def test_cost_enhance_surcharge() -> None:
    price = VenicePrice(per_edit_usd=0.04)
    assert ENHANCE_SURCHARGE_USD == 0.04
    assert price.cost("1K", None, 1, True) == 0.08


def test_cost_is_rounded_to_six_places() -> None:
    price = VenicePrice(per_edit_usd=0.1, extra_image_usd=0.2 / 3)
    assert price.cost(None, None, 2, False) == 0.166667


def test_builtin_prices_cover_the_pricing_table() -> None:
    assert len(BUILTIN_VENICE_PRICES) == 21
    assert BUILTIN_VENICE_PRICES["firered-image-edit"].cost("1K", None, 1, False) == 0.04
    flux = BUILTIN_VENICE_PRICES["flux-2-max-edit"]
    assert flux.cost("1K", None, 2, False) == pytest.approx(0.15)
    assert "qwen-edit" not in BUILTIN_VENICE_PRICES  # removed from the docs on 2026-06-26


# --- checks before sending ------------------------------------------------------------------


def reason(
    model: str = "gpt-image-2-edit",
    params: dict[str, Any] | None = None,
    prompt: str = "make it blue",
    images: int = 1,
) -> InputError:
    with pytest.raises(InputError) as caught:
        check_job(model, params or {}, prompt, images, CATALOGUE)
    return caught.value


def test_check_passes_a_good_job() -> None:
    params = {"aspect_ratio": "3:2", "resolution": "2K", "quality": "low"}
    check_job("gpt-image-2-edit", params, "make it blue", 2, CATALOGUE)


def test_check_without_catalogue_does_nothing() -> None:
    check_job("no-such-model", {"quality": "ultra"}, "x" * 99_999, 9, None)


def test_check_unknown_model_lists_known_ids() -> None:
    error = reason(model="gpt-image-2")
    assert error.field == "model"
    assert "'gpt-image-2'" in error.reason
    assert "gpt-image-2-edit" in error.reason  # the close match comes first
    assert "firered-image-edit" in error.reason


def test_check_offline_model() -> None:
    error = reason(model="seedream-v4-edit")
    assert error.field == "model"
    assert "offline" in error.reason


def test_check_prompt_over_model_limit_gives_both_numbers() -> None:
    error = reason(model="firered-image-edit", prompt="a" * 1501)
    assert error.field == "prompt"
    assert "1,501" in error.reason
    assert "1,500" in error.reason
    check_job("firered-image-edit", {}, "a" * 1500, 1, CATALOGUE)


def test_check_bad_aspect_ratio() -> None:
    error = reason(model="firered-image-edit", params={"aspect_ratio": "21:9"})
    assert error.field == "params.aspect_ratio"
    assert "'21:9'" in error.reason
    assert "16:9" in error.reason


def test_check_auto_aspect_ratio_is_always_accepted() -> None:
    assert "auto" not in CATALOGUE["firered-image-edit"].aspect_ratios
    check_job("firered-image-edit", {"aspect_ratio": "auto"}, "p", 1, CATALOGUE)


def test_check_bad_resolution() -> None:
    error = reason(params={"resolution": "8K"})
    assert error.field == "params.resolution"
    assert "1K, 2K, 4K" in error.reason


def test_check_resolution_unchecked_when_model_lists_none() -> None:
    check_job("firered-image-edit", {"resolution": "2K"}, "p", 1, CATALOGUE)


def test_check_quality_on_model_without_qualities() -> None:
    error = reason(model="grok-imagine-edit", params={"quality": "high"})
    assert error.field == "params.quality"
    assert "no quality setting" in error.reason


def test_check_quality_not_offered() -> None:
    error = reason(params={"quality": "ultra"})
    assert error.field == "params.quality"
    assert "low, medium, high" in error.reason


def test_check_too_many_input_images() -> None:
    error = reason(model="firered-image-edit", images=2)
    assert error.field == "mask"
    assert "at most 1" in error.reason
    assert reason(images=4).field == "images"


def test_limits_for_lowers_the_prompt_limit() -> None:
    limits = limits_for("firered-image-edit", CATALOGUE)
    assert limits.max_prompt_chars == 1500
    assert limits.max_pixels == VENICE_LIMITS.max_pixels
    assert limits.formats == frozenset({"PNG", "JPEG", "WEBP"})


def test_limits_for_unknown_model_or_no_catalogue_is_the_default() -> None:
    assert limits_for("nope", CATALOGUE) is VENICE_LIMITS
    assert limits_for("firered-image-edit", None) is VENICE_LIMITS
    assert VENICE_LIMITS.max_image_bytes < 25 * 1024 * 1024


# --- presentation ---------------------------------------------------------------------------


def test_describe_models_rows() -> None:
    rows = describe_models(CATALOGUE)
    assert [row["id"] for row in rows] == [  # seedream-v4-edit is offline: a run refuses it
        "firered-image-edit",
        "gpt-image-2-edit",
        "grok-imagine-edit",
    ]
    firered, gpt, grok = rows
    assert firered["price"] == "$0.04/edit"
    assert firered["max_input_images"] == "1"
    assert firered["prompt_limit"] == "1,500"
    assert firered["qualities"] == "-"
    assert "2K low $0.03/medium $0.14/high $0.52" in gpt["price"]
    assert gpt["price"].endswith("+$0.0092/extra image")
    assert grok["price"].startswith("1K $0.03, 2K $0.04")


def test_describe_models_unknown_price() -> None:
    model = VeniceModel(id="m", name="M", prompt_limit=10)
    assert describe_models({"m": model})[0]["price"] == "unknown"


@pytest.mark.parametrize(
    ("amount", "text"),
    [(0.04, "$0.04"), (0.0035, "$0.0035"), (12.5, "$12.50"), (1234.0, "$1,234.00")],
)
def test_format_usd(amount: float, text: str) -> None:
    assert format_usd(amount) == text


# --- fetching -------------------------------------------------------------------------------


async def fetch(handler: Any) -> bytes:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        return await fetch_catalogue(client, BASE_URL + "/")


async def test_fetch_returns_the_body_of_a_public_get() -> None:
    seen: list[httpx.Request] = []
    body = catalogue_body(GPT_IMAGE_2, FIRERED)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=body)

    assert await fetch(handler) == body
    [request] = seen
    assert request.method == "GET"
    assert str(request.url) == f"{BASE_URL}/models?type=inpaint"
    assert "authorization" not in request.headers
    assert "sign-in-with-x" not in request.headers


@pytest.mark.parametrize(
    ("response", "words"),
    [
        pytest.param(httpx.Response(503, text="busy"), "HTTP 503", id="status"),
        pytest.param(httpx.Response(200, text="<html>"), "not JSON", id="not-json"),
        pytest.param(httpx.Response(200, json={"error": "x"}), "no `data` list", id="no-data"),
        pytest.param(httpx.Response(200, content=catalogue_body("junk")), "no usable", id="empty"),
    ],
)
async def test_fetch_failure_raises_catalogue_unavailable(
    response: httpx.Response, words: str
) -> None:
    with pytest.raises(CatalogueUnavailable) as caught:
        await fetch(lambda request: response)
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_fetch_network_error_raises_catalogue_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(CatalogueUnavailable) as caught:
        await fetch(handler)
    assert "ConnectError" in str(caught.value)
