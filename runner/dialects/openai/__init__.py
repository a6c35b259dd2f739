"""The OpenAI / CometAPI dialect as one object (`OPENAI`): multipart `POST /images/edits`
with a JSON reply (`client.py`), its rules and token prices (`rules.py`), and the Files and
Batch APIs for `mode: batch` (`batch.py`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from runner.dialects import params as p
from runner.dialects.openai.rules import (
    LIMITS,
    PARAMS,
    RETIRED_MODELS,
    TOKEN_PRICES,
    TokenPrice,
    TokenPricing,
    check_combinations,
    price_from_fields,
)
from runner.engine.pricing import PriceBook
from runner.errors import ManifestError
from runner.settings import OPENAI_MAX_N

if TYPE_CHECKING:
    import httpx

    from runner.dialects import ModelList
    from runner.dialects.factory import Credential
    from runner.engine.ports import Provider
    from runner.records import ProviderProfile
    from runner.store.protocol import Store


class OpenAIDialect:
    name = "openai"
    default_model = "gpt-image-2"
    wallet_sign_in = False  # x402 is Venice's
    default_requests_per_minute: float | None = None
    default_breaker_failures: int | None = None
    has_catalogue = False
    has_batch_api = True  # /v1/files + /v1/batches (dialects/openai/batch.py)

    def check_model(self, model: str) -> str | None:
        retired = RETIRED_MODELS.get(model)
        if retired:
            return f"model {model} was shut down by OpenAI on {retired}; use gpt-image-2"
        return None

    def check_params(self, params: Mapping[str, Any]) -> tuple[str, str] | None:
        # Unknown params pass through: gateways add fields faster than a table can follow.
        return p.check_against(PARAMS, params) or check_combinations(params)

    def price_from_fields(self, fields: Mapping[str, float]) -> TokenPrice:
        return price_from_fields(fields)

    def price_book(
        self, manifest_prices: Mapping[str, object], catalogue: ModelList | None
    ) -> PriceBook:
        return PriceBook(
            TokenPricing(), [("manifest", manifest_prices), ("built-in", TOKEN_PRICES)]
        )

    async def load_catalogue(
        self,
        profile: ProviderProfile,
        client: httpx.AsyncClient,
        store: Store | None,
        now: datetime,
    ) -> ModelList | None:
        return None  # no model list to fetch: the built-in prices and checks apply

    def model_rows(self, catalogue: ModelList | None) -> list[tuple[str, str, str]] | None:
        limits = (
            f"image {'/'.join(sorted(LIMITS.formats))} < {LIMITS.max_image_bytes // 2**20} MB; "
            f"mask PNG with alpha < {LIMITS.max_mask_bytes // 2**20} MB, same size; "
            f"prompt ≤ {LIMITS.max_prompt_chars:,} chars; n ≤ {OPENAI_MAX_N}"
        )
        return [  # retired models keep their prices (old jobs' costs) but a run refuses them
            (model, limits,
             f"${price.text_input:g}/${price.image_input:g}/${price.image_output:g} "
             "per M tokens (text in/image in/out)")
            for model, price in TOKEN_PRICES.items()
            if model not in RETIRED_MODELS
        ]  # fmt: skip

    def build(
        self,
        profile: ProviderProfile,
        credential: Credential,
        client: httpx.AsyncClient,
        catalogue: ModelList | None,
        wall_clock: Callable[[], float] = time.time,
    ) -> Provider:
        # The client (and httpx) only for a run: reading a manifest's rules needs neither.
        from runner.dialects.openai.client import OpenAIProvider
        from runner.dialects.transfer import reply_limits

        if credential.api_key is None:  # the manifest check refuses x402 outside Venice
            raise ManifestError(f"providers.{profile.name}: needs an API key")
        return OpenAIProvider(
            profile.name,
            profile.base_url,
            credential.api_key,
            client,
            wall_clock=wall_clock,
            limits=reply_limits(profile),
        )


OPENAI = OpenAIDialect()
