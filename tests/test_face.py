"""EngineFace: every face has the same maintenance calls, and they act on its own entries."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration

from llmcache import Cache, DiskTier, NodeCache, TieredByteStore, TieredCache, depends_on
from llmcache.face import EngineFace

# Per face: write one entry, and read it back (True: a hit).
Write = Callable[[Any], None]
Read = Callable[[Any], Awaitable[bool]]


def _cache_write(face: Cache) -> None:
    face.set("k", [1])


async def _cache_read(face: Cache) -> bool:
    return await face.aget("k") == [1]


def _llm_write(face: TieredCache) -> None:
    face.update("prompt", "llm", [ChatGeneration(message=AIMessage("hi"))])


async def _llm_read(face: TieredCache) -> bool:
    return await face.alookup("prompt", "llm") is not None


def _node_write(face: NodeCache) -> None:
    face.set({(("node",), "k"): ([("channel", 1)], None)})


async def _node_read(face: NodeCache) -> bool:
    return bool(await face.aget([(("node",), "k")]))


def _bytes_write(face: TieredByteStore) -> None:
    face.mset([("k", b"v")])


async def _bytes_read(face: TieredByteStore) -> bool:
    return await face.amget(["k"]) == [b"v"]


FACES: list[tuple[type[EngineFace], Write, Read]] = [
    (Cache, _cache_write, _cache_read),
    (TieredCache, _llm_write, _llm_read),
    (NodeCache, _node_write, _node_read),
    (TieredByteStore, _bytes_write, _bytes_read),
]


@pytest.mark.parametrize(("face_type", "write", "read"), FACES, ids=lambda f: f.__name__)
async def test_every_face_shares_the_maintenance_calls(
    tmp_path: Path, face_type: type[Any], write: Write, read: Read
) -> None:
    face = face_type(l1=None, l2=DiskTier(tmp_path), namespace="ns", ttl=60)
    assert isinstance(face, EngineFace)
    assert repr(face).startswith(f"{face_type.__name__}(namespace='ns', disk=DiskTier")
    assert face.ttl == 60.0 and face.namespace == "ns" and face.engine.namespace == "ns"
    assert [tier.name for tier in face.tiers] == ["disk"]
    with depends_on("doc:1"):
        write(face)
    assert await read(face)
    assert face.totals()["hits"] == 1 and face.stats().hits == 1
    face.reset_stats()
    assert face.totals()["hits"] == 0
    await face.ainvalidate("doc:1")  # the async twin every face now has
    report = face.gc()  # the stale entry is reclaimed from the disk
    assert report["disk"]["stale"] == 1 and report["disk"]["kept"] == 0
    assert not await read(face)
    assert face.flush_stats() is True  # the counts go to the disk for `llmcache stats`
    face.invalidate("doc:2")
    await face.aclose()
