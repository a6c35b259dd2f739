"""Cost from reported usage, and the before-sending estimate."""

from __future__ import annotations

import pytest

from runner.models import Usage
from runner.pricing import estimate_openai_cost, openai_cost


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
