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
    """One provider profile's prices, by model, first source first; and what replies have
    really cost, so that estimates learn.

    A static estimate comes from typical token counts, and real replies can cost a quarter
    of it (or twice): a budget kept with the static figure stops far too early. So every
    reply whose cost is known is compared with the job's static estimate, and estimates are
    scaled by the mean ratio per model, shrunk toward 1 by one pseudo-observation so that a
    single odd reply cannot swing them far.
    """

    def __init__(
        self, pricing: Pricing, sources: Sequence[tuple[str, Mapping[str, object]]]
    ) -> None:
        self._pricing = pricing
        self._sources = [(name, prices) for name, prices in sources if prices]
        self._ratios: dict[str, tuple[float, int]] = {}  # model → (sum of ratios, count)

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

    def static_estimate(self, spec: JobSpec) -> float | None:
        """From the price alone, before any reply (what `validate` shows)."""
        found = self.lookup(spec.model)
        return None if found is None else self._pricing.estimate(spec, found[0])

    def estimate(self, spec: JobSpec) -> float | None:
        """The static estimate, corrected by what this model's replies have cost."""
        static = self.static_estimate(spec)
        return None if static is None else static * self.ratio(spec.model)

    def ratio(self, model: str) -> float:
        """Measured cost over estimated cost for `model` (1.0 before any reply)."""
        total, count = self._ratios.get(model, (0.0, 0))
        return (total + 1.0) / (count + 1)

    def observe(self, spec: JobSpec, measured_usd: float) -> None:
        """A reply for `spec` cost `measured_usd` (from its usage, not from an estimate)."""
        static = self.static_estimate(spec)
        if static is None or static <= 0 or measured_usd < 0:
            return
        total, count = self._ratios.get(spec.model, (0.0, 0))
        self._ratios[spec.model] = (total + measured_usd / static, count + 1)

    def cost(self, spec: JobSpec, usage: Usage | None, facts: ReplyFacts | None) -> float | None:
        found = self.lookup(spec.model)
        return None if found is None else self._pricing.cost(spec, found[0], usage, facts)
