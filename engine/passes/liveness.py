"""Buffer assignment: which steps may write into a buffer kept across runs, and which share one.

A step whose kernel can write into ``out`` gets a buffer *group*; two steps share a group when
their static output shape and dtype agree and the first one's value (and every value that may
alias it) is dead before the second runs. Values that leave the run (fetched, or handed to a
stateful op that might keep them) never get a group: the caller owns them.
"""

from __future__ import annotations

from engine.passes.ir import PlanIR

# Stateful ops known to copy (or only read) their inputs, so a reused buffer may feed them.
_COPYING_STATEFUL_PREFIXES = ("Assign", "Apply", "SparseApply")

# Input positions whose kernels read only the array's shape (gradient helpers): the shape of
# an array object never changes, so such a read neither keeps the data alive nor aliases it.
_SHAPE_ONLY_INPUTS = {"SumToShape": (1,), "BroadcastReduced": (1,), "ReshapeLike": (1,), "Shape": (0,),
                      "OnesLike": (0,), "ZerosLike": (0,)}


def _data_inputs(node):
    shape_only = _SHAPE_ONLY_INPUTS.get(node.type, ())
    if node.type == "ConcatSlice":  # (gradient, *forward values): the values give offsets only
        return node.inputs[:1]
    return [s for k, s in enumerate(node.inputs) if k not in shape_only]


def assign_buffer_groups(ir: PlanIR) -> tuple[dict, int]:
    """{node id: group index} and the number of groups."""
    roots: dict[int, frozenset] = {}  # slot -> the buffered slots its value may alias
    last_use: dict[int, int] = {}
    escaping: set = set()
    for i, node in enumerate(ir.nodes):
        reached = frozenset().union(*(roots.get(s, frozenset()) for s in _data_inputs(node)))
        for r in reached:
            last_use[r] = i
        if node.stateful and not node.type.startswith(_COPYING_STATEFUL_PREFIXES):
            escaping |= reached
        if node.output >= 0:
            roots[node.output] = frozenset([node.output]) if node.out_kernel else reached
            last_use.setdefault(node.output, i)
    for s in ir.fetch_slots:
        escaping |= roots.get(s, frozenset())
    groups: dict[int, int] = {}
    free: dict = {}
    releases: dict[int, list] = {}
    count = 0
    slot_group: dict[int, int] = {}
    for i, node in enumerate(ir.nodes):
        if node.out_kernel and node.output >= 0 and node.output not in escaping:
            t = ir.slot_tensors[node.output]
            key = (t.shape, t.dtype.name)
            pool = free.setdefault(key, [])
            g = _dying_input_group(node, i, ir, key, slot_group, last_use, roots) if node.members else None
            if g is not None:  # elementwise: write the result over an input that dies here
                releases[i].remove((key, g))
            elif pool:
                g = pool.pop()
            else:
                g, count = count, count + 1
            slot_group[node.output] = g
            groups[node.id] = g
            releases.setdefault(last_use[node.output], []).append((key, g))
        for key, g in releases.pop(i, ()):
            free[key].append(g)
    return groups, count


def _dying_input_group(node, i, ir, key, slot_group, last_use, roots):
    """The group of an input buffer (same shape and dtype) whose last reader is this node, if any.

    Safe for fused elementwise kernels only: each reads element ``i`` of every operand before
    writing element ``i`` of the output.
    """
    for s in node.inputs:
        t = ir.slot_tensors[s]
        if (s in slot_group and last_use.get(s) == i and roots.get(s) == frozenset([s])
                and (t.shape, t.dtype.name) == key):
            return slot_group[s]
    return None
