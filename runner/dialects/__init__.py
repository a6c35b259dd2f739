"""What each provider speaks, one object per dialect.

A `Dialect` owns everything that differs between providers: its default model and which
models it refuses, its params, how a price in the manifest reads and how a job is costed,
its model list (if it has one), and the client that sends and classifies its replies.
Nothing outside this package tests a dialect's name: a third dialect is one new folder
(`__init__.py` with the object, `rules.py` with its rules as data, `client.py` with
the `Provider`) and one line in `DIALECTS`.

Shared pieces: `base.py` (the `Provider` protocol, status and error-body classification),
`replies.py` (JSON replies), `transfer.py` (bounded reads and downloads), `params.py`
(param checks), `factory.py` (credentials, HTTP clients, building a profile's provider).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from runner.dialects.openai import OPENAI
from runner.dialects.venice import VENICE
from runner.engine.pricing import PriceBook

if TYPE_CHECKING:
    import httpx

    from runner.dialects.factory import Credential
    from runner.engine.ports import Provider
    from runner.records import ProviderProfile
    from runner.store.protocol import Store

ModelList = Mapping[str, Any]  # a provider's own list of its models, by id


class Dialect(Protocol):
    name: str
    default_model: str
    wallet_sign_in: bool  # may a profile use `auth: x402`
    default_requests_per_minute: float | None  # pacing a profile gets unless it sets one
    default_breaker_failures: int | None
    has_catalogue: bool  # a model list is fetched from the provider
    has_batch_api: bool  # `mode: batch` (OpenAI's Batch API) is offered

    def check_model(self, model: str) -> str | None:
        """Why the model cannot be used (retired...), or None."""

    def check_params(self, params: Mapping[str, Any]) -> tuple[str, str] | None:
        """The first bad param as (name, message), or None."""

    def price_from_fields(self, fields: Mapping[str, float]) -> object:
        """A manifest `pricing:` entry; ValueError says what this dialect's prices need."""

    def price_book(
        self, manifest_prices: Mapping[str, object], catalogue: ModelList | None
    ) -> PriceBook: ...

    async def load_catalogue(
        self,
        profile: ProviderProfile,
        client: httpx.AsyncClient,
        store: Store | None,
        now: datetime,
    ) -> ModelList | None: ...

    def model_rows(self, catalogue: ModelList | None) -> list[tuple[str, str, str]] | None:
        """(model, limits, price) for `runner models`; None: the list is unavailable."""

    def build(
        self,
        profile: ProviderProfile,
        credential: Credential,
        client: httpx.AsyncClient,
        catalogue: ModelList | None,
        wall_clock: Callable[[], float] = time.time,
    ) -> Provider: ...


DIALECTS: Mapping[str, Dialect] = {dialect.name: dialect for dialect in (OPENAI, VENICE)}


def dialect_named(name: str) -> Dialect:
    """The dialect a profile names (the manifest checked that it exists)."""
    return DIALECTS[name]
