"""The public surface: every exported name exists, __all__ is sorted, errors share one root."""

from __future__ import annotations

import inspect

import llmcache
from llmcache import errors


def test_every_public_name_is_exported_and_sorted() -> None:
    assert llmcache.__all__ == sorted(llmcache.__all__)
    for name in llmcache.__all__:
        assert getattr(llmcache, name) is not None, name
        assert not name.startswith("_")


def test_the_documented_names_are_public() -> None:
    for name in (
        "TieredCache",
        "MemoryTier",
        "DiskTier",
        "RedisTier",
        "LLMCacheError",
        "NodeCache",
        "TieredByteStore",
    ):
        assert name in llmcache.__all__


def test_every_exception_derives_from_the_root() -> None:
    classes = [
        c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, Exception)
    ]
    assert len(classes) >= 5
    for cls in classes:
        assert issubclass(cls, errors.LLMCacheError), cls


def test_the_engine_does_not_import_langchain() -> None:
    import subprocess
    import sys

    code = (
        "import sys, llmcache.tiers, llmcache.keys, llmcache.serialization, "
        "llmcache.backends.memory, llmcache.backends.disk; "
        "print(any(m.startswith('langchain') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
