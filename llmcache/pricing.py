"""What an answer cost upstream: the price table behind "cost saved". Pure, no I/O.

A hit saves what the stored answer cost when it was made: its own
``usage_metadata`` (input, cached input and output tokens) at its own model's
price (``response_metadata["model_name"]``, or ``"model"`` as some providers
write it). Costs are whole nano-dollars (1e-9 USD), so counters stay integers
and add up exactly across threads and processes.

Where the prices come from: LangChain's OpenAI callback keeps a table
(``MODEL_COST_PER_1K_TOKENS`` in ``langchain_community/callbacks/openai_info.py``).
Importing it takes about a second and a DeprecationWarning (langchain-community
is being sunset), and the engine must not need LangChain at all, so the prices
of current models are copied below from that table as shipped in
langchain-community 0.4.2 (read 2026-12-02), in USD per million tokens. A model
that is not here has an unknown price: its tokens are counted as saved, its
cost is shown as "unknown", never guessed. Add or correct one with
``PRICES["my-model"] = Price(input=..., output=...)`` before the answers are read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["PRICES", "UNKNOWN", "Price", "answer_cost", "price_of"]

#: ``answer_cost`` for an answer with tokens but no known price.
UNKNOWN = -1

_NANOS_PER_USD_PER_MILLION = 1000  # $1 per 1M tokens is 1e-6 $/token: 1,000 nano-$ a token


@dataclass(frozen=True)
class Price:
    """USD per million tokens; ``cached_input`` for input tokens read from the provider's cache."""

    input: float
    output: float
    cached_input: float | None = None


# From langchain-community 0.4.2 MODEL_COST_PER_1K_TOKENS (x1000: per 1M tokens), 2026-12-02.
PRICES: dict[str, Price] = {
    "gpt-5": Price(1.25, 10.0, 0.125),
    "gpt-5-mini": Price(0.25, 2.0, 0.025),
    "gpt-5-nano": Price(0.05, 0.4, 0.005),
    "gpt-5-chat-latest": Price(1.25, 10.0, 0.125),
    "gpt-4.1": Price(2.0, 8.0, 0.5),
    "gpt-4.1-mini": Price(0.4, 1.6, 0.1),
    "gpt-4.1-nano": Price(0.1, 0.4, 0.025),
    "gpt-4.5-preview": Price(75.0, 150.0, 37.5),
    "gpt-4o": Price(2.5, 10.0, 1.25),
    "gpt-4o-2024-05-13": Price(5.0, 15.0),
    "gpt-4o-mini": Price(0.15, 0.6, 0.075),
    "o1": Price(15.0, 60.0, 7.5),
    "o1-mini": Price(1.1, 4.4, 0.55),
    "o1-pro": Price(150.0, 600.0),
    "o3": Price(2.0, 8.0, 0.5),
    "o3-mini": Price(1.1, 4.4, 0.55),
    "o4-mini": Price(1.1, 4.4, 0.275),
    "gpt-4-turbo": Price(10.0, 30.0),
    "gpt-4": Price(30.0, 60.0),
    "gpt-3.5-turbo": Price(1.5, 2.0),
    "gpt-3.5-turbo-0125": Price(0.5, 1.5),
}

# A dated snapshot costs what its family costs, unless it is listed itself.
_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def price_of(model: str) -> Price | None:
    """The price of ``model`` (a dated snapshot falls back to its family), or None."""
    name = model.strip().lower()
    price = PRICES.get(name)
    if price is None:
        price = PRICES.get(_DATED.sub("", name))
    return price


def answer_cost(usage: Mapping[str, Any], model: str | None) -> int:
    """What one answer cost, in nano-dollars: 0 with no tokens, UNKNOWN with no price.

    ``usage`` is a LangChain ``usage_metadata``: ``input_tokens``,
    ``output_tokens``, and ``input_token_details.cache_read`` for the input
    tokens the provider served from its own cache (cheaper where priced so).
    """
    input_tokens = _count(usage.get("input_tokens"))
    output_tokens = _count(usage.get("output_tokens"))
    if not input_tokens and not output_tokens:
        return 0
    price = None if not model else price_of(model)
    if price is None:
        return UNKNOWN
    details = usage.get("input_token_details")
    cached = _count(details.get("cache_read")) if isinstance(details, Mapping) else 0
    cached = min(cached, input_tokens)
    cached_price = price.input if price.cached_input is None else price.cached_input
    usd_per_million = (
        (input_tokens - cached) * price.input + cached * cached_price + output_tokens * price.output
    )
    return round(usd_per_million * _NANOS_PER_USD_PER_MILLION)


def _count(value: Any) -> int:
    return value if type(value) is int and value > 0 else 0
