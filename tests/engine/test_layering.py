"""The engine's import graph: no cycles (function-level imports included) and layers that point one way.

Read from the source with ``ast`` (no import side effects). A module may import its own layer
or lower ones; within a layer the graph must still be acyclic. Importing a submodule is an edge
to that submodule only (its package's ``__init__`` is the public facade, imported by users).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "engine"

# Lowest first: a module may import only modules of its own or an earlier layer.
LAYERS = [
    ["engine.cores", "engine.config", "engine.errors", "engine.dtypes", "engine.shapes", "engine.generated"],
    ["engine.kernels"],
    ["engine.registry"],
    ["engine.graph"],
    ["engine.ops", "engine.autodiff"],
    ["engine.passes"],
    ["engine.session"],
    ["engine.compiler", "engine.saver", "engine.profiler", "engine.graphviz", "engine.train", "engine.layers",
     "engine.data"],
    ["engine"],
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def import_graph() -> dict:
    """{module: set of engine modules it imports anywhere in its source}."""
    graph = {}
    for path in sorted(ENGINE.rglob("*.py")):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name.split(".")[0] == "engine")
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                if base.split(".")[0] != "engine":
                    continue
                for alias in node.names:
                    edges.add(f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base)
        edges.discard(name)
        graph[name] = edges
    return graph


def _layer(name: str) -> int:
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    assert best is not None, f"{name} is in no layer of tests/engine/test_layering.py"
    return best[0]


def _cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_inside_the_engine():
    assert _cycles(import_graph()) == []


def test_imports_point_down_the_layers():
    wrong = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
             for a, edges in import_graph().items() for b in sorted(edges) if _layer(b) > _layer(a)]
    assert wrong == []


def test_the_check_sees_a_cycle_and_an_upward_import():
    assert _cycles({"engine.a": {"engine.b"}, "engine.b": {"engine.a"}}) == [["engine.a", "engine.b"]]
    assert _layer("engine.kernels.reduce") < _layer("engine.ops.math") < _layer("engine.session")
