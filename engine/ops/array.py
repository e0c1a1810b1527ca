"""Array ops: constants, placeholders, shape manipulation, gather, where, cast, gradient helpers."""

from __future__ import annotations

import math
import operator

import numpy as np

from engine import dtypes, shapes
from engine.errors import InvalidArgumentError
from engine.graph import (IndexedSlices, constant_tensor, convert_to_tensor, graph_of, is_tensor_like,
                          python_value_to_array)
from engine.kernels import array as KA
from engine.kernels import reduce as R
from engine.ops._util import (FLOAT, NUMERIC, constructor, create, declared, elementwise, op_description, quiet,
                              same_dtype, sample, tensors_for_binary, unbroadcast)
from engine.registry import NUMPY_KERNEL, Example, register, simple_kernel

F32, F64, I32, I64 = np.float32, np.float64, np.int32, np.int64


def _float_examples(*cases):
    """(shapes, attrs) cases, each in float32 and float64."""
    def examples(rng):
        return [Example(tuple(sample(rng, s, t) for s in shape_set), attrs) for t in (F32, F64)
                for shape_set, attrs in cases]

    return examples


# the fields of an op whose output is its input itself (Identity, StopGradient, PlaceholderWithDefault)
_PASS_THROUGH = dict(kernel=simple_kernel(lambda x: x), reference=NUMPY_KERNEL, output_aliases="input",
                     emit=lambda c, op, ins: ins[0])


# --- sources -----------------------------------------------------------------------------------

register("Const", infer=lambda inputs, attrs: [(dtypes.as_dtype(attrs["value"].dtype), tuple(attrs["value"].shape))],
         kernel=lambda op, ctx: (lambda value=op.attrs["value"]: value), reference=NUMPY_KERNEL,
         examples=lambda rng: [Example((), {"value": sample(rng, (2, 3), t)}) for t in (F32, I64, np.bool_)],
         not_differentiable="a constant", output_aliases="storage",
         emit=lambda c, op, ins: c.param_const(op.attrs["value"]))


def _placeholder_kernel(op, ctx):
    def missing():
        raise InvalidArgumentError(
            f"You must feed a value for placeholder tensor '{op.name}' with dtype {op.attrs['dtype'].name}"
            f" and shape {op.attrs['shape']}", op.name)

    return missing


register("Placeholder", infer=declared, kernel=_placeholder_kernel,
         reference=NUMPY_KERNEL, examples=lambda rng: [Example((), {"dtype": dtypes.float32, "shape": (2,)})],
         not_differentiable="a source: the value fed", must_feed=True,
         emit=lambda c, op, ins: c.unsupported("the placeholder is needed but not fed"))


def _pwd_infer(inputs, attrs):
    shape = attrs["shape"]
    if not shapes.compatible(inputs[0].shape, shape):
        raise ValueError(f"default value shape {inputs[0].shape} does not fit shape {shape}")
    return [(inputs[0].dtype, shape)]


register("PlaceholderWithDefault", infer=_pwd_infer, examples=_float_examples((((2, 3),), {"shape": (None, 3)})),
         grad=lambda op, g: [g], **_PASS_THROUGH)


def constant(value, dtype=None, shape=None, name=None):
    """A tensor holding ``value`` (Python floats default to float32, ints to int32)."""
    dtype = None if dtype is None else dtypes.as_dtype(dtype)
    arr = python_value_to_array(value, dtype, what=f"constant {name or 'Const'}")
    if shape is not None:
        shape = shapes.as_shape(shape)  # (2.5,) was (2,)
        if arr.size == 1:
            arr = np.full(shape, arr.reshape(()), dtype=arr.dtype)
        elif arr.size == int(np.prod(shape)):
            arr = arr.reshape(shape)
        else:
            raise ValueError(f"constant {name or 'Const'}: {arr.size} values cannot have shape {shape}")
    return constant_tensor(arr, name or "Const")


