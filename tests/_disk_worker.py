"""One of several processes hammering one DiskTier directory (run by test_multiprocess_disk)."""

from __future__ import annotations

import random
import sys

from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration

from llmcache import DiskTier, TieredCache


def expected_answer(prompt: str) -> str:
    # Every process writes the same answer for a prompt, so any hit must equal it.
    return f"answer to {prompt} " * (1 + sum(map(ord, prompt)) % 40)


def main(directory: str, seed: int, operations: int) -> int:
    rng = random.Random(seed)
    cache = TieredCache(l1=None, l2=DiskTier(directory, size_limit=64 << 20))
    hits = wrong = 0
    for _ in range(operations):
        prompt = f"prompt-{rng.randrange(60)}"
        found = cache.lookup(prompt, "llm")
        if found is None:
            answer = [ChatGeneration(message=AIMessage(expected_answer(prompt)))]
            cache.update(prompt, "llm", answer)
        else:
            hits += 1
            wrong += found[0].message.content != expected_answer(prompt)  # type: ignore[attr-defined]
    stats = cache.stats()
    print(hits, wrong, stats.errors + sum(t.errors + t.corrupt for t in stats.tiers.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
