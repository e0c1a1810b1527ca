"""Narrowing: a product of which only slices are read computes just the part they read.

A gradient ``dX = dY @ W.T`` of a concatenation's ``X`` is read only by the slices of the parts that need a gradient
(``ConcatSlice``); the slices of parts without one (a placeholder's features) are pruned, so their columns were
computed for nothing. A node whose OpDef has ``narrow`` and whose every reader has ``slices`` (each reading it as
input 0 only) computes the span ``[start, stop)`` those readers cover along their one axis, and each reader slices
that narrower value at its offset within the span: ``dX[:, cols] = dY @ W[cols, :].T``. Not for the reference backend
(its kernels are the references), nor for a product constant folding has computed already.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from engine.passes.ir import PlanIR

NarrowedSlot = namedtuple("NarrowedSlot", "name dtype shape")
"""The static facts of a narrowed value, in ``PlanIR.slot_tensors`` (liveness sizes its buffer by them)."""


def narrow_products(ir: PlanIR) -> PlanIR:
    users = ir.consumers()
    for node in ir.nodes:
        narrow = node.op_def.narrow
        if (narrow is None or node.members or node.also or node.const_value is not None or node.output < 0
                or node.output in ir.fetch_slots):
            continue  # a folded product (a Const node keeping its op) is computed already, and has no inputs
        readers = users.get(node.output, [])
        spans = [_span(r, node.output) for r in readers]
        if not readers or None in spans or len({axis for axis, _, _ in spans}) != 1:
            continue
        axis, start, stop = spans[0][0], min(s for _, s, _ in spans), max(s for _, _, s in spans)
        t = ir.slot_tensors[node.output]
        if t.shape is None or len(t.shape) <= axis or t.shape[axis] is None or stop - start >= t.shape[axis]:
            continue
        shape = tuple(stop - start if k == axis else d for k, d in enumerate(t.shape))
        ir.slot_tensors[node.output] = NarrowedSlot(f"{t.name}[{start}:{stop} of axis {axis}]", t.dtype, shape)
        node.make_kernel = lambda ctx, f=narrow, op=node.op, a=axis, s=start, e=stop: f(op, a, s, e)
        node.out_kernel = True
        for r, (_, s, e) in zip(readers, spans):
            r.make_kernel = _slicer(axis, s - start, e - start)
            r.out_kernel = False
    return ir


def _span(reader, slot):
    """(axis, start, stop) of ``slot`` that ``reader`` reads, or None where it reads it otherwise (or all of it)."""
    slices = reader.op_def.slices
    if slices is None or reader.members or reader.inputs[0] != slot or slot in reader.inputs[1:]:
        return None
    return slices(reader.op)


def _slicer(axis, start, stop):
    """What a ``slices`` op computes, at its offset within the narrowed value (its other inputs give shapes only)."""
    part = (slice(None),) * axis + (slice(start, stop),)
    return lambda ctx: (lambda x, *shape_only: np.asarray(x[part], order="C"))