def placeholder(dtype, shape=None, name=None):
    """A value fed at run time; ``None`` dims (or shape=None) accept any size."""
    return create("Placeholder", (), {"dtype": dtypes.as_dtype(dtype), "shape": shapes.as_shape(shape)},
                  name or "Placeholder")


def placeholder_with_default(input, shape, name=None):  # noqa: A002  (TensorFlow's name)
    """``input`` unless a value is fed (e.g. a training flag defaulting to False)."""
    return create("PlaceholderWithDefault", [convert_to_tensor(input)], {"shape": shapes.as_shape(shape)},
                  name or "PlaceholderWithDefault")


def zeros(shape, dtype=dtypes.float32, name=None):
    return constant(np.zeros(tuple(shape), dtypes.as_dtype(dtype).np), dtype, name=name or "zeros")


def ones(shape, dtype=dtypes.float32, name=None):
    return constant(np.ones(tuple(shape), dtypes.as_dtype(dtype).np), dtype, name=name or "ones")


def _like_infer(inputs, attrs):
    return [(inputs[0].dtype, inputs[0].shape)]


_like_examples = _float_examples((((2, 3),), {}), (((0, 2),), {}))
for _name, _fill in (("ZerosLike", np.zeros_like), ("OnesLike", np.ones_like)):
    register(_name, infer=_like_infer, kernel=simple_kernel(_fill), reference=NUMPY_KERNEL, examples=_like_examples,
             not_differentiable="constant: reads only its input's shape", shape_only_inputs=(0,))
zeros_like = constructor("ZerosLike", "zeros_like")
ones_like = constructor("OnesLike", "ones_like")


# --- identity-like ------------------------------------------------------------------------------

register("Identity", infer=_like_infer, examples=_like_examples, grad=lambda op, g: [g], sparse_grad=True,
         **_PASS_THROUGH)
register("StopGradient", infer=_like_infer, examples=_like_examples,
         not_differentiable="stops gradients: that is what it is for", **_PASS_THROUGH)
identity = constructor("Identity", "identity")
stop_gradient = constructor("StopGradient", "stop_gradient", "``x`` in the forward pass; no gradient flows through it.")


# --- shapes ---------------------------------------------------------------------------------------


register("Shape", infer=lambda inputs, attrs: [(dtypes.int64, (inputs[0].ndim,))],
         kernel=simple_kernel(lambda x: np.array(x.shape, dtype=np.int64)), reference=NUMPY_KERNEL,
         examples=_like_examples, not_differentiable="an int64 shape: reads no values", shape_only_inputs=(0,))
shape = constructor("Shape", "shape", "The run-time shape of ``x`` as an int64 vector.")


