"""Buffer assignment: which steps may write into a buffer kept across runs, and which share one.

A step whose kernel can write into ``out`` gets a buffer *group*, shared with a later step of the same static shape
and dtype once its value (and every value that may alias it) is dead. Fetched values never get one: the caller owns
them. Kernels keep no input after the call (registry.py); ``shape_only_inputs`` neither keep a value alive nor alias it.
"""

from __future__ import annotations

from engine.passes.ir import PlanIR


def _data_inputs(node):
    if node.members:  # a fused elementwise node reads every operand's values
        return node.inputs
    return [node.inputs[k] for k in node.op_def.data_inputs(len(node.inputs))]


def assign_buffer_groups(ir: PlanIR) -> tuple[dict, int]:
    """{node id: group index} and the number of groups."""
    roots: dict[int, frozenset] = {}  # slot -> the buffered slots its value may alias
    last_use: dict[int, int] = {}
    escaping: set = set()
    for i, node in enumerate(ir.nodes):
        reached = frozenset().union(*(roots.get(s, frozenset()) for s in _data_inputs(node)))
        for r in reached:
            last_use[r] = i
        if node.output >= 0:
            roots[node.output] = frozenset([node.output]) if node.out_kernel else reached
            last_use.setdefault(node.output, i)
        for s in node.also:  # a fused row sum: may be the value itself when there is one row to sum
            roots[s] = roots[node.output]
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
    """The group of an input buffer (same shape and dtype) whose last reader is this node, if any. Safe for fused
    elementwise kernels only, which read element ``i`` of every operand before writing element ``i`` of the output,
    and only where no other operand is a view of that buffer (a row of it is read at other positions)."""
    for s in node.inputs:
        t = ir.slot_tensors[s]
        if (s in slot_group and last_use.get(s) == i and roots.get(s) == frozenset([s])
                and (t.shape, t.dtype.name) == key
                and not any(s in roots.get(o, ()) for o in node.inputs if o != s)):
            return slot_group[s]
    return None
