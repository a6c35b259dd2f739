"""The Venice dialect as one object (`VENICE`): `/image/edit` and `/image/multi-edit` with a
raw image reply (`client.py`), its model list (`catalogue.py`), x402 wallet sign-in
(`siwx.py`) and its rules (`rules.py`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from runner.dialects import params as p
from runner.dialects.venice.catalogue import (
    BUILTIN_VENICE_PRICES,
    VenicePrice,
    describe_models,
    load_catalogue,
)
from runner.dialects.venice.rules import PARAMS, UNKNOWN_PARAM, EditPricing
from runner.engine.pricing import PriceBook
from runner.settings import VENICE_BREAKER_FAILURES, VENICE_DEFAULT_RPM

if TYPE_CHECKING:
    import httpx

    from runner.dialects import ModelList
    from runner.dialects.factory import Credential
    from runner.engine.ports import Provider
    from runner.records import ProviderProfile
    from runner.store.protocol import Store


class VeniceDialect:
    name = "venice"
    # Swagger's default since 2026-05; the seed's qwen-edit left the docs (PROVIDERS.md §3).
    default_model = "firered-image-edit"
    wallet_sign_in = True  # x402
    # Venice allows 20 image requests a minute by default and locks a key out for 30 s
    # after more than 20 failures in 30 s (PROVIDERS.md §3): both are respected unasked.
    default_requests_per_minute: float | None = VENICE_DEFAULT_RPM
    default_breaker_failures: int | None = VENICE_BREAKER_FAILURES
    has_catalogue = True
    has_batch_api = False

    def check_model(self, model: str) -> str | None:
        return None  # which models exist comes from the model list, at run time

    def check_params(self, params: Mapping[str, Any]) -> tuple[str, str] | None:
        return p.check_against(PARAMS, params, unknown=UNKNOWN_PARAM)

    def price_from_fields(self, fields: Mapping[str, float]) -> VenicePrice:
        if "per_edit" not in fields or set(fields) - {"per_edit", "extra_image"}:
            raise ValueError(
                "venice is priced per edit: give per_edit (USD) and optionally extra_image "
                "(USD per input image after the first)"
            )
        return VenicePrice(
            per_edit_usd=fields["per_edit"], extra_image_usd=fields.get("extra_image", 0)
        )

    def price_book(
        self, manifest_prices: Mapping[str, object], catalogue: ModelList | None
    ) -> PriceBook:
        models = catalogue or {}
        listed = {model_id: m.price for model_id, m in models.items() if m.price is not None}
        defaults = {
            model_id: m.default_resolution for model_id, m in models.items() if m.default_resolution
        }
        return PriceBook(
            EditPricing(defaults),
            [("manifest", manifest_prices), ("catalogue", listed),
             ("built-in", BUILTIN_VENICE_PRICES)],
        )  # fmt: skip

    async def load_catalogue(
        self,
        profile: ProviderProfile,
        client: httpx.AsyncClient,
        store: Store | None,
        now: datetime,
    ) -> ModelList | None:
        return await load_catalogue(profile, client, store, now)

    def model_rows(self, catalogue: ModelList | None) -> list[tuple[str, str, str]] | None:
        if catalogue is None:
            return None
        return [
            (entry["id"],
             f"prompt ≤ {entry['prompt_limit']} chars; aspect {entry['aspect_ratios']}; "
             f"resolution {entry['resolutions']}; quality {entry['qualities']}; "
             f"≤ {entry['max_input_images']} input images",
             entry["price"])
            for entry in describe_models(catalogue)
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
        from runner.dialects.transfer import reply_limits
        from runner.dialects.venice.client import VeniceProvider

        return VeniceProvider(
            profile.name,
            profile.base_url,
            client,
            api_key=credential.api_key,
            signer=credential.signer,
            catalogue=catalogue,
            wall_clock=wall_clock,
            limits=reply_limits(profile),
        )


VENICE = VeniceDialect()
