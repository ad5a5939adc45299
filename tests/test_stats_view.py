"""``print(cache.stats())``: a small table whose totals add up, with tokens and cost saved."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration

from llmcache import DiskTier, MemoryTier, RedisTier, TieredCache
from llmcache.pricing import PRICES, UNKNOWN, Price, answer_cost, price_of
from llmcache.simulator import Simulator, SimulatorConfig
from tests.conftest import ChatFactory
from tests.redis_servers import free_port


def _answer(model: str | None, inputs: int = 1000, outputs: int = 500, cached: int = 0) -> list:
    usage = {
        "input_tokens": inputs,
        "output_tokens": outputs,
        "total_tokens": inputs + outputs,
        "input_token_details": {"cache_read": cached},
    }
    metadata = {} if model is None else {"model_name": model}
    message = AIMessage("41 g carbs", usage_metadata=usage, response_metadata=metadata)
    return [ChatGeneration(message=message)]


def _rows(text: str) -> dict[str, list[str]]:
    """The table's rows by their first cell, cut where the header's right-aligned cells end."""
    lines = [line[2:] for line in text.splitlines()[1:] if line.startswith("  ")]
    header = lines[0]
    assert header.split()[:4] == ["tier", "hits", "misses", "errors"]
    ends = [match.end() for match in re.finditer(r"\S+(?: µs)?", header)]
    body = [line for line in lines[1:] if not line.startswith(("saved:", "("))]
    first = max(len(line.split()[0]) for line in [header, *body])  # left-aligned, padded
    rows = {}
    for line in body:
        starts = [first, *ends[1:-1]]
        rows[line.split()[0]] = [line.split()[0]] + [
            line[start:end].strip() for start, end in zip(starts, ends[1:], strict=True)
        ]
    return rows


def _column(rows: dict[str, list[str]], index: int) -> dict[str, int]:
    """One column's numbers by row, for the rows that have one."""
    return {
        name: int(row[index].replace(",", ""))
        for name, row in rows.items()
        if len(row) > index and row[index]
    }


def test_print_is_a_table_per_tier_whose_columns_add_up(tmp_path: Path) -> None:
    writer = TieredCache(l2=DiskTier(tmp_path))
    writer.update("p", "l", _answer("gpt-4o-mini"))
    cache = TieredCache(l1=MemoryTier(), l2=DiskTier(tmp_path))
    assert cache.lookup("p", "l") is not None  # from disk, promoted to memory
    assert cache.lookup("p", "l") is not None  # from memory
    assert cache.lookup("p", "l") is not None
    assert cache.lookup("other", "l") is None  # in no tier
    text = str(cache.stats())
    rows = _rows(text)
    assert list(rows) == ["memory", "disk", "coalesced", "total"]
    hits = _column(rows, 1)
    assert hits == {"memory": 2, "disk": 1, "coalesced": 0, "total": 3}
    assert sum(v for k, v in hits.items() if k != "total") == hits["total"]
    assert _column(rows, 2)["total"] == 1  # misses: lookups no tier answered
    writes = _column(rows, 6)
    assert writes["total"] == writes["memory"] + writes["disk"] == 1  # the promotion
    head = text.splitlines()[0]
    assert "4 lookups" in head and "hit rate 75.0%" in head and "0 errors" in head
    # Latencies are rounded for reading: no 15-digit floats anywhere.
    table = "\n".join(line for line in text.splitlines() if "saved:" not in line)
    assert not re.search(r"\d\.\d{2,}", table)
    # 3 hits of an answer of 1,000 input and 500 output tokens of gpt-4o-mini
    # ($0.15 and $0.60 per million): 3 x 1,500 tokens, 3 x $0.00045.
    assert "saved: 3 calls, 4,500 tokens, $0.00135" in text
    stats = cache.stats()
    assert stats.tokens_saved == 4500
    assert stats.cost_saved_nanos == 3 * 450_000
    assert stats.cost_saved_usd == pytest.approx(0.00135)


def test_the_top_level_errors_include_the_tiers_errors() -> None:
    # A real Redis URL where nothing listens: every Redis read fails (a miss).
    dead = RedisTier(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.2)
    cache = TieredCache(
        l1=MemoryTier(), l2=dead, secret="a secret of sixteen bytes or more", coalesce=False
    )
    for n in range(5):
        assert cache.lookup(f"p{n}", "l") is None
    stats = cache.stats()
    assert stats.tiers["redis"].errors == 5
    assert stats.errors == 5  # was 0 beside the tier's 5
    assert stats.as_dict()["errors"] == 5
    rows = _rows(str(stats))
    errors = _column(rows, 3)
    assert errors["redis"] == errors["total"] == 5
    # With coalescing on, its Redis leases fail too: counted, shown, and in the total.
    dead = RedisTier(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.2)
    cache = TieredCache(l1=MemoryTier(), l2=dead, secret="a secret of sixteen bytes or more")
    assert cache.lookup("p", "l") is None
    stats = cache.stats()
    assert stats.errors_by_source["coalesce"] == 1
    assert stats.errors == stats.tiers["redis"].errors + 1 == 2
    errors = _column(_rows(str(stats)), 3)
    assert errors["total"] == sum(value for name, value in errors.items() if name != "total")
    cache.close()


