"""Cost from reported usage, and the before-sending estimate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.dialects import dialect_named
from runner.dialects.openai import OPENAI
from runner.dialects.openai.rules import (
    TOKEN_PRICES,
    TokenPrice,
    estimate_openai_cost,
    openai_cost,
)
from runner.dialects.venice import VENICE
from runner.dialects.venice.catalogue import parse_catalogue
from runner.engine.pricing import PriceBook
from runner.records import JobSpec, ReplyFacts, Usage


def test_cost_uses_each_token_kind_at_its_rate() -> None:
    usage = Usage(
        input_tokens=1000, input_text_tokens=200, input_image_tokens=800, output_tokens=2000
    )
    # gpt-image-1: $5/M text in, $10/M image in, $40/M image out
    assert openai_cost("gpt-image-1", usage) == pytest.approx(
        (200 * 5 + 800 * 10 + 2000 * 40) / 1e6
    )


def test_input_without_a_split_is_priced_at_the_dearer_image_rate() -> None:
    usage = Usage(input_tokens=1000, output_tokens=0)
    assert openai_cost("gpt-image-1", usage) == pytest.approx(1000 * 10 / 1e6)


@pytest.mark.parametrize(
    ("model", "usage"),
    [
        ("unknown-model", Usage(input_tokens=1, output_tokens=1)),
        ("gpt-image-2", None),
        ("gpt-image-2", Usage()),
    ],
)
def test_no_price_or_no_usage_gives_no_cost(model: str, usage: Usage | None) -> None:
    assert openai_cost(model, usage) is None


def test_estimate_grows_with_quality_size_variants_and_mask() -> None:
    def estimate(prompt: str = "x", mask: bool = False, **params: object) -> float:
        value = estimate_openai_cost("gpt-image-2", params, prompt, mask)
        assert value is not None
        return value

    assert estimate(quality="low") < estimate(quality="medium") < estimate(quality="high")
    assert estimate(quality="high") == estimate()  # unspecified quality is billed as high
    assert estimate(quality="low", size="1536x1024") > estimate(quality="low")
    # a second variant adds its output tokens (272 at low quality, $24/M), not its inputs
    assert estimate(quality="low", n=2) - estimate(quality="low") == pytest.approx(272 * 24 / 1e6)
    assert estimate(mask=True) > estimate()
    assert estimate("a much longer prompt " * 50) > estimate()
    assert estimate_openai_cost("mystery", {}, "x", False) is None


# --- price books: the manifest's prices, then Venice's catalogue, then built-ins ----------

SEED_USAGE = Usage(
    input_tokens=785, output_tokens=196, total_tokens=981, input_image_tokens=768,
    input_text_tokens=17,
)  # fmt: skip
CATALOGUE = parse_catalogue(
    json.dumps(
        {
            "data": [
                {
                    "id": "firered-image-edit",
                    "type": "inpaint",
                    "model_spec": {
                        "name": "FireRed",
                        "constraints": {"aspectRatios": ["auto"], "promptCharacterLimit": 1000,
                                        "combineImages": False},
                        "pricing": {"inpaint": {"usd": 0.05, "diem": 0.05}},
                    },
                },
                {
                    "id": "gpt-image-2-edit",
                    "type": "inpaint",
                    "model_spec": {
                        "name": "GPT Image 2",
                        "constraints": {"aspectRatios": ["auto"], "promptCharacterLimit": 32000,
                                        "combineImages": True, "defaultResolution": "2K",
                                        "resolutions": ["1K", "2K"],
                                        "qualities": ["low", "medium", "high"]},
                        "pricing": {
                            "inpaint": {"usd": 0.34, "diem": 0.34},
                            "inputImages": {"included": 1, "additional": {"usd": 0.01, "diem": 0.01}},
                            "quality": {
                                "1K": {"low": {"usd": 0.03, "diem": 0.03},
                                       "high": {"usd": 0.34, "diem": 0.34}},
                                "2K": {"low": {"usd": 0.03, "diem": 0.03},
                                       "high": {"usd": 0.52, "diem": 0.52}},
                            },
                        },
                    },
                },
            ]
        }
    ).encode()
)  # fmt: skip


def spec(model: str, *, mask: bool = False, **params: object) -> JobSpec:
    return JobSpec(
        key="k" * 64, entry=0, image=Path("a.png"), mask=Path("m.png") if mask else None,
        prompt="edit", provider="p", model=model, params=params, output_dir=Path("out"),
        output_name="{stem}",
    )  # fmt: skip


def venice_book(manifest: dict[str, object] | None = None, catalogue: bool = True) -> PriceBook:
    return VENICE.price_book(manifest or {}, CATALOGUE if catalogue else None)


def test_openai_book_costs_reported_tokens_at_built_in_or_manifest_rates() -> None:
    book = OPENAI.price_book({}, None)
    assert book.cost(spec("gpt-image-2"), SEED_USAGE, None) == pytest.approx(
        (17 * 4 + 768 * 4 + 196 * 24) / 1e6
    )
    assert book.cost(spec("qwen-image-edit"), SEED_USAGE, None) is None
    assert book.cost(spec("gpt-image-2"), None, None) is None
    mine = OPENAI.price_book({"qwen-image-edit": TokenPrice(1.0, 2.0, 3.0)}, None)
    assert mine.cost(spec("qwen-image-edit"), SEED_USAGE, None) == pytest.approx(
        (17 * 1 + 768 * 2 + 196 * 3) / 1e6
    )
    assert mine.describe(spec("qwen-image-edit")) == {
        "per_million_tokens": {"text_input": 1.0, "image_input": 2.0, "image_output": 3.0},
        "source": "manifest",
    }


def test_venice_book_prefers_manifest_then_catalogue_then_built_in() -> None:
    assert venice_book().cost(spec("firered-image-edit"), None, None) == 0.05
    assert venice_book(catalogue=False).cost(spec("firered-image-edit"), None, None) == 0.04
    override = VENICE.price_from_fields({"per_edit": 0.07})
    book = venice_book({"firered-image-edit": override})
    assert book.cost(spec("firered-image-edit"), None, None) == 0.07
    assert book.describe(spec("firered-image-edit"))["source"] == "manifest"  # type: ignore[index]
    assert venice_book().cost(spec("mystery-edit"), None, None) is None


def test_venice_book_uses_default_resolution_quality_mask_and_applied_enhancement() -> None:
    book = venice_book()
    assert book.cost(spec("gpt-image-2-edit"), None, None) == 0.52  # default 2K, billed as high
    low = spec("gpt-image-2-edit", resolution="1K", quality="low")
    assert book.cost(low, None, None) == 0.03
    assert venice_book(catalogue=False).cost(spec("gpt-image-2-edit"), None, None) == 0.34
    masked = spec("gpt-image-2-edit", mask=True, resolution="1K", quality="low")
    assert book.cost(masked, None, None) == pytest.approx(0.04)  # the mask is a second image
    assert book.cost(masked, None, ReplyFacts(enhanced_prompt=True)) == pytest.approx(0.08)
    asked = spec("firered-image-edit", enhance_prompt=True)
    assert book.estimate(asked) == pytest.approx(0.09)  # before sending: assume it applies
    assert book.cost(asked, None, ReplyFacts()) == pytest.approx(0.05)  # reply: it did not


@pytest.mark.parametrize(
    ("dialect", "fields"),
    [
        ("openai", {"per_edit": 0.04}),
        ("openai", {"text_input": 1.0, "image_input": 1.0}),
        ("venice", {"text_input": 1.0, "image_input": 1.0, "image_output": 1.0}),
        ("venice", {"extra_image": 0.01}),
    ],
)
def test_price_fields_must_fit_the_dialect(dialect: str, fields: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"per million tokens|per edit"):
        dialect_named(dialect).price_from_fields(fields)


def test_estimates_learn_from_measured_costs_per_model_shrunk_toward_the_static_one() -> None:
    book = OPENAI.price_book({}, None)
    job, other = spec("gpt-image-2"), spec("gpt-image-1")
    static = book.static_estimate(job)
    assert static is not None and book.estimate(job) == static  # nothing measured yet

    for _ in range(2):
        book.observe(job, static / 4)  # replies at a quarter of the estimate
    assert book.estimate(job) == pytest.approx(static * (0.5 + 1) / 3)
    for _ in range(8):
        book.observe(job, static / 4)
    assert book.estimate(job) == pytest.approx(static * (2.5 + 1) / 11)
    assert book.static_estimate(job) == static  # what `validate` shows does not move
    assert book.estimate(other) == book.static_estimate(other)  # per model

    book.observe(job, -1.0)  # nonsense teaches nothing
    assert book.estimate(job) == pytest.approx(static * (2.5 + 1) / 11)


@pytest.mark.parametrize("params", [{}, {"quality": "low", "n": 3}, {"size": "1536x1024"}])
@pytest.mark.parametrize("mask", [False, True])
def test_an_estimate_is_what_the_usage_of_such_a_reply_would_cost(
    params: dict[str, object], mask: bool
) -> None:
    # Estimated without a Usage object; priced exactly as one (split input) would be.
    price = TOKEN_PRICES["gpt-image-1"]
    prompt = "p" * 41  # 10 tokens
    images = int(params.get("n", 1))  # type: ignore[call-overload]
    per_image = {"low": 272}.get(str(params.get("quality")), 4160 if "size" not in params else 6240)
    usage = Usage(
        input_tokens=765 * (1 + mask) + 10,
        input_image_tokens=765 * (1 + mask),
        input_text_tokens=10,
        output_tokens=per_image * images,
    )

    assert estimate_openai_cost("gpt-image-1", params, prompt, mask, price) == price.cost(usage)
