"""Array ops: constants, placeholders, shape manipulation, gather, where, cast, gradient helpers."""

from __future__ import annotations

import numpy as np

from engine import dtypes, shapes
from engine.errors import InvalidArgumentError
from engine.graph import IndexedSlices, convert_to_tensor, python_value_to_array
from engine.kernels import array as KA
from engine.kernels import math as K
from engine.kernels import reduce as R
from engine.ops._util import create, same_dtype
from engine.registry import register, simple_kernel, unbroadcast

# --- sources -----------------------------------------------------------------------------------


def _const_infer(inputs, attrs):
    v = attrs["value"]
    return [(dtypes.as_dtype(v.dtype), tuple(v.shape))]


def _const_kernel(op, ctx):
    value = op.attrs["value"]
    return lambda: value


register("Const", infer=_const_infer, kernel=_const_kernel, differentiable=False)


def _placeholder_infer(inputs, attrs):
    return [(attrs["dtype"], attrs["shape"])]


def _placeholder_kernel(op, ctx):
    def missing():
        raise InvalidArgumentError(
            f"You must feed a value for placeholder tensor '{op.name}' with dtype {op.attrs['dtype'].name}"
            f" and shape {op.attrs['shape']}", op.name)

    return missing


register("Placeholder", infer=_placeholder_infer, kernel=_placeholder_kernel, differentiable=False)


def _pwd_infer(inputs, attrs):
    shape = attrs["shape"]
    if shape is not None and inputs[0].shape is not None and not _fits(inputs[0].shape, shape):
        raise ValueError(f"default value shape {inputs[0].shape} does not fit shape {shape}")
    return [(inputs[0].dtype, shape)]


def _fits(actual, static):
    return len(actual) == len(static) and all(s is None or a is None or a == s for a, s in zip(actual, static))


register("PlaceholderWithDefault", infer=_pwd_infer, kernel=simple_kernel(lambda x: x),
         grad=lambda op, g: [g])


def constant(value, dtype=None, shape=None, name=None):
    """A tensor holding ``value`` (Python floats default to float32, ints to int32)."""
    dtype = None if dtype is None else dtypes.as_dtype(dtype)
    arr = python_value_to_array(value, dtype, what=f"constant {name or 'Const'}")
    if shape is not None:
        shape = tuple(int(d) for d in shape)
        if arr.size == 1:
            arr = np.full(shape, arr.reshape(()), dtype=arr.dtype)
        elif arr.size == int(np.prod(shape)):
            arr = arr.reshape(shape)
        else:
            raise ValueError(f"constant {name or 'Const'}: {arr.size} values cannot have shape {shape}")
    arr = np.array(arr, copy=True, order="C")
    arr.flags.writeable = False  # kernels never write inputs; this makes it a hard guarantee
    return create("Const", (), {"value": arr}, name or "Const")


def placeholder(dtype, shape=None, name=None):
    """A value fed at run time; ``None`` dims (or shape=None) accept any size."""
    return create("Placeholder", (), {"dtype": dtypes.as_dtype(dtype), "shape": shapes.as_shape(shape)},
                  name or "Placeholder")


def placeholder_with_default(input, shape, name=None):  # noqa: A002  (TensorFlow's name)
    """``input`` unless a value is fed (e.g. a training flag defaulting to False)."""
    return create("PlaceholderWithDefault", [convert_to_tensor(input)], {"shape": shapes.as_shape(shape)},
                  name or "PlaceholderWithDefault")


def zeros(shape, dtype=dtypes.float32, name=None):
    dtype = dtypes.as_dtype(dtype)
    return constant(np.zeros(tuple(shape), dtype=dtype.np), dtype, name=name or "zeros")


def ones(shape, dtype=dtypes.float32, name=None):
    dtype = dtypes.as_dtype(dtype)
    return constant(np.ones(tuple(shape), dtype=dtype.np), dtype, name=name or "ones")


