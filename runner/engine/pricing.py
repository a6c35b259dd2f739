"""What a job costs, the same way for every dialect. A `PriceBook` (one per provider
profile) looks a model's price up in the manifest's `pricing:`, then the provider's model
list, then the dialect's built-in table, and hands it to the dialect's `Pricing`, which
knows what the price means (per million tokens for openai, per edit for venice). A model
without a price gets no cost (shown as unknown), never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from runner.records import JobSpec, ReplyFacts, Usage


class Pricing(Protocol):
    """A dialect's arithmetic over its own kind of price (`dialects/*/rules.py`)."""

    def estimate(self, spec: JobSpec, price: Any) -> float | None:
        """Before sending: what the job will likely cost (for limits and `validate`)."""

    def cost(
        self, spec: JobSpec, price: Any, usage: Usage | None, facts: ReplyFacts | None
    ) -> float | None:
        """After an answer, from what the reply says it used."""

    def describe(self, spec: JobSpec, price: Any) -> dict[str, Any]:
        """The price as stored with the job (`jobs.price_json`), without its source."""


class PriceBook:
    """One provider profile's prices, by model, first source first."""

    def __init__(
        self, pricing: Pricing, sources: Sequence[tuple[str, Mapping[str, object]]]
    ) -> None:
        self._pricing = pricing
        self._sources = [(name, prices) for name, prices in sources if prices]

    def lookup(self, model: str) -> tuple[object, str] | None:
        for source, prices in self._sources:
            if model in prices:
                return prices[model], source
        return None

    def describe(self, spec: JobSpec) -> dict[str, Any] | None:
        found = self.lookup(spec.model)
        if found is None:
            return None
        price, source = found
        return {**self._pricing.describe(spec, price), "source": source}

    def estimate(self, spec: JobSpec) -> float | None:
        found = self.lookup(spec.model)
        return None if found is None else self._pricing.estimate(spec, found[0])

    def cost(self, spec: JobSpec, usage: Usage | None, facts: ReplyFacts | None) -> float | None:
        found = self.lookup(spec.model)
        return None if found is None else self._pricing.cost(spec, found[0], usage, facts)
