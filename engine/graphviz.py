"""Graphviz (DOT) export of a graph, for a user reading it: one node per op (type and name), data edges labelled with
dtype and static shape, control edges dashed, name scopes as nested clusters. ``to_dot(graph)`` shows all of it,
``to_dot(fetches)`` what they depend on; ``dot -Tsvg graph.dot -o graph.svg`` renders it (no engine dependency).
"""

from __future__ import annotations

from engine.graph import Graph, IndexedSlices, Operation, Tensor, ops_needed
from engine.saver import atomic_write_bytes


def _quote(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _shape_text(shape) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _ops_of(graph_or_fetches) -> list:
    """The ops to draw, in creation order: a whole Graph, or what the fetches depend on."""
    if isinstance(graph_or_fetches, Graph):
        return graph_or_fetches.get_operations()
    roots = graph_or_fetches if isinstance(graph_or_fetches, (list, tuple, set)) else [graph_or_fetches]
    targets = []
    for r in roots:
        if hasattr(r, "_as_tensor"):
            r = r._as_tensor()
        if isinstance(r, IndexedSlices):
            targets += [r.values, r.indices, r.dense_shape]
        elif isinstance(r, (Tensor, Operation)):
            targets.append(r)
        else:
            raise TypeError(f"to_dot: {r!r} is not a Graph, tensor, variable or operation")
    return sorted(ops_needed(targets), key=lambda o: o.id)  # nothing fed: every op they depend on


def to_dot(graph_or_fetches, name: str = "engine_graph", rankdir: str = "TB") -> str:
    """DOT text of the graph (or of what ``graph_or_fetches`` depends on)."""
    ops = _ops_of(graph_or_fetches)
    ids = {op: f"op{op.id}" for op in ops}
    tree: dict = {"ops": [], "children": {}}  # name-scope tree: scope -> ops and sub-scopes
    for op in ops:
        node = tree
        for part in op.name.split("/")[:-1]:
            node = node["children"].setdefault(part, {"ops": [], "children": {}})
        node["ops"].append(op)
    lines = [f"digraph {_quote(name)} {{", f"  rankdir={rankdir};",
             '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=8];']
    counter = [0]

    def emit(node, path, indent):
        pad = "  " * indent
        for op in node["ops"]:
            short = op.name.rsplit("/", 1)[-1]
            source = not op.inputs and not op.control_inputs  # placeholders, variables, constants
            fill = ', fillcolor="#fde9c9"' if source else ""
            lines.append(f"{pad}{ids[op]} [label={_quote(op.type + chr(10) + short)}, "
                         f"tooltip={_quote(op.name)}{fill}];")
        for scope, child in node["children"].items():
            counter[0] += 1
            full = f"{path}/{scope}" if path else scope
            lines.append(f"{pad}subgraph cluster_{counter[0]} {{")
            lines.append(f"{pad}  label={_quote(full)}; style=rounded; color=\"#9aa5b1\";")
            emit(child, full, indent + 1)
            lines.append(f"{pad}}}")

    emit(tree, "", 1)
    for op in ops:
        for t in op.inputs:
            if t.op in ids:
                label = f"{t.dtype.name} {_shape_text(t.shape)}"
                lines.append(f"  {ids[t.op]} -> {ids[op]} [label={_quote(label)}];")
        for c in op.control_inputs:
            if c in ids:
                lines.append(f"  {ids[c]} -> {ids[op]} [style=dashed, color=\"#888888\"];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_dot(graph_or_fetches, path: str, **kwargs) -> str:
    """Write :func:`to_dot`'s text to ``path`` (atomically); returns ``path``."""
    atomic_write_bytes(str(path), to_dot(graph_or_fetches, **kwargs).encode())
    return str(path)