def _like_infer(inputs, attrs):
    return [(inputs[0].dtype, inputs[0].shape)]


register("ZerosLike", infer=_like_infer, kernel=simple_kernel(np.zeros_like), differentiable=False)
register("OnesLike", infer=_like_infer, kernel=simple_kernel(np.ones_like), differentiable=False)


def zeros_like(x, name=None):
    return create("ZerosLike", [convert_to_tensor(x)], name=name)


def ones_like(x, name=None):
    return create("OnesLike", [convert_to_tensor(x)], name=name)


# --- identity-like ------------------------------------------------------------------------------

register("Identity", infer=_like_infer, kernel=simple_kernel(lambda x: x), grad=lambda op, g: [g])
register("StopGradient", infer=_like_infer, kernel=simple_kernel(lambda x: x), differentiable=False)


def identity(x, name=None):
    return create("Identity", [convert_to_tensor(x)], name=name)


def stop_gradient(x, name=None):
    """``x`` in the forward pass; no gradient flows through it."""
    return create("StopGradient", [convert_to_tensor(x)], name=name)


# --- shapes ---------------------------------------------------------------------------------------


def _shape_infer(inputs, attrs):
    s = inputs[0].shape
    return [(dtypes.int64, (None if s is None else len(s),))]


register("Shape", infer=_shape_infer, kernel=simple_kernel(lambda x: np.array(x.shape, dtype=np.int64)),
         differentiable=False)


def shape(x, name=None):
    """The run-time shape of ``x`` as an int64 vector."""
    return create("Shape", [convert_to_tensor(x)], name=name)


def _reshape_static(in_shape, target):
    known = [d for d in target if d != -1]
    if target.count(-1) > 1:
        raise ValueError(f"reshape target {target} has more than one -1")
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


def _reshape_infer(inputs, attrs):
    return [(inputs[0].dtype, _reshape_static(inputs[0].shape, attrs["shape"]))]


def _reshape_kernel(op, ctx):
    target = op.attrs["shape"]
    return lambda x: x.reshape(target)


register("Reshape", infer=_reshape_infer, kernel=_reshape_kernel,
         grad=lambda op, g: [reshape_like(g, op.inputs[0])])


def reshape(x, shape, name=None):  # noqa: A002
    """NumPy-style reshape with at most one -1 (the result shares memory with ``x``)."""
    target = tuple(int(d) for d in shape)
    if any(d < -1 for d in target):
        raise ValueError(f"reshape target {target} has a negative dimension")
    return create("Reshape", [convert_to_tensor(x)], {"shape": target}, name)


register("ReshapeLike", infer=lambda inputs, attrs: [(inputs[0].dtype, inputs[1].shape)],
         kernel=simple_kernel(lambda g, like: g.reshape(like.shape)),
         grad=lambda op, g: [reshape_like(g, op.inputs[0]), None])


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
         grad=lambda op, g: [reshape_like(g, op.inputs[0])])


def expand_dims(x, axis, name=None):
    return create("ExpandDims", [convert_to_tensor(x)], {"axis": int(axis)}, name)


def _squeeze_infer(inputs, attrs):
    s = inputs[0].shape
    if s is None:
        if attrs["axis"] is None:
            return [(inputs[0].dtype, None)]
        raise ValueError("squeeze with axis needs a known rank")
    axes = shapes.normalize_axes(attrs["axis"], len(s)) if attrs["axis"] is not None else tuple(
        i for i, d in enumerate(s) if d == 1)
    for a in axes:
        if s[a] not in (1, None):
            raise ValueError(f"cannot squeeze axis {a} of size {s[a]}")
    return [(inputs[0].dtype, tuple(d for i, d in enumerate(s) if i not in axes))]


def _squeeze_kernel(op, ctx):
    axis = op.attrs["axis"]
    return lambda x: np.squeeze(x, axis=axis)


