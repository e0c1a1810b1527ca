"""A small IR of a pruned execution plan: what graph rewrites transform, never the user's Graph.

A plan is a list of :class:`Node` in execution order, each computing one value (an integer slot) from input slots, or
none; a node may also write further slots (``also``): an op's outputs after its first, a fused node's row sums (a bias
gradient). A node keeps the
Operation it came from (names in errors, its kernel factory), but its inputs are slots: rewiring is just integers.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

@dataclass
class Node:
    """One step: ``make_kernel(ctx)`` returns the callable run on the input slots' values."""

    op: object  # the Operation it came from (for a fused node: the last op of the chain)
    type: str
    inputs: list
    output: int  # slot, or -1 for ops without outputs
    make_kernel: Callable
    controls: frozenset = frozenset()  # ids of nodes that must run before this one
    out_kernel: bool = False  # kernel signature is f(out_or_None, *inputs) -> array
    const_value: Optional[np.ndarray] = None  # set for folded constants
    members: tuple = ()  # ops a fused node stands for
    also: tuple = ()  # further slots it writes (outputs after the first, a fused row sum): its kernel returns a tuple
    id: int = field(default_factory=lambda: next(_ids))

    @property
    def op_def(self):
        """The OpDef whose flags passes read (for a fused node: its last op's, an elementwise op)."""
        return self.op.op_def

    @property
    def pure(self) -> bool:
        """Neither stateful nor random: passes may merge it with its like or compute it at plan time."""
        return not (self.op_def.stateful or self.op_def.random)

    @property
    def writes_state(self) -> bool:
        """Passes never move pure work across it: a variable read is by reference (engine/ops/state.py)."""
        return self.op_def.writes_state and not self.members

    @property
    def label(self) -> str:
        if self.members:
            return f"fused op '{self.op.name}' ({' -> '.join(m.type for m in self.members)})"
        return f"{self.type} op '{self.op.name}'"


_ids = itertools.count(1)


@dataclass
class PlanIR:
    """Nodes in execution order, the fed slots, and the slots/ops the caller fetches."""

    nodes: list
    feed_slots: list
    fetch_slots: set  # slots whose values leave the run
    fetch_ops: set  # node ids fetched as operations (must run)
    n_slots: int
    slot_tensors: dict  # slot -> original Tensor (shapes, dtypes, names)

    def consumers(self) -> dict:
        """slot -> list of nodes reading it (a node reading a slot twice appears once)."""
        users: dict = {}
        for n in self.nodes:
            for s in set(n.inputs):
                users.setdefault(s, []).append(n)
        return users

    def control_targets(self) -> set:
        return {c for n in self.nodes for c in n.controls}


def node_from_op(op, ins, out, controls, reuse_buffers: bool = True, reference: bool = False, also=()) -> Node:
    """The node of one graph op: its kernel (or reference), its ``out_kernel`` where buffers are reused; ``also``:
    the slots of its outputs after the first (its kernel returns them all, a tuple)."""
    op_def = op.op_def
    out_kernel = not reference and op_def.out_kernel is not None and reuse_buffers and out >= 0 and not also
    factory = op_def.reference_kernel if reference else op_def.out_kernel if out_kernel else op_def.kernel
    return Node(op, op.type, list(ins), out, lambda ctx: factory(op, ctx), frozenset(controls), out_kernel=out_kernel,
                also=also)
