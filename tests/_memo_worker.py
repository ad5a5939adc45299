"""A memoized function on a disk cache, shared by test_plain_cache and the processes it starts.

Both sides build it here, so it has one module and qualified name (its key)
in every process: ``python -c "from tests._memo_worker import main; main()" DIR ACTION``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmcache import Cache, DiskTier


def build(directory: str | Path) -> tuple[Cache, Callable[[str], dict[str, Any]], list[str]]:
    """A cache on ``directory``, a memoized function that depends on doc:1, and its runs."""
    cache = Cache(l2=DiskTier(directory))
    runs: list[str] = []

    @cache.memoize(depends_on=["doc:1"])
    def answer(question: str) -> dict[str, Any]:
        runs.append(question)
        return {"question": question, "answer": len(question)}

    return cache, answer, runs


def main() -> None:
    directory, action = sys.argv[1], sys.argv[2]
    cache, answer, runs = build(directory)
    if action == "invalidate":
        cache.invalidate("doc:1")
        print(json.dumps({"invalidated": True}))
    else:
        print(json.dumps({"value": answer("q"), "runs": len(runs)}))
    cache.close()