register("Squeeze", infer=_squeeze_infer, kernel=_squeeze_kernel, grad=lambda op, g: [reshape_like(g, op.inputs[0])])


def squeeze(x, axis=None, name=None):
    axis = None if axis is None else (tuple(int(a) for a in axis) if isinstance(axis, (list, tuple)) else (int(axis),))
    return create("Squeeze", [convert_to_tensor(x)], {"axis": axis}, name)


def _transpose_infer(inputs, attrs):
    s = inputs[0].shape
    perm = attrs["perm"]
    if s is None:
        return [(inputs[0].dtype, None if perm is None else (None,) * len(perm))]
    perm = tuple(reversed(range(len(s)))) if perm is None else perm
    if sorted(perm) != list(range(len(s))):
        raise ValueError(f"perm {perm} is not a permutation of the {len(s)} axes")
    return [(inputs[0].dtype, tuple(s[p] for p in perm))]


def _transpose_kernel(op, ctx):
    perm = op.attrs["perm"]
    return lambda x: np.asarray(np.transpose(x, perm), order="C")


def _transpose_grad(op, g):
    perm = op.attrs["perm"]
    if perm is None:
        return [transpose(g)]
    return [transpose(g, tuple(int(i) for i in np.argsort(perm)))]


register("Transpose", infer=_transpose_infer, kernel=_transpose_kernel, grad=_transpose_grad)


def transpose(x, perm=None, name=None):
    perm = None if perm is None else tuple(int(p) for p in perm)
    return create("Transpose", [convert_to_tensor(x)], {"perm": perm}, name)


def _concat_infer(inputs, attrs):
    d = same_dtype(inputs)
    ranks = {len(t.shape) for t in inputs if t.shape is not None}
    if len(ranks) > 1:
        raise ValueError(f"inputs have different ranks {sorted(ranks)}")
    if not ranks:
        return [(d, None)]
    rank = ranks.pop()
    axis = attrs["axis"]
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    axis %= rank
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


def _concat_grad(op, g):
    return [create("ConcatSlice", [g, *op.inputs], {"axis": op.attrs["axis"], "index": i})
            for i in range(len(op.inputs))]


register("ConcatV2", infer=_concat_infer,
         kernel=lambda op, ctx: (lambda *xs: np.concatenate(xs, axis=op.attrs["axis"])), grad=_concat_grad)


def _concat_slice_kernel(op, ctx):
    axis, index = op.attrs["axis"], op.attrs["index"]

    def piece(g, *values):
        ax = axis % g.ndim
        start = sum(v.shape[ax] for v in values[:index])
        sl = [slice(None)] * g.ndim
        sl[ax] = slice(start, start + values[index].shape[ax])
        return np.asarray(g[tuple(sl)], order="C")

    return piece


register("ConcatSlice", infer=lambda inputs, attrs: [(inputs[0].dtype, inputs[1 + attrs["index"]].shape)],
         kernel=_concat_slice_kernel)


def concat(values, axis, name=None):
    values = [convert_to_tensor(v) for v in values]
    if not values:
        raise ValueError("concat needs at least one tensor")
    return create("ConcatV2", values, {"axis": int(axis)}, name)


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
    return [IndexedSlices(values, reshape(indices, (-1,)), shape(params)), None]


def _gather_grad_values_infer(inputs, attrs):
    g, idx = inputs
    if g.shape is None or idx.shape is None:
        return [(g.dtype, None)]
    n = None if not shapes.is_fully_defined(idx.shape) else int(np.prod(idx.shape, dtype=np.int64))
    return [(g.dtype, (n,) + tuple(g.shape[len(idx.shape):]))]


register("GatherV2", infer=_gather_infer, kernel=simple_kernel(KA.gather), grad=_gather_grad)
register("GatherGradValues", infer=_gather_grad_values_infer,
         kernel=simple_kernel(lambda g, idx: g.reshape((idx.size,) + g.shape[idx.ndim:])))


