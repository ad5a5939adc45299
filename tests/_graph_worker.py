"""A small LangGraph graph on a NodeCache, run by the LangGraph tests in this and other processes.

The node functions live here so that every process computes the same cache
namespace for them (LangGraph names a node's entries after its function's
module and qualified name).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, AnyMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import CachePolicy

from llmcache.langgraph_cache import NodeCache

#: Each node run appends its name here when set (a file: other processes count too).
RUNS: list[str] = []
_LOG: Path | None = None


class State(TypedDict, total=False):
    question: str
    draft: str
    answer: str
    messages: Annotated[list[AnyMessage], add_messages]


def _ran(name: str) -> None:
    RUNS.append(name)
    if _LOG is not None:
        with _LOG.open("a") as log:
            log.write(name + "\n")


def retrieve(state: State) -> dict[str, Any]:
    _ran("retrieve")
    return {"draft": f"notes on {state['question']}"}


def write(state: State) -> dict[str, Any]:
    _ran("write")
    answer = state["draft"].upper()
    return {"answer": answer, "messages": [AIMessage(answer, usage_metadata=None)]}


def build(cache: NodeCache, ttl: int | None = None) -> Any:
    """START -> retrieve -> write -> END, both nodes cached."""
    graph = StateGraph(State)
    graph.add_node("retrieve", retrieve, cache_policy=CachePolicy(ttl=ttl))
    graph.add_node("write", write, cache_policy=CachePolicy(ttl=ttl))
    graph.add_edge(START, "retrieve")
    graph.add_edge("retrieve", "write")
    graph.add_edge("write", END)
    return graph.compile(cache=cache)


def cached_nodes(chunks: list[Any]) -> list[str]:
    """The nodes a ``stream_mode="updates"`` run served from the cache (LangGraph's mark)."""
    return [
        node
        for chunk in chunks
        if chunk.get("__metadata__", {}).get("cached")
        for node in chunk
        if node != "__metadata__"
    ]


def main(l2: str, prefix: str, question: str, log: str) -> None:
    """One run in a fresh process: print the answer and the nodes served from the cache."""
    global _LOG
    _LOG = Path(log)
    if l2.startswith("redis"):
        from llmcache import RedisTier

        cache = NodeCache(l1=None, l2=RedisTier(l2, prefix=prefix))
    else:
        cache = NodeCache(l2=l2)
    graph = build(cache)
    chunks = list(graph.stream({"question": question}, stream_mode="updates"))
    final = graph.invoke({"question": question})
    print(json.dumps({"cached": cached_nodes(chunks), "answer": final["answer"]}))
    cache.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
