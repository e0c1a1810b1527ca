"""Reverse-mode differentiation by extending the graph (whitepaper section 4.1).

``gradients(ys, xs)`` visits the ops between them last created first (an op's consumers are created after it: its
gradient is complete by then), summing contributions by one ``add_n``; sparse ones (``gather``'s) stay IndexedSlices
while all are sparse, so optimizers update only the touched rows.
"""

from __future__ import annotations

from engine import dtypes, shapes
from engine.graph import IndexedSlices, Tensor, convert_to_tensor, reached
from engine.ops import array as A
from engine.ops import math as M


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _aggregate(grads):
    grads = [g for g in grads if g is not None]
    if not grads:
        return None
    if len(grads) == 1:
        return grads[0]
    if all(isinstance(g, IndexedSlices) for g in grads):
        indices = [g.indices for g in grads]  # int32 and int64 gathers of the same params: int64
        if len({i.dtype for i in indices}) > 1:
            indices = [A.cast(i, dtypes.int64) for i in indices]
        return IndexedSlices(A.concat([g.values for g in grads], 0), A.concat(indices, 0),
                             grads[0].dense_shape, grads[0].static_shape)
    return M.add_n([A.densify(g, g.static_shape) if isinstance(g, IndexedSlices) else g for g in grads])


def _check_static(op, k, x, g):
    """A gradient has its input's dtype and (where both are known) shape: a gradient function that forgets
    to sum a broadcast input back (``unbroadcast``) fails here, when the graph is built, not at run time."""
    g_shape = g.static_shape if isinstance(g, IndexedSlices) else g.shape
    try:
        shapes.merge(g_shape, x.shape)
    except ValueError:
        raise ValueError(f"gradient of {op.type} op {op.name!r} for input {k} has shape {g_shape}; the input "
                         f"{x.name} has shape {x.shape}") from None
    if g.dtype != x.dtype:
        raise TypeError(f"gradient of {op.type} op {op.name!r} for input {k} has dtype {g.dtype.name}; the input "
                        f"{x.name} has dtype {x.dtype.name}")


def gradients(ys, xs, grad_ys=None, name="gradients"):
    """Symbolic d(sum of ys, each weighted by ``grad_ys``, default ones)/d(x) for each of ``xs``: None for an
    unconnected x, an IndexedSlices for a gather's parameters."""
    ys = [convert_to_tensor(y) for y in _as_list(ys)]
    if not ys:
        raise ValueError("gradients: ys is empty; give at least one tensor to differentiate")
    xs = [convert_to_tensor(x) for x in _as_list(xs)]
    grad_ys = [None] * len(ys) if grad_ys is None else _as_list(grad_ys)
    if len(grad_ys) != len(ys):
        raise ValueError(f"{len(grad_ys)} grad_ys for {len(ys)} ys")
    graph = ys[0].graph
    for t in ys + xs:
        if t.graph is not graph:
            raise ValueError(f"gradients: {t.name} is from another graph than {ys[0].name}")
    for y in ys:
        if not y.dtype.is_floating:
            raise TypeError(f"gradients: y {y.name} has dtype {y.dtype.name}; only float tensors can be differentiated")

    # Ops that ys depend on (through data edges) ...
    to_y = reached([y.op for y in ys], lambda op: [t.op for t in op.inputs])
    # ... where a variable's other reads (read_value(): an op whose OpDef.variable_read names it, no data edge to
    # it) are that variable too, as TensorFlow's read_value() (an identity) is: its gradient sums theirs
    read_of: dict[str, list] = {}
    for op in sorted(to_y, key=lambda o: o.id):
        if op.op_def.variable_read is not None and op.op_def.variable_read(op) != op.name:
            read_of.setdefault(op.op_def.variable_read(op), []).append(op.outputs[0])
    reads = {x: read_of.get(x.op.name, []) for x in xs
             if x.op.op_def.variable_read is not None and x.op.op_def.variable_read(x.op) == x.op.name}
    extended = xs + [r for x in reads for r in reads[x]]
    # ... restricted to those reachable from xs: the ops gradients must flow through.
    consumers: dict[Tensor, list] = {}
    for op in to_y:
        for t in op.inputs:
            consumers.setdefault(t, []).append(op)
    between = reached([c for x in extended for c in consumers.get(x, ())],
                       lambda op: [c for t in op.outputs for c in consumers.get(t, ())])

    pending: dict[Tensor, list] = {}
    with graph.name_scope(name):
        for y, gy in zip(ys, grad_ys):
            gy = A.ones_like(y) if gy is None else convert_to_tensor(gy, dtype=y.dtype, what=f"gradients: grad_ys "
                                                                                               f"for {y.name}")
            try:  # a weight per element of y: another shape failed later, blaming a gradient op, or was returned
                shapes.merge(gy.shape, y.shape)
            except ValueError:
                raise ValueError(f"gradients: grad_ys for {y.name} has shape {gy.shape}; {y.name} has shape "
                                 f"{y.shape}") from None
            pending.setdefault(y, []).append(gy)
        aggregated: dict[Tensor, object] = {}
        wanted = set(extended)
        for op in sorted(between, key=lambda o: o.id, reverse=True):
            out_grads = [_aggregate(pending.pop(t, [])) for t in op.outputs]
            aggregated.update(zip(op.outputs, out_grads))
            if all(g is None for g in out_grads):
                continue
            op_def = op.op_def
            if op_def.grad is None:
                if op_def.differentiable and any(t.dtype.is_floating for t in op.inputs):
                    raise LookupError(f"No gradient defined for op '{op.name}' of type {op.type}")
                continue
            with graph.name_scope(op.name.replace("/", "_") + "_grad"):
                if not op_def.sparse_grad:  # each output's: an op of several outputs gets a list of them
                    out_grads = [A.reshape_like(A.densify(g, g.static_shape), t) if isinstance(g, IndexedSlices)
                                 else g for g, t in zip(out_grads, op.outputs)]
                in_grads = op_def.grad(op, out_grads[0] if len(out_grads) == 1 else out_grads)
            if len(in_grads) != len(op.inputs):
                raise RuntimeError(f"gradient of {op.type} returned {len(in_grads)} values for {len(op.inputs)} inputs")
            for k, (t, g) in enumerate(zip(op.inputs, in_grads)):
                if g is None or not t.dtype.is_floating:
                    continue
                _check_static(op, k, t, g)
                if t.op in between or t in wanted:
                    pending.setdefault(t, []).append(g)
        for x in extended:  # an x no op consumes in between (a y itself): its pending gradients, once
            if x not in aggregated:
                aggregated[x] = _aggregate(pending.pop(x, []))
        for x, read in reads.items():
            if read:
                aggregated[x] = _aggregate([aggregated[x]] + [aggregated[r] for r in read])
    return [aggregated[x] for x in xs]