def gather(params, indices, name=None):
    """Rows ``params[indices]`` (axis 0); its gradient is sparse (IndexedSlices)."""
    params = convert_to_tensor(params)
    indices = convert_to_tensor(indices, dtype=None if _is_tensorish(indices) else dtypes.int64)
    return create("GatherV2", [params, indices], name=name)


def _is_tensorish(x):
    from engine.graph import is_tensor_like

    return is_tensor_like(x)


def _where_infer(inputs, attrs):
    c, x, y = inputs
    if not c.dtype.is_bool:
        raise TypeError(f"condition {c.name} must be bool, got {c.dtype.name}")
    d = same_dtype([x, y])
    return [(d, shapes.broadcast(shapes.broadcast(c.shape, x.shape), y.shape))]


def _where_grad(op, g):
    c, x, y = op.inputs
    zeros = zeros_like(g)
    return [None, unbroadcast(where(c, g, zeros), x), unbroadcast(where(c, zeros, g), y)]


register("Select", infer=_where_infer, kernel=simple_kernel(K.select), grad=_where_grad)


def where(condition, x, y, name=None):
    """Elementwise ``x if condition else y`` (NumPy broadcasting over all three)."""
    from engine.ops._util import tensors_for_binary

    x, y = tensors_for_binary(x, y)
    return create("Select", [convert_to_tensor(condition, dtypes.bool_), x, y], name=name)


def _cast_grad(op, g):
    x = op.inputs[0]
    if x.dtype.is_floating and op.outputs[0].dtype.is_floating:
        return [cast(g, x.dtype)]
    return [None]


register("Cast", infer=lambda inputs, attrs: [(attrs["dtype"], inputs[0].shape)],
         kernel=lambda op, ctx: (lambda x, _d=op.attrs["dtype"].np: x.astype(_d)), grad=_cast_grad)


def cast(x, dtype, name=None):
    """Explicit dtype conversion (float -> int truncates toward zero, like NumPy)."""
    x = convert_to_tensor(x)
    dtype = dtypes.as_dtype(dtype)
    if x.dtype == dtype:
        return x
    return create("Cast", [x], {"dtype": dtype}, name)


# --- gradient helpers ---------------------------------------------------------------------------------

register("SumToShape", infer=lambda inputs, attrs: [(inputs[0].dtype, inputs[1].shape)],
         kernel=simple_kernel(lambda g, like: R.sum_to_shape(g, like.shape)))


def sum_to_shape(g, like):
    return create("SumToShape", [g, like])


def _broadcast_reduced_kernel(op, ctx):
    axis, keepdims, mean = op.attrs["axis"], op.attrs["keepdims"], op.attrs["mean"]

    def expand(g, x):
        axes = shapes.normalize_axes(axis, x.ndim)
        kept = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        g = g.reshape(kept)
        if mean:
            count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
            g = g / max(count, 1)
        return np.array(np.broadcast_to(g, x.shape), order="C")

    return expand


register("BroadcastReduced", infer=lambda inputs, attrs: [(inputs[0].dtype, inputs[1].shape)],
         kernel=_broadcast_reduced_kernel)


def broadcast_reduced(g, x, axis, keepdims, mean):
    """Spread a reduction's gradient back over the reduced axes of ``x`` (divided by the count for mean)."""
    return create("BroadcastReduced", [g, x], {"axis": axis, "keepdims": keepdims, "mean": mean})


register("ScatterAddDense", infer=lambda inputs, attrs: [(inputs[0].dtype, attrs["shape"])],
         kernel=simple_kernel(KA.scatter_add_dense))


def densify(slices: IndexedSlices, static_shape=None):
    """The dense tensor an IndexedSlices stands for."""
    return create("ScatterAddDense", [slices.values, slices.indices, slices.dense_shape],
                  {"shape": static_shape})