def test_errors_outside_the_tiers_have_a_row_and_count_in_the_total() -> None:
    cache = TieredCache(l2=None)
    odd = [ChatGeneration(message=AIMessage("x"), generation_info={"handle": object()})]
    cache.update("p", "l", odd)  # cannot be stored exactly: the cache's own error
    stats = cache.stats()
    assert stats.errors == 1 and stats.errors_by_source["cache"] == 1
    errors = _column(_rows(str(stats)), 3)
    assert errors == {"memory": 0, "cache": 1, "total": 1}


def test_cost_is_unknown_where_the_model_has_no_price() -> None:
    cache = TieredCache(l2=None)
    cache.update("p", "l", _answer("acme-llm-7"))
    cache.update("q", "l", _answer(None, 10, 5))  # no model name at all
    assert cache.lookup("p", "l") is not None
    assert cache.lookup("q", "l") is not None
    stats = cache.stats()
    assert stats.tokens_saved == 1515
    assert stats.tokens_unpriced == 1515
    assert stats.cost_saved_nanos == 0
    assert "cost unknown (1,515 tokens of models with no known price)" in str(stats)
    cache.update("r", "l", _answer("gpt-4o"))
    assert cache.lookup("r", "l") is not None
    # $2.50 and $10 per million: 1,000 x 2.5 + 500 x 10 = 7,500 per million = $0.0075.
    assert "$0.0075 + unknown (1,515 tokens of models with no known price)" in str(cache.stats())


def test_prices_dated_snapshots_cached_input_and_added_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert price_of("gpt-4o-mini-2024-07-18") == price_of("GPT-4o-mini") == PRICES["gpt-4o-mini"]
    assert price_of("gpt-4o-2024-05-13") == Price(5.0, 15.0)  # a snapshot priced on its own
    assert price_of("acme-llm-7") is None
    usage = {"input_tokens": 1000, "output_tokens": 500, "input_token_details": {"cache_read": 200}}
    # 800 x 0.15 + 200 x 0.075 (cached) + 500 x 0.60 = 435 per million: 435,000 nano-dollars.
    assert answer_cost(usage, "gpt-4o-mini") == 435_000
    assert answer_cost(usage, "acme-llm-7") == UNKNOWN
    assert answer_cost({"input_tokens": 0}, "acme-llm-7") == 0  # nothing to price
    monkeypatch.setitem(PRICES, "acme-llm-7", Price(input=1.0, output=2.0))
    assert answer_cost(usage, "acme-llm-7") == 2_000_000


def test_as_dict_keeps_its_keys_for_programs(tmp_path: Path) -> None:
    cache = TieredCache(l2=DiskTier(tmp_path))
    cache.update("p", "l", _answer("gpt-4o-mini"))
    cache.lookup("p", "l")
    data = cache.stats().as_dict()
    old = {"lookups", "hits", "misses", "errors", "hit_rate", "tokens_saved", "coalesced", "tiers"}
    assert old <= set(data)
    assert set(data["tiers"]["disk"]) >= {
        "name", "hits", "misses", "errors", "corrupt", "stale", "writes",
        "latency_p50_us", "latency_p90_us", "latency_p99_us", "hit_rate",
    }  # fmt: skip
    assert data["cost_saved_usd"] == pytest.approx(0.00045)
    assert data["hits"] == 1 and data["tiers"]["memory"]["hits"] == 1


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig()) as simulator:
        yield simulator


def test_chatopenai_hits_save_the_stored_answers_tokens_and_cost(chat: ChatFactory) -> None:
    cache = TieredCache(l2=None)
    llm = chat(cache)
    first = llm.invoke("Nutrients of one serving of bibimbap?")
    usage = first.usage_metadata
    assert usage is not None and usage["total_tokens"] > 0
    for _ in range(3):
        llm.invoke("Nutrients of one serving of bibimbap?")
    stats = cache.stats()
    assert stats.hits == 3 and stats.misses == 1
    assert stats.tokens_saved == 3 * usage["total_tokens"]
    per_call = usage["input_tokens"] * 150 + usage["output_tokens"] * 600  # gpt-4o-mini, nano-$
    assert stats.cost_saved_nanos == 3 * per_call
    assert stats.tokens_unpriced == 0
