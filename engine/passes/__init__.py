"""Graph rewrites of a pruned execution plan (never of the user's Graph): each pass is a function ``PlanIR -> PlanIR``
in its own module; :func:`optimize` runs those ``SessionConfig`` enables, in a fixed order.
"""

from __future__ import annotations

from engine.passes.constant_folding import fold_constants
from engine.passes.cse import eliminate_common_subexpressions
from engine.passes.fusion import fuse_elementwise
from engine.passes.ir import Node, PlanIR, node_from_op
from engine.passes.narrowing import narrow_products
from engine.passes.pruning import prune

PASS_NAMES = ("cse", "constant_folding", "pruning", "narrowing", "fusion")


def optimize(ir: PlanIR, passes, ctx) -> PlanIR:
    """Run the enabled passes: CSE, then folding (which CSE may have enabled), pruning, narrowing, fusion."""
    if "cse" in passes:
        ir = eliminate_common_subexpressions(ir)
    if "constant_folding" in passes:
        ir = fold_constants(ir, ctx)
    if "pruning" in passes:
        ir = prune(ir)
    if "narrowing" in passes:
        ir = narrow_products(ir)
    if "fusion" in passes:
        ir = fuse_elementwise(ir)
    return ir


__all__ = ["Node", "PASS_NAMES", "PlanIR", "node_from_op", "optimize"]
