"""Common-subexpression elimination: two nodes of the same type, attributes and inputs compute once.

Never merged: stateful or random ops (two draws are two draws) and attributes that cannot be compared exactly.
Variable reads are by reference, so a node merges with an earlier one only when no state write runs between (the
``epoch`` in the key).
"""

from __future__ import annotations

import numpy as np

from engine.passes.ir import PlanIR

_MAX_CONST_ELEMENTS = 4096  # bigger constants are compared by identity only


def _freeze(value):
    """A hashable, exact stand-in for an attribute value; TypeError when there is none."""
    if isinstance(value, np.ndarray):
        if value.size > _MAX_CONST_ELEMENTS:
            return ("array-id", id(value))
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, float) and value != value:
        return ("nan",)
    hash(value)
    return (type(value).__name__, value)


def eliminate_common_subexpressions(ir: PlanIR) -> PlanIR:
    seen: dict = {}
    rename: dict[int, int] = {}
    epoch = 0
    kept = []
    for node in ir.nodes:
        node.inputs = [rename.get(s, s) for s in node.inputs]
        if node.writes_state:
            epoch += 1
        mergeable = (node.output >= 0 and node.pure and not node.members
                     and not ir.fetch_slots.intersection((node.output, *node.also)))
        if mergeable:
            try:
                key = (node.type, _freeze(node.op.attrs), tuple(node.inputs), node.controls, epoch,
                       node.op.outputs[0].dtype.name)
            except TypeError:
                key = None
            if key is not None:
                first = seen.get(key)
                if first is not None:
                    rename.update(zip((node.output, *node.also), (first.output, *first.also)))
                    continue
                seen[key] = node
        kept.append(node)
    ir.nodes = kept
    return ir
