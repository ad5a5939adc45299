"""The semantic tier in TieredCache: scope isolation, pointers to exact entries, shadow mode."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.load import dumps
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, Generation

from llmcache import DiskTier, SemanticTier, TieredCache, depends_on
from llmcache.errors import ConfigurationError
from llmcache.semantic.index import SQLiteIndex
from llmcache.semantic.scope import split_prompt
from tests.conftest import FakeClock
from tests.semantic_servers import (  # noqa: F401
    SEARCH_SERVERS,
    _redis8_search,
    _valkey_search,
    search_url,
)

ASKED = "How do I reset my password?"
REWORDED = "What's the way to reset my password?"
LLM = "gpt-4o-mini temperature=0"


def chat_prompt(*messages: Any) -> str:
    return dumps(list(messages))


def answer(text: str) -> list[Generation]:
    return [ChatGeneration(message=AIMessage(content=text))]


def texts(found: Any) -> list[str] | None:
    return None if found is None else [generation.text for generation in found]


def test_a_paraphrase_is_served_after_the_exact_tiers_miss() -> None:
    cache = TieredCache(l2=None, semantic=SemanticTier())
    cache.update(ASKED, LLM, answer("Use 'Forgot password'."))
    assert texts(cache.lookup(REWORDED, LLM)) == ["Use 'Forgot password'."]
    assert texts(cache.lookup("How do I reset my password on Windows?", LLM)) is None
    extra = cache.stats().extra
    assert extra["semantic_hits"] == 1
    assert extra["semantic_veto_entities"] == 1


BANK = SystemMessage("You are a bank.")


@pytest.mark.parametrize(
    ("stored", "asked", "control"),
    [
        pytest.param((ASKED, "model-a"), (REWORDED, "model-b"), (REWORDED, "model-a"), id="models"),
        pytest.param(
            (chat_prompt(BANK, HumanMessage(ASKED)), LLM),
            (chat_prompt(SystemMessage("You are a game."), HumanMessage(REWORDED)), LLM),
            (chat_prompt(BANK, HumanMessage(REWORDED)), LLM),
            id="system prompts",
        ),
        pytest.param(
            (ASKED, LLM + " tools=[lookup_account]"),
            (REWORDED, LLM + " tools=[lookup_game]"),
            (REWORDED, LLM + " tools=[lookup_account]"),
            id="tools lists",
        ),
    ],
)
def test_scopes_never_share_an_entry(
    stored: tuple[str, str], asked: tuple[str, str], control: tuple[str, str]
) -> None:
    cache = TieredCache(l2=None, semantic=SemanticTier())
    cache.update(*stored, answer("stored"))
    assert cache.lookup(*asked) is None
    # The control: the same rewording within the stored scope is served.
    assert texts(cache.lookup(*control)) == ["stored"]


def test_two_namespaces_never_share_an_entry(tmp_path: Path) -> None:
    first = TieredCache(l2=DiskTier(tmp_path), namespace="a", semantic=SemanticTier())
    second = TieredCache(l2=DiskTier(tmp_path), namespace="b", semantic=SemanticTier())
    first.update(ASKED, LLM, answer("for a"))
    assert second.lookup(REWORDED, LLM) is None
    assert texts(first.lookup(REWORDED, LLM)) == ["for a"]
    second.update(ASKED, LLM, answer("for b"))
    second.clear()
    assert texts(first.lookup(REWORDED, LLM)) == ["for a"]  # clear() drops only its namespace


def test_only_the_last_user_text_is_compared_and_earlier_turns_must_match() -> None:
    cache = TieredCache(l2=None, semantic=SemanticTier())
    history = [HumanMessage("I use the mobile app."), AIMessage("Great, what do you need?")]
    cache.update(chat_prompt(*history, HumanMessage(ASKED)), LLM, answer("In the app: Settings."))
    assert texts(cache.lookup(chat_prompt(*history, HumanMessage(REWORDED)), LLM)) == [
        "In the app: Settings."
    ]
    other = [HumanMessage("I use the website."), AIMessage("Great, what do you need?")]
    assert cache.lookup(chat_prompt(*other, HumanMessage(REWORDED)), LLM) is None


def test_a_last_message_that_is_not_plain_user_text_is_not_eligible() -> None:
    assert split_prompt(chat_prompt(HumanMessage(ASKED), AIMessage("ok"))) is None
    assert split_prompt(chat_prompt(ToolMessage("42", tool_call_id="c1"))) is None
    image = HumanMessage(content=[{"type": "image_url", "image_url": {"url": "data:,"}}])
    assert split_prompt(chat_prompt(image)) is None
    blocks = HumanMessage(content=[{"type": "text", "text": ASKED}])
    assert split_prompt(chat_prompt(blocks)) == (split_prompt(chat_prompt(HumanMessage(ASKED))))
    cache = TieredCache(l2=None, semantic=SemanticTier())
    cache.update(chat_prompt(HumanMessage(ASKED), AIMessage("ok")), LLM, answer("x"))
    assert cache.lookup(chat_prompt(HumanMessage(REWORDED), AIMessage("ok")), LLM) is None
    assert cache._semantic is not None and cache._semantic.stats().ineligible == 1


def test_an_invalidated_target_is_a_miss_through_the_semantic_tier(tmp_path: Path) -> None:
    cache = TieredCache(l2=DiskTier(tmp_path), semantic=SemanticTier())
    with depends_on("doc:password-help"):
        cache.update(ASKED, LLM, answer("old procedure"))
    assert texts(cache.lookup(REWORDED, LLM)) == ["old procedure"]
    cache.invalidate("doc:password-help")
    assert cache.lookup(REWORDED, LLM) is None
    assert cache.stats().extra["semantic_missing_target"] == 1


def test_an_expired_target_is_a_miss(tmp_path: Path, clock: FakeClock) -> None:
    cache = TieredCache(l2=DiskTier(tmp_path), ttl=60, clock=clock, semantic=SemanticTier())
    cache.update(ASKED, LLM, answer("fresh"))
    clock.advance(30)
    assert texts(cache.lookup(REWORDED, LLM)) == ["fresh"]
    clock.advance(31)
    assert cache.lookup(REWORDED, LLM) is None


def test_a_deleted_target_is_a_miss_and_its_row_is_dropped(tmp_path: Path) -> None:
    semantic = SemanticTier()
    cache = TieredCache(l1=None, l2=DiskTier(tmp_path), semantic=semantic)
    cache.update(ASKED, LLM, answer("x"))
    for tier in cache.tiers:
        tier.clear("default")  # the exact entry is gone, its index row is not
    assert semantic.index.count("default") == 1
    assert cache.lookup(REWORDED, LLM) is None
    assert semantic.index.count("default") == 0


def test_clear_empties_the_namespace_semantic_index(tmp_path: Path) -> None:
    semantic = SemanticTier()
    cache = TieredCache(l2=DiskTier(tmp_path), semantic=semantic)
    cache.update(ASKED, LLM, answer("x"))
    assert semantic.index.count("default") == 1
    assert (tmp_path / "semantic.sqlite3").exists()  # beside the disk tier
    cache.clear()
    assert semantic.index.count("default") == 0
    assert cache.lookup(REWORDED, LLM) is None


def test_shadow_mode_records_and_serves_nothing() -> None:
    semantic = SemanticTier(mode="shadow")
    cache = TieredCache(l2=None, semantic=semantic)
    cache.update(ASKED, LLM, answer("Use the reset link."))
    cache.update("How do I cancel my subscription?", LLM, answer("Settings, then Cancel."))
    assert cache.lookup(REWORDED, LLM) is None  # would have served: does not
    cache.update(REWORDED, LLM, answer("use the reset  link."))  # the real answer agrees
    assert cache.lookup("How can I cancel my subscription?", LLM) is None
    cache.update("How can I cancel my subscription?", LLM, answer("Call us."))  # disagrees
    stats = semantic.stats()
    assert stats.hits == 0
    assert stats.would_hit == 2
    assert (stats.shadow_checked, stats.shadow_disagreed) == (2, 1)
    assert stats.disagreement_rate == 0.5
    assert [o.agreed for o in sorted(semantic.observations, key=lambda o: o.similarity)] in (
        [True, False],
        [False, True],
    )
    # Exact repeats are still served by the exact tiers.
    assert texts(cache.lookup(ASKED, LLM)) == ["Use the reset link."]


def test_calibration_uses_an_upper_confidence_bound() -> None:
    from llmcache.semantic.calibration import Observation, choose_threshold, wilson_upper

    assert wilson_upper(0, 10) == pytest.approx(0.2775, abs=1e-3)
    assert wilson_upper(3, 40) > 3 / 40
    good = [Observation(0.95 - i * 0.001, True) for i in range(200)]
    bad = [Observation(0.80 - i * 0.001, i % 2 == 0) for i in range(100)]
    found = choose_threshold(good + bad, max_wrong=0.05)
    assert found is not None
    assert found.threshold > 0.70  # it stops before the half-wrong region eats the bound
    assert found.wrong_upper <= 0.05
    assert choose_threshold(good[:20], max_wrong=0.05) is None  # 20 clean ones prove too little


def test_response_metadata_marks_a_semantic_hit_and_debug_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = TieredCache(l2=None, semantic=SemanticTier(mark=True))
    cache.update(ASKED, LLM, answer("x"))
    with caplog.at_level(logging.DEBUG, logger="llmcache.semantic"):
        found = cache.lookup(REWORDED, LLM)
    assert found is not None
    mark = found[0].message.response_metadata["llmcache_semantic"]  # type: ignore[attr-defined]
    assert mark["matched"] == ASKED and 0.7 < mark["similarity"] <= 1.0
    assert any(ASKED in r.getMessage() and "similarity" in r.getMessage() for r in caplog.records)
    exact = cache.lookup(ASKED, LLM)
    assert exact is not None and "llmcache_semantic" not in exact[0].message.response_metadata  # type: ignore[attr-defined]


async def test_concurrent_alookups_are_embedded_in_batches_and_once_per_text() -> None:
    semantic = SemanticTier()
    cache = TieredCache(l2=None, semantic=semantic)
    await cache.aupdate(ASKED, LLM, answer("x"))
    questions = [f"How do I reset the password of account number {i}?" for i in range(40)]
    found = await asyncio.gather(*(cache.alookup(q, LLM) for q in questions))
    assert all(result is None for result in found)  # the numbers guard vetoes each
    assert semantic._batcher.batches <= 3  # 40 lookups, not 40 calls to the model
    embedded = semantic.stats().embedded
    assert embedded == 41
    for question in questions[:5]:
        await cache.aupdate(question, LLM, answer("y"))
    await cache.alookup(questions[0] + " ", LLM)
    assert semantic.stats().embedded == 42  # the updates reused the lookups' vectors


async def test_the_event_loop_keeps_running_while_embedding() -> None:
    cache = TieredCache(l2=None, semantic=SemanticTier())
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    texts_ = [f"A long question about topic {i} with several more words in it" for i in range(64)]
    await asyncio.gather(*(cache.alookup(t, LLM) for t in texts_))
    done = True
    await task
    assert ticks >= 3  # the loop ran while the model worked in a thread


def test_a_broken_index_is_a_miss_not_an_error(tmp_path: Path) -> None:
    class Broken(SQLiteIndex):
        def search(self, *args: Any) -> Any:
            raise OSError("disk on fire")

    cache = TieredCache(l2=None, semantic=SemanticTier(index=Broken(None)))
    cache.update(ASKED, LLM, answer("x"))
    assert cache.lookup(REWORDED, LLM) is None
    assert cache.stats().extra["semantic_errors"] == 1


def test_own_embeddings_need_a_threshold_and_nothing_loads_in_the_constructor() -> None:
    from langchain_core.embeddings import DeterministicFakeEmbedding

    with pytest.raises(ConfigurationError, match="threshold"):
        SemanticTier(embeddings=DeterministicFakeEmbedding(size=8))
    tier = SemanticTier(embeddings=DeterministicFakeEmbedding(size=8), threshold=0.99)
    assert tier._index is None
    with pytest.raises(ConfigurationError):
        SemanticTier(mode="serve-all")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        SemanticTier(threshold=1.5)
    cache = TieredCache(l2=None, semantic=tier)
    cache.update(ASKED, LLM, answer("x"))
    assert texts(cache.lookup(ASKED + " ", LLM)) is None or True  # any result, no exception


def test_semantic_tier_is_public_and_loads_nothing_before_first_use() -> None:
    import subprocess
    import sys

    import llmcache

    assert "SemanticTier" in llmcache.__all__
    code = (
        "import sys; from llmcache import SemanticTier, TieredCache; "
        "c = TieredCache(l2=None, semantic=SemanticTier()); "
        "from llmcache.semantic import model; "
        "print(model._model, sorted(m for m in ('tokenizers', 'redisvl') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None []"  # no weights read, no tokenizer, no Redis client


@pytest.mark.redis
@pytest.mark.parametrize("server", SEARCH_SERVERS)
def test_redis_index_end_to_end(request: pytest.FixtureRequest, server: str) -> None:
    import redis as redis_py

    url = search_url(request, server)
    namespace, other = f"t{uuid.uuid4().hex[:8]}", f"u{uuid.uuid4().hex[:8]}"
    mine = TieredCache(l2=url, namespace=namespace, semantic=SemanticTier(redis=url))
    theirs = TieredCache(l2=url, namespace=other, semantic=SemanticTier(redis=url))
    try:
        mine.update(ASKED, LLM, answer("mine"))
        theirs.update(ASKED, LLM, answer("theirs"))
        assert texts(mine.lookup(REWORDED, LLM)) == ["mine"]
        assert texts(theirs.lookup(REWORDED, LLM)) == ["theirs"]
        mine.clear()
        assert mine.lookup(REWORDED, LLM) is None
        assert texts(theirs.lookup(REWORDED, LLM)) == ["theirs"]
        client = redis_py.Redis.from_url(url)
        assert client.keys(f"llmcache-semantic:{namespace}:*") == []
        assert client.keys(f"llmcache-semantic:{other}:*") != []
        client.close()
    finally:
        theirs.clear()
        mine.close()
        theirs.close()


_OTHER_PROCESS = """
import sys
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration
from llmcache import SemanticTier, TieredCache
tier = SemanticTier()
cache = TieredCache(l1=None, l2=sys.argv[1], semantic=tier)
assert cache.lookup(sys.argv[2], "gpt-4o-mini temperature=0") is None
cache.update(sys.argv[2], "gpt-4o-mini temperature=0", [ChatGeneration(message=AIMessage("A"))])
print(tier.embedder.embedded, tier.embedder.from_store)
"""


def test_a_text_embedded_by_one_process_is_not_embedded_again_by_another(tmp_path: Path) -> None:
    # The semantic tier's embeddings go through TieredByteStore on the cache's disk tier.
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, str(tmp_path), ASKED],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "0"]  # embedded once: the lookup's, reused by the update

    tier = SemanticTier()
    cache = TieredCache(l1=None, l2=tmp_path, semantic=tier)
    found = cache.lookup(REWORDED, LLM)  # embeds the new question; the stored row is searched
    assert texts(found) == ["A"]
    assert (tier.embedder.embedded, tier.embedder.from_store) == (1, 0)
    tier.embedder._entries.clear()  # this process's LRU forgotten: the store still has both
    assert tier.embedder.embed([ASKED, REWORDED]).shape == (2, 384)
    assert (tier.embedder.embedded, tier.embedder.from_store) == (1, 2)


def test_stored_vectors_that_are_not_unit_float32_are_ignored() -> None:
    from llmcache.semantic.embedder import _vector

    good = np.array([0.6, 0.8], dtype="<f4").tobytes()
    assert _vector(good) is not None
    assert _vector(None) is None
    assert _vector(b"") is None
    assert _vector(good[:-1]) is None
    assert _vector(np.array([3.0, 4.0], dtype="<f4").tobytes()) is None
    assert _vector(np.array([np.nan, 1.0], dtype="<f4").tobytes()) is None
