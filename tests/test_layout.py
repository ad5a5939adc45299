"""The layout's promises: imports run one way, and the engine works without LangChain."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "llmcache"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every llmcache module ``path`` imports, at any level, TYPE_CHECKING blocks included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llmcache"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("llmcache"))
    return {name for name in found if name in known}


def _graph() -> dict[str, set[str]]:
    known = _modules()
    graph = {}
    for name, path in known.items():
        # A module importing its own package's __init__ (for re-exported names) is not a circle.
        graph[name] = {
            d for d in _imports(path, known) if d != name and not name.startswith(d + ".")
        }
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_circles_among_the_modules() -> None:
    graph = _graph()
    assert len(graph) > 40  # the walk found the package
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_coalescer_and_the_version_model_never_import_their_redis_halves() -> None:
    graph = _graph()
    assert "llmcache.coalesce.redis_leases" not in graph["llmcache.coalesce.coalescer"]
    assert "llmcache.invalidation.redis" not in graph["llmcache.invalidation.versions"]
    assert "llmcache.coalesce.coalescer" in graph["llmcache.coalesce.redis_leases"]


def test_the_engine_runs_without_langchain() -> None:
    # A fresh interpreter in which importing langchain_core fails: the engine still works.
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("langchain_core", "langchain", "langgraph"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from llmcache.engine import Engine
engine = Engine(l2=None)
engine.run(engine.store_flow("k", {"answer": 42}, frozenset()))
hit = engine.run(engine.lookup_flow("k", frozenset(), 0.0))
print(hit.record.payload if hit.record.payload is not None else hit.record)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "42" in done.stdout
