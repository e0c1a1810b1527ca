"""Dead-node pruning (after CSE and folding made some dead): a node stays when it writes state, is fetched as an op,
is a control input of a kept node, or computes a slot a kept node or a fetch reads.
"""

from __future__ import annotations

from engine.passes.ir import PlanIR


def prune(ir: PlanIR) -> PlanIR:
    live_slots = set(ir.fetch_slots)
    live_ids = set(ir.fetch_ops)
    kept = []
    for node in reversed(ir.nodes):
        if node.id in live_ids or node.writes_state or live_slots.intersection((node.output, *node.also)):
            kept.append(node)
            live_slots.update(node.inputs)
            live_ids.update(node.controls)
    kept.reverse()
    ir.nodes = kept
    return ir
