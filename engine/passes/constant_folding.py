"""Constant folding: a pure node whose inputs are all constants (a ``Const`` has none) is computed once, at plan time.

Never folded: stateful or random ops, nodes with control inputs (their order is part of their meaning) and nodes whose
kernel fails here (an unfed placeholder: the run reports it). Folded values are read-only, as ``Const`` values are.
"""

from __future__ import annotations

import numpy as np

from engine.passes.ir import Node, PlanIR

_MAX_FOLDED_ELEMENTS = 1 << 20  # do not turn a cheap op into a large constant held by the plan


def fold_constants(ir: PlanIR, ctx) -> PlanIR:
    constants: dict[int, np.ndarray] = {}
    out = []
    for node in ir.nodes:
        if node.const_value is not None:
            constants[node.output] = node.const_value
        foldable = (node.output >= 0 and node.const_value is None and node.pure and not node.controls
                    and not node.members and all(s in constants for s in node.inputs))
        if foldable:
            value = _evaluate(node, ctx, [constants[s] for s in node.inputs])
            if value is not None:
                constants[node.output] = value
                out.append(Node(node.op, "Const", [], node.output, lambda ctx, v=value: (lambda: v),
                                const_value=value, id=node.id))
                continue
        out.append(node)
    ir.nodes = out
    return ir


def _evaluate(node, ctx, args):
    try:
        kernel = node.make_kernel(ctx)
        value = kernel(None, *args) if node.out_kernel else kernel(*args)
    except Exception:  # noqa: BLE001  (any kernel error is left to run time, which reports it with the op's name)
        return None
    if not isinstance(value, np.ndarray):
        return None
    if not args and not value.flags.writeable:  # a constant's own read-only storage: no copy, any size
        return value
    if value.size > _MAX_FOLDED_ELEMENTS:
        return None
    value = np.array(value, copy=True, order="C")
    value.flags.writeable = False
    return value