def _reshape_static(in_shape, target):
    known = [d for d in target if d != -1]
    if target.count(-1) > 1:
        raise ValueError(f"reshape target {target} has more than one -1")
    # a -1 beside a 0: any size fits the -1 of an empty array, so NumPy refuses the target at every input size (and
    # TensorFlow), while the compiled plan's Numba reshape gave (0, 0) for an empty batch: refused here, once
    if -1 in target and 0 in known:
        raise ValueError(f"reshape target {target} has a -1 beside a 0: no size can be inferred for the -1")
    if in_shape is not None and shapes.is_fully_defined(in_shape):
        total = int(np.prod(in_shape, dtype=np.int64))
        prod = int(np.prod(known, dtype=np.int64))
        if -1 in target:
            if prod == 0 or total % prod:
                raise ValueError(f"cannot reshape {in_shape} into {target}")
            return tuple(total // prod if d == -1 else d for d in target)
        if prod != total:
            raise ValueError(f"cannot reshape {in_shape} ({total} elements) into {target} ({prod} elements)")
    return tuple(None if d == -1 else d for d in target)


def _reshape_emit(c, op, ins):
    if op.inputs[0].ndim is None:
        c.unsupported("the input's rank is unknown")
    target = c.tuple_of(operator.index(d) for d in op.attrs["shape"])  # numbers only: this text is code
    return f"np.ascontiguousarray({ins[0]}).reshape({target})"


register("Reshape", infer=lambda inputs, attrs: [(inputs[0].dtype, _reshape_static(inputs[0].shape, attrs["shape"]))],
         kernel=lambda op, ctx: (lambda x, target=op.attrs["shape"]: x.reshape(target)), reference=NUMPY_KERNEL,
         examples=_float_examples((((2, 6),), {"shape": (3, -1)}), (((2, 3),), {"shape": (6,)})),
         grad=lambda op, g: [reshape_like(g, op.inputs[0])], output_aliases="input", emit=_reshape_emit)


def reshape(x, shape, name=None):  # noqa: A002  (TensorFlow's name)
    """NumPy-style reshape with at most one -1, never beside a 0 (the result shares memory with ``x``)."""
    target = tuple(operator.index(d) for d in shape)  # a whole number each: int() made 2.5 a 2
    if any(d < -1 for d in target):
        raise ValueError(f"reshape target {target} has a negative dimension")
    return create("Reshape", [convert_to_tensor(x)], {"shape": target}, name)


register("ReshapeLike", infer=lambda inputs, attrs: [(inputs[0].dtype, inputs[1].shape)],
         kernel=simple_kernel(lambda g, like: g.reshape(like.shape)), reference=NUMPY_KERNEL,
         examples=_float_examples((((2, 6), (3, 4)), {})), grad=lambda op, g: [reshape_like(g, op.inputs[0]), None],
         output_aliases="input", shape_only_inputs=(1,))


def reshape_like(x, like, name=None):
    return create("ReshapeLike", [x, like], name=name)


def _expand_infer(inputs, attrs):
    s = inputs[0].shape
    if s is None:
        return [(inputs[0].dtype, None)]
    axis = attrs["axis"]
    if not -len(s) - 1 <= axis <= len(s):
        raise ValueError(f"axis {axis} out of range for rank {len(s)}")
    axis = axis % (len(s) + 1)
    return [(inputs[0].dtype, s[:axis] + (1,) + s[axis:])]


register("ExpandDims", infer=_expand_infer, kernel=lambda op, ctx: (lambda x: np.expand_dims(x, op.attrs["axis"])),
         reference=NUMPY_KERNEL, examples=_float_examples((((2, 3),), {"axis": 1}), (((2, 3),), {"axis": -1})),
         grad=lambda op, g: [reshape_like(g, op.inputs[0])], output_aliases="input")


def expand_dims(x, axis, name=None):
    return create("ExpandDims", [convert_to_tensor(x)], {"axis": operator.index(axis)}, name)


def _squeeze_axes(s, axis):
    """The axes a Squeeze removes: ``axis``, else the statically known 1s (None: rank unknown, every runtime 1)."""
    if axis is not None:
        return shapes.normalize_axes(axis, len(s))
    return None if s is None else tuple(i for i, d in enumerate(s) if d == 1)


def _squeeze_infer(inputs, attrs):
    s = inputs[0].shape
    if s is None:
        if attrs["axis"] is None:
            return [(inputs[0].dtype, None)]
        raise ValueError("squeeze with axis needs a known rank")
    axes = _squeeze_axes(s, attrs["axis"])
    for a in axes:
        if s[a] not in (1, None):
            raise ValueError(f"cannot squeeze axis {a} of size {s[a]}")
    return [(inputs[0].dtype, tuple(d for i, d in enumerate(s) if i not in axes))]


def _squeeze_kernel(op, ctx):
    axes = _squeeze_axes(op.inputs[0].shape, op.attrs["axis"])  # exactly the axes shape inference removed
    return lambda x: np.squeeze(x, axis=axes)


register("Squeeze", infer=_squeeze_infer, kernel=_squeeze_kernel,
         reference=NUMPY_KERNEL, examples=_float_examples((((2, 1, 3),), {"axis": None}), (((1, 3),), {"axis": (0,)})),
         grad=lambda op, g: [reshape_like(g, op.inputs[0])], output_aliases="input")


def squeeze(x, axis=None, name=None):
    """``x`` without the size-1 dimensions ``axis``, by default those of static size 1: a batch of one stays a batch,
    so the static shape holds for every run (only an unknown rank removes every dimension that is 1 at run time)."""
    if axis is not None:
        axis = tuple(map(operator.index, axis if isinstance(axis, (list, tuple)) else (axis,)))
    return create("Squeeze", [convert_to_tensor(x)], {"axis": axis}, name)


def _transpose_infer(inputs, attrs):
    s = inputs[0].shape
    perm = attrs["perm"]
    if perm is not None and sorted(perm) != list(range(len(perm))):  # (-1, 0): whatever the rank, NumPy's kernel
        raise ValueError(f"perm {perm} is not a permutation of its {len(perm)} axes")  # alone took it
    if s is None:
        return [(inputs[0].dtype, None if perm is None else (None,) * len(perm))]
    perm = tuple(reversed(range(len(s)))) if perm is None else perm
    if len(perm) != len(s):
        raise ValueError(f"perm {perm} is not a permutation of the {len(s)} axes")
    return [(inputs[0].dtype, tuple(s[p] for p in perm))]


register("Transpose", infer=_transpose_infer,  # its gradient: the inverse permutation, argsort(perm)
         kernel=lambda op, ctx: (lambda x: np.array(np.transpose(x, op.attrs["perm"]), order="C")),  # always a copy
         reference=NUMPY_KERNEL, examples=_float_examples((((2, 3),), {"perm": None}),
                                                          (((2, 3, 4),), {"perm": (1, 0, 2)}),
                                                          (((1, 3),), {"perm": None})),  # NumPy: a view, C-ordered
         grad=lambda op, g: [transpose(g, None if op.attrs["perm"] is None else np.argsort(op.attrs["perm"]))])


def transpose(x, perm=None, name=None):
    perm = None if perm is None else tuple(map(operator.index, perm))
    return create("Transpose", [convert_to_tensor(x)], {"perm": perm}, name)


def _concat_infer(inputs, attrs):
    d = same_dtype(inputs)
    ranks = {len(t.shape) for t in inputs if t.shape is not None}
    if len(ranks) > 1:
        raise ValueError(f"inputs have different ranks {sorted(ranks)}")
    if not ranks:
        return [(d, None)]
    rank = ranks.pop()
    (axis,) = shapes.normalize_axes(attrs["axis"], rank)
    out = []
    for i in range(rank):
        dims = [t.shape[i] for t in inputs if t.shape is not None]
        if i == axis:
            out.append(None if any(x is None for x in dims) or len(dims) < len(inputs) else sum(dims))
        else:
            known = {x for x in dims if x is not None}
            if len(known) > 1:
                raise ValueError(f"dimension {i} differs between inputs: {sorted(known)}")
            out.append(known.pop() if known else None)
    return [(d, tuple(out))]


CONCAT_ROWS_MIN = 4096  # rows from which a row-by-row Numba copy beats np.concatenate along axis 1
# (10,000 x [8, 32, 4, 20] float32 on the 2-core Xeon: ~870 vs ~1,450 us; at 1,024 rows no clear winner)


def _concat_out_kernel(op, ctx):
    axis = op.attrs["axis"]

    def concat_into(out, *xs):
        if not xs or any(x.ndim != xs[0].ndim for x in xs) or xs[0].ndim == 0:
            return np.concatenate(xs, axis=axis)
        ax = axis % xs[0].ndim
        shape = list(xs[0].shape)
        shape[ax] = sum(x.shape[ax] for x in xs)
        if out is None or out.shape != tuple(shape) or any(x.dtype != out.dtype for x in xs):
            return np.concatenate(xs, axis=axis)
        if (ax == 1 and out.ndim == 2 and out.shape[0] >= CONCAT_ROWS_MIN
                and all(x.shape[0] == out.shape[0] and x.flags.c_contiguous for x in xs)):
            KA.concat_rows_into(out, tuple(xs))
            return out
        return np.concatenate(xs, axis=axis, out=out)

    return concat_into


def _concat_emit(c, op, ins):
    rank = op.outputs[0].ndim
    if rank is None or any(x.ndim != rank for x in op.inputs):
        c.unsupported("inputs need one known rank")
    return f"np.concatenate({c.tuple_of(ins)}, axis={operator.index(op.attrs['axis']) % rank})"


register("ConcatV2", infer=_concat_infer,
         kernel=lambda op, ctx: (lambda *xs: np.concatenate(xs, axis=op.attrs["axis"])), reference=NUMPY_KERNEL,
         examples=_float_examples((((2, 3), (2, 1)), {"axis": 1}), (((1, 3), (2, 3), (0, 3)), {"axis": 0})),
         grad=lambda op, g: [create("ConcatSlice", [g, *op.inputs], {"axis": op.attrs["axis"], "index": i})
                             for i in range(len(op.inputs))],
         out_kernel=_concat_out_kernel, emit=_concat_emit)


def _concat_slice_kernel(op, ctx):
    axis, index = op.attrs["axis"], op.attrs["index"]

    def piece(g, *values):
        ax = axis % g.ndim
        start = sum(v.shape[ax] for v in values[:index])
        sl = [slice(None)] * g.ndim
        sl[ax] = slice(start, start + values[index].shape[ax])
        return np.asarray(g[tuple(sl)], order="C")

    return piece


def _concat_slice_grad(op, g):
    """The slice's gradient: ``g`` in its place, zeros elsewhere (inputs 1.. give shapes only)."""
    g_full, *values = op.inputs
    index = op.attrs["index"]
    parts = [g if k == index else zeros_like(v) for k, v in enumerate(values)]
    return [create("ConcatV2", parts, {"axis": op.attrs["axis"]})] + [None] * len(values)


def _concat_slice_span(op):
    """(axis, start, stop) of input 0 it copies, where the parts up to its own have known sizes along the axis."""
    values = op.inputs[1:]
    if values[0].shape is None:
        return None
    (axis,) = shapes.normalize_axes(op.attrs["axis"], len(values[0].shape))
    sizes = [v.shape[axis] if v.shape is not None else None for v in values[:op.attrs["index"] + 1]]
    if None in sizes:
        return None
    return axis, sum(sizes[:-1]), sum(sizes)


def _concat_slice_reference(op, ctx):
    axis, index = op.attrs["axis"], op.attrs["index"]
    return lambda g, *values: np.split(g, np.cumsum([v.shape[axis] for v in values])[:-1], axis=axis)[index].copy()


register("ConcatSlice", infer=lambda inputs, attrs: [(inputs[0].dtype, inputs[1 + attrs["index"]].shape)],
         kernel=_concat_slice_kernel, reference=_concat_slice_reference,
         examples=_float_examples((((2, 5), (2, 2), (2, 3)), {"axis": 1, "index": 1}),
                                  (((5, 2), (2, 2), (3, 2)), {"axis": 0, "index": 0})),
         grad=_concat_slice_grad, shape_only_inputs=slice(1, None), output_aliases="input", slices=_concat_slice_span)


def concat(values, axis, name=None):
    graph = graph_of(*values)
    values = [convert_to_tensor(v, graph=graph) for v in values]
    if not values:
        raise ValueError("concat needs at least one tensor")
    return create("ConcatV2", values, {"axis": operator.index(axis)}, name)


# --- gather / where / cast -----------------------------------------------------------------------------


def _gather_infer(inputs, attrs):
    params, indices = inputs
    if not indices.dtype.is_integer:
        raise TypeError(f"indices {indices.name} must be int32/int64, got {indices.dtype.name}")
    if params.shape is not None and len(params.shape) == 0:
        raise ValueError("params must have rank >= 1")
    if params.shape is None or indices.shape is None:
        return [(params.dtype, None)]
    return [(params.dtype, tuple(indices.shape) + tuple(params.shape[1:]))]


def _gather_grad(op, g):
    params, indices = op.inputs
    values = create("GatherGradValues", [g, indices])
    return [IndexedSlices(values, reshape(indices, (-1,)), shape(params), params.shape), None]


def _gather_emit(c, op, ins):
    params, idx = op.inputs
    if params.ndim is None or idx.ndim is None or params.ndim < 1:
        c.unsupported("params and indices need a known rank")
    shape = [f"{ins[1]}.shape[{d}]" for d in range(idx.ndim)] + [f"{ins[0]}.shape[{d}]" for d in range(1, params.ndim)]
    c.helper("_gather_rows", "\n".join([
        "def _gather_rows(params, idx):", "    rows = params.shape[0]",
        "    width = params.size // rows if rows else 0", "    p2 = params.reshape((rows, width))",
        "    ii = idx.reshape(idx.size)", "    out = np.empty((ii.size, width), params.dtype)",
        "    for r in range(ii.size):", "        j = ii[r]", "        if j < 0 or j >= rows:",
        "            raise ValueError('gather index out of range')", "        for c in range(width):",
        "            out[r, c] = p2[j, c]", "    return out"]))
    c.check(f"{ins[0]}.shape[0] == 0", "empty params")
    return f"_gather_rows({ins[0]}, {ins[1]}).reshape({c.tuple_of(shape)})"  # () for a vector's 0-d gather


def _gather_examples(rng):
    return [Example((sample(rng, (5, 3), t), np.array(i, dtype=it)))
            for t in (F32, F64) for it in (I32, I64) for i in ([4, 0, 4, 2], [[1, 2], [3, 3]], [], [-1], [5])] + [
        Example((np.zeros((0, 3), t), np.array([], I64))) for t in (F32, F64)] + [
        Example((sample(rng, (5,), t), np.array(i, I64))) for t in (F32, F64) for i in (3, [4, 0])]  # a vector's rows:
    # a 0-d index gives a 0-d output (the compiled plan's reshape(()))


def _gather_reference(params, indices):
    KA.check_rows(indices, params.shape[0])
    return np.take(params, indices, axis=0)


register("GatherV2", infer=_gather_infer, kernel=simple_kernel(KA.gather),
         reference=simple_kernel(_gather_reference), examples=_gather_examples,
         grad=_gather_grad, out_kernel=simple_kernel(lambda out, params, indices: KA.gather(params, indices, out)),
         emit=_gather_emit)


def _gather_grad_values_infer(inputs, attrs):
    g, idx = inputs
    if g.shape is None or idx.shape is None:
        return [(g.dtype, None)]
    n = None if not shapes.is_fully_defined(idx.shape) else int(np.prod(idx.shape, dtype=np.int64))
    return [(g.dtype, (n,) + tuple(g.shape[len(idx.shape):]))]


register("GatherGradValues", infer=_gather_grad_values_infer,
         kernel=simple_kernel(lambda g, idx: g.reshape((idx.size,) + g.shape[idx.ndim:])), reference=NUMPY_KERNEL,
         examples=lambda rng: [Example((sample(rng, (2, 2, 3), t), np.zeros((2, 2), I64))) for t in (F32, F64)],
         grad=lambda op, g: [reshape_like(g, op.inputs[0]), None], output_aliases="input", shape_only_inputs=(1,))


def gather(params, indices, name=None):
    """Rows ``params[indices]`` (axis 0); its gradient is sparse (IndexedSlices)."""
    graph = graph_of(params, indices)
    params = convert_to_tensor(params, graph=graph)
    indices = convert_to_tensor(indices, dtype=None if is_tensor_like(indices) else dtypes.int64, graph=graph)
    return create("GatherV2", [params, indices], name=name)


def _select(c, x, y):
    return x if c else y


def _where_infer(inputs, attrs):
    c, x, y = inputs
    if not c.dtype.is_bool:
        raise TypeError(f"condition {c.name} must be bool, got {c.dtype.name}")
    d = same_dtype([x, y])
    return [(d, shapes.broadcast(shapes.broadcast(c.shape, x.shape), y.shape))]


def select_grads(g, mask, x, y):
    """The gradients of ``where(mask, x, y)`` for ``x`` and ``y``: ``g`` where each was chosen, else 0."""
    zeros = zeros_like(g)
    return [unbroadcast(where(mask, g, zeros), x), unbroadcast(where(mask, zeros, g), y)]


elementwise("Select", _select, np.where, NUMERIC, grad=lambda op, g: [None, *select_grads(g, *op.inputs)],
            infer=_where_infer, operand_dtypes=lambda d: (np.bool_, d, d))


def where(condition, x, y, name=None):
    """Elementwise ``x if condition else y`` (NumPy broadcasting over all three)."""
    graph = graph_of(condition, x, y)
    op = op_description("Select", name)
    x, y = tensors_for_binary(x, y, graph, op=op, first=1)
    return create("Select", [convert_to_tensor(condition, dtypes.bool_, graph=graph, what=f"{op}: input 0"), x, y],
                  name=name)


def _cast_grad(op, g):
    x = op.inputs[0]
    if x.dtype.is_floating and op.outputs[0].dtype.is_floating:
        return [cast(g, x.dtype)]
    return [None]


def _cast_examples(rng):
    pairs = [(F32, dtypes.int32), (I32, dtypes.float64), (F64, dtypes.float32), (np.bool_, dtypes.float32),
             (F32, dtypes.float64), (F64, dtypes.float64)]
    return [Example((sample(rng, (2, 3), t),), {"dtype": d}) for t, d in pairs]


register("Cast", infer=lambda inputs, attrs: [(attrs["dtype"], inputs[0].shape)],
         kernel=lambda op, ctx: quiet(lambda x, _d=op.attrs["dtype"].np: x.astype(_d)), reference=NUMPY_KERNEL,
         examples=_cast_examples, grad=_cast_grad,
         emit=lambda c, op, ins: f"{ins[0]}.astype(np.{op.outputs[0].dtype.name})")


def cast(x, dtype, name=None):
    """Explicit dtype conversion (float -> int truncates toward zero, like NumPy)."""
    x = convert_to_tensor(x)
    dtype = dtypes.as_dtype(dtype)
    if x.dtype == dtype:
        return x
    return create("Cast", [x], {"dtype": dtype}, name)


# --- gradient helpers ---------------------------------------------------------------------------------


@quiet
def _sum_to_shape_reference(g, like):
    lead = g.ndim - like.ndim
    stretched = tuple(lead + i for i, d in enumerate(like.shape) if d == 1 and g.shape[lead + i] != 1)
    axes = tuple(range(lead)) + stretched
    if not axes:  # nothing to sum: g itself, as the kernel (np.sum over no axes adds +0.0: -0.0 became 0.0)
        return g.copy()
    # in the kernels' accumulator (float64, int64), then g's dtype: a float32 one overflowed where the kernel does not
    return np.sum(g, axis=axes, dtype=R.accumulator(g.dtype)).astype(g.dtype).reshape(like.shape)


register("SumToShape", infer=lambda inputs, attrs: [(inputs[0].dtype, inputs[1].shape)],
         kernel=simple_kernel(lambda g, like: R.sum_to_shape(g, like.shape)),
         reference=simple_kernel(_sum_to_shape_reference),
         examples=lambda rng: _float_examples((((3, 4), (4,)), {}), (((3, 4), (3, 1)), {}), (((2, 3, 4), (1, 4)), {}),
                                              (((3, 4), (3, 4)), {}))(rng) + [  # overflows a float32 accumulator:
             Example((np.array([[3e38, 3e38], [3e38, 3e38], [-3e38, 0.0]], F32), np.zeros(2, F32)))],
         grad=lambda op, g: [create("Add", [zeros_like(op.inputs[0]), g]), None], shape_only_inputs=(1,),
         sums_broadcast=True, output_aliases="input")  # input 0 itself when there is nothing to sum


def _broadcast_reduced_kernel(op, ctx):
    axis, mean = op.attrs["axis"], op.attrs["mean"]

    layouts = {}  # x's shape -> (the kept shape, the count a mean divides by): worked out once per shape

    def expand(g, x):
        found = layouts.get(x.shape)
        if found is None:
            axes = shapes.normalize_axes(axis, x.ndim)
            found = (tuple(1 if i in axes else d for i, d in enumerate(x.shape)),
                     max(math.prod(x.shape[a] for a in axes), 1))
            if len(layouts) < 64:
                layouts[x.shape] = found
        kept, count = found
        g = g.reshape(kept)
        if mean:
            g = g / count
        out = np.empty(x.shape, g.dtype)
        out[...] = g
        return out

    return expand


def _broadcast_reduced_grad(op, g):
    a = op.attrs
    reduced = create("Mean" if a["mean"] else "Sum", [g], {"axis": a["axis"], "keepdims": True})
    return [reshape_like(reduced, op.inputs[0]), None]


def _broadcast_reduced_reference(op, ctx):
    axis, keepdims, mean = op.attrs["axis"], op.attrs["keepdims"], op.attrs["mean"]

    def expand(g, x):
        axes = tuple(range(x.ndim)) if axis is None else tuple(a % x.ndim for a in np.atleast_1d(axis))
        g = g if keepdims else np.expand_dims(g, axes)
        return np.broadcast_to(g / max(math.prod(x.shape[a] for a in axes), 1) if mean else g, x.shape).copy()

    return expand


def _broadcast_reduced_infer(inputs, attrs):
    """g's dtype; a mean's g must be float (as Mean's input): g / count of an int g has no int value."""
    return [(same_dtype(inputs[:1], FLOAT if attrs["mean"] else None), inputs[1].shape)]


register("BroadcastReduced", infer=_broadcast_reduced_infer,
         kernel=_broadcast_reduced_kernel, reference=_broadcast_reduced_reference,
         examples=_float_examples((((4,), (3, 4)), {"axis": 0, "keepdims": False, "mean": False}),
                                  (((3, 1), (3, 4)), {"axis": 1, "keepdims": True, "mean": True}),
                                  (((), (2, 3)), {"axis": None, "keepdims": False, "mean": True})),
         grad=_broadcast_reduced_grad, shape_only_inputs=(1,))


def broadcast_reduced(g, x, axis, keepdims, mean):
    """Spread a reduction's gradient back over the reduced axes of ``x`` (divided by the count for mean)."""
    return create("BroadcastReduced", [g, x], {"axis": axis, "keepdims": keepdims, "mean": mean})


def _scatter_reference(values, indices, dense_shape):
    out = np.zeros(tuple(int(d) for d in dense_shape), values.dtype)
    np.add.at(out, KA.check_rows(indices, out.shape[0]), values.reshape((indices.size,) + out.shape[1:]))
    return out


def _scatter_examples(rng):
    return [Example((sample(rng, (len(i), 3), t), np.array(i, I64), np.array([5, 3])), {"shape": None})
            for t in (F32, F64) for i in ([1, 0, 1, 4], [], [-1])]


register("ScatterAddDense", infer=lambda inputs, attrs: [(inputs[0].dtype, attrs["shape"])],
         kernel=simple_kernel(KA.scatter_add_dense), reference=simple_kernel(_scatter_reference),
         examples=_scatter_examples,
         grad=lambda op, g: [reshape_like(create("GatherV2", [g, op.inputs[1]]), op.inputs[0]), None, None])


def densify(slices: IndexedSlices, static_shape=None):
    """The dense tensor an IndexedSlices stands for."""
    return create("ScatterAddDense", [slices.values, slices.indices, slices.dense_shape], {"shape": static_shape})
