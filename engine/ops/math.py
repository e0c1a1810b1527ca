"""Math ops: elementwise arithmetic with NumPy broadcasting, comparisons, reductions, matmul."""

from __future__ import annotations

import numpy as np

from engine import dtypes, shapes
from engine.graph import convert_to_tensor
from engine.kernels import math as K
from engine.kernels import reduce as R
from engine.ops._util import FLOAT, NUMERIC, broadcast_all, create, same_dtype, tensors_for_binary
from engine.registry import register, unbroadcast

# --- registration helpers ------------------------------------------------------------------


def _binary_infer(kinds, out_dtype=None):
    def infer(inputs, attrs):
        d = same_dtype(inputs, kinds)
        return [(out_dtype or d, broadcast_all(inputs))]

    return infer


def _unary_infer(kinds):
    def infer(inputs, attrs):
        d = same_dtype(inputs, kinds)
        return [(d, inputs[0].shape)]

    return infer


def _binary_kernel(kern, out_dtype=None):
    npd = None if out_dtype is None else out_dtype.np

    def make(op, ctx):
        return lambda a, b: K.binary(kern, a, b, npd)

    return make


def _unary_kernel(kern):
    return lambda op, ctx: (lambda x: K.unary(kern, x))


def _def_binary(name, kern, kinds, grad=None, out_dtype=None, differentiable=True):
    register(name, infer=_binary_infer(kinds, out_dtype), kernel=_binary_kernel(kern, out_dtype), grad=grad,
             differentiable=differentiable)


def _def_unary(name, kern, kinds, grad=None, differentiable=True):
    register(name, infer=_unary_infer(kinds), kernel=_unary_kernel(kern), grad=grad, differentiable=differentiable)


# --- gradients ---------------------------------------------------------------------------------


def _add_grad(op, g):
    x, y = op.inputs
    return [unbroadcast(g, x), unbroadcast(g, y)]


def _sub_grad(op, g):
    x, y = op.inputs
    return [unbroadcast(g, x), unbroadcast(negative(g), y)]


def _mul_grad(op, g):
    x, y = op.inputs
    return [unbroadcast(multiply(g, y), x), unbroadcast(multiply(g, x), y)]


def _div_grad(op, g):
    x, y = op.inputs
    z = op.outputs[0]
    return [unbroadcast(divide(g, y), x), unbroadcast(negative(divide(multiply(g, z), y)), y)]


def _pow_grad(op, g):
    x, y = op.inputs
    z = op.outputs[0]
    dx = multiply(g, multiply(y, pow(x, subtract(y, 1))))
    positive = greater(x, 0)
    safe_log = where(positive, log(where(positive, x, ones_like(x))), zeros_like(x))
    dy = multiply(g, multiply(z, safe_log))
    return [unbroadcast(dx, x), unbroadcast(dy, y)]


def _select_grads(mask, g, x, y):
    from engine.ops.array import zeros_like as _zl

    zeros = _zl(g)
    return [unbroadcast(where(mask, g, zeros), x), unbroadcast(where(mask, zeros, g), y)]


def _max_grad(op, g):
    x, y = op.inputs
    return _select_grads(greater_equal(x, y), g, x, y)


def _min_grad(op, g):
    x, y = op.inputs
    return _select_grads(less_equal(x, y), g, x, y)


def _neg_grad(op, g):
    return [negative(g)]


def _exp_grad(op, g):
    return [multiply(g, op.outputs[0])]


def _log_grad(op, g):
    return [divide(g, op.inputs[0])]


def _log1p_grad(op, g):
    return [divide(g, add(op.inputs[0], 1))]


def _expm1_grad(op, g):
    return [multiply(g, add(op.outputs[0], 1))]


def _sqrt_grad(op, g):
    return [divide(g, multiply(op.outputs[0], 2))]


def _square_grad(op, g):
    return [multiply(g, multiply(op.inputs[0], 2))]


def _abs_grad(op, g):
    return [multiply(g, sign(op.inputs[0]))]


def _matmul_grad(op, g):
    a, b = op.inputs
    ta, tb = op.attrs["transpose_a"], op.attrs["transpose_b"]
    if not ta and not tb:
        return [matmul(g, b, transpose_b=True), matmul(a, g, transpose_a=True)]
    if ta and not tb:
        return [matmul(b, g, transpose_b=True), matmul(a, g)]
    if not ta and tb:
        return [matmul(g, b), matmul(g, a, transpose_a=True)]
    return [matmul(b, g, transpose_a=True, transpose_b=True), matmul(g, a, transpose_a=True, transpose_b=True)]


def _sum_grad(op, g):
    from engine.ops.array import broadcast_reduced

    return [broadcast_reduced(g, op.inputs[0], op.attrs["axis"], op.attrs["keepdims"], mean=False)]


def _mean_grad(op, g):
    from engine.ops.array import broadcast_reduced

    return [broadcast_reduced(g, op.inputs[0], op.attrs["axis"], op.attrs["keepdims"], mean=True)]


def _max_reduce_grad(op, g):
    from engine.ops.array import broadcast_reduced, cast

    x, y = op.inputs[0], op.outputs[0]
    axis, keepdims = op.attrs["axis"], op.attrs["keepdims"]
    mask = cast(equal(x, broadcast_reduced(y, x, axis, keepdims, mean=False)), x.dtype)
    count = reduce_sum(mask, axis, keepdims=keepdims)
    return [multiply(broadcast_reduced(divide(g, count), x, axis, keepdims, mean=False), mask)]


def _add_n_grad(op, g):
    return [g] * len(op.inputs)


# --- registrations -------------------------------------------------------------------------------

_def_binary("Add", K.add, NUMERIC, _add_grad)
_def_binary("Sub", K.subtract, NUMERIC, _sub_grad)
_def_binary("Mul", K.multiply, NUMERIC, _mul_grad)
_def_binary("RealDiv", K.divide, FLOAT, _div_grad)
_def_binary("Pow", K.power, NUMERIC, _pow_grad)
_def_binary("Maximum", K.maximum, NUMERIC, _max_grad)
_def_binary("Minimum", K.minimum, NUMERIC, _min_grad)
for _name, _kern in (("Greater", K.greater), ("GreaterEqual", K.greater_equal), ("Less", K.less),
                     ("LessEqual", K.less_equal)):
    _def_binary(_name, _kern, NUMERIC, out_dtype=dtypes.bool_, differentiable=False)
for _name, _kern in (("Equal", K.equal), ("NotEqual", K.not_equal)):
    _def_binary(_name, _kern, NUMERIC + ("bool",), out_dtype=dtypes.bool_, differentiable=False)
_def_binary("ReluGrad", K.relu_grad, FLOAT)
_def_binary("SigmoidGrad", K.sigmoid_grad, FLOAT)
_def_binary("TanhGrad", K.tanh_grad, FLOAT)

_def_unary("Neg", K.negative, NUMERIC, _neg_grad)
_def_unary("Exp", K.exp, FLOAT, _exp_grad)
_def_unary("Log", K.log, FLOAT, _log_grad)
_def_unary("Log1p", K.log1p, FLOAT, _log1p_grad)
_def_unary("Expm1", K.expm1, FLOAT, _expm1_grad)
_def_unary("Sqrt", K.sqrt, FLOAT, _sqrt_grad)
_def_unary("Square", K.square, NUMERIC, _square_grad)
_def_unary("Abs", K.absolute, NUMERIC, _abs_grad)
_def_unary("Sign", K.sign, NUMERIC, differentiable=False)


def _add_n_infer(inputs, attrs):
    d = same_dtype(inputs, NUMERIC)
    shape = inputs[0].shape
    for t in inputs[1:]:
        shape = shapes.merge(shape, t.shape)
    return [(d, shape)]


register("AddN", infer=_add_n_infer, kernel=lambda op, ctx: (lambda *xs: K.add_n(xs)), grad=_add_n_grad)


def _matmul_infer(inputs, attrs):
    a, b = inputs
    d = same_dtype(inputs, NUMERIC)
    for t in (a, b):
        if t.shape is not None and len(t.shape) != 2:
            raise ValueError(f"matmul needs rank-2 inputs, got {t.name} with shape {t.shape}")
    sa = a.shape or (None, None)
    sb = b.shape or (None, None)
    m, ka = (sa[1], sa[0]) if attrs["transpose_a"] else (sa[0], sa[1])
    kb, n = (sb[1], sb[0]) if attrs["transpose_b"] else (sb[0], sb[1])
    if ka is not None and kb is not None and ka != kb:
        raise ValueError(f"inner dimensions differ: {ka} vs {kb}")
    return [(d, (m, n))]


def _matmul_kernel(op, ctx):
    ta, tb = op.attrs["transpose_a"], op.attrs["transpose_b"]
    if not ta and not tb:
        return np.matmul
    return lambda a, b: K.matmul(a, b, ta, tb)


register("MatMul", infer=_matmul_infer, kernel=_matmul_kernel, grad=_matmul_grad)


def _reduce_infer(inputs, attrs):
    x = inputs[0]
    d = same_dtype(inputs, NUMERIC)
    if x.shape is None:
        return [(d, None)]
    axes = shapes.normalize_axes(attrs["axis"], len(x.shape))
    if attrs["keepdims"]:
        return [(d, tuple(1 if i in axes else s for i, s in enumerate(x.shape)))]
    return [(d, tuple(s for i, s in enumerate(x.shape) if i not in axes))]


def _reduce_kernel(kind):
    def make(op, ctx):
        axis, keepdims = op.attrs["axis"], op.attrs["keepdims"]
        static = op.inputs[0].shape

        if static is not None:
            axes = shapes.normalize_axes(axis, len(static))
            return lambda x: R.reduce(x, axes, keepdims, kind)
        return lambda x: R.reduce(x, shapes.normalize_axes(axis, x.ndim), keepdims, kind)

    return make


register("Sum", infer=_reduce_infer, kernel=_reduce_kernel("sum"), grad=_sum_grad)
register("Mean", infer=_reduce_infer, kernel=_reduce_kernel("mean"), grad=_mean_grad)
register("Max", infer=_reduce_infer, kernel=_reduce_kernel("max"), grad=_max_reduce_grad)

# --- constructors ----------------------------------------------------------------------------------


def _binary(op_type, x, y, name):
    x, y = tensors_for_binary(x, y)
    return create(op_type, [x, y], name=name)


def _unary(op_type, x, name):
    return create(op_type, [convert_to_tensor(x)], name=name)


def add(x, y, name=None):
    return _binary("Add", x, y, name)


def subtract(x, y, name=None):
    return _binary("Sub", x, y, name)


def multiply(x, y, name=None):
    return _binary("Mul", x, y, name)


def divide(x, y, name=None):
    """True division; float tensors only (cast integers explicitly)."""
    return _binary("RealDiv", x, y, name)


def pow(x, y, name=None):  # noqa: A001  (TensorFlow's name)
    return _binary("Pow", x, y, name)


def maximum(x, y, name=None):
    return _binary("Maximum", x, y, name)


def minimum(x, y, name=None):
    return _binary("Minimum", x, y, name)


def greater(x, y, name=None):
    return _binary("Greater", x, y, name)


def greater_equal(x, y, name=None):
    return _binary("GreaterEqual", x, y, name)


def less(x, y, name=None):
    return _binary("Less", x, y, name)


def less_equal(x, y, name=None):
    return _binary("LessEqual", x, y, name)


def equal(x, y, name=None):
    return _binary("Equal", x, y, name)


def not_equal(x, y, name=None):
    return _binary("NotEqual", x, y, name)


def negative(x, name=None):
    return _unary("Neg", x, name)


def exp(x, name=None):
    return _unary("Exp", x, name)


def log(x, name=None):
    return _unary("Log", x, name)


def log1p(x, name=None):
    return _unary("Log1p", x, name)


def expm1(x, name=None):
    return _unary("Expm1", x, name)


def sqrt(x, name=None):
    return _unary("Sqrt", x, name)


def square(x, name=None):
    return _unary("Square", x, name)


def abs(x, name=None):  # noqa: A001
    return _unary("Abs", x, name)


def sign(x, name=None):
    return _unary("Sign", x, name)


def add_n(inputs, name=None):
    """Sum of same-shaped tensors in one kernel (how ``gradients`` joins paths)."""
    inputs = [convert_to_tensor(t) for t in inputs]
    if not inputs:
        raise ValueError("add_n needs at least one input")
    if len(inputs) == 1:
        return inputs[0]
    return create("AddN", inputs, name=name)


def matmul(a, b, transpose_a=False, transpose_b=False, name=None):
    a, b = tensors_for_binary(a, b)
    return create("MatMul", [a, b], {"transpose_a": bool(transpose_a), "transpose_b": bool(transpose_b)}, name)


def _axis_attr(axis):
    if axis is None:
        return None
    if isinstance(axis, (list, tuple)):
        return tuple(int(a) for a in axis)
    return int(axis)


def reduce_sum(x, axis=None, keepdims=False, name=None):
    return create("Sum", [convert_to_tensor(x)], {"axis": _axis_attr(axis), "keepdims": bool(keepdims)}, name)


def reduce_mean(x, axis=None, keepdims=False, name=None):
    x = convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise TypeError(f"reduce_mean of {x.name}: dtype {x.dtype.name} is not float; cast it first")
    return create("Mean", [x], {"axis": _axis_attr(axis), "keepdims": bool(keepdims)}, name)


def reduce_max(x, axis=None, keepdims=False, name=None):
    return create("Max", [convert_to_tensor(x)], {"axis": _axis_attr(axis), "keepdims": bool(keepdims)}, name)


def where(condition, x, y, name=None):
    from engine.ops.array import where as _where

    return _where(condition, x, y, name=name)


def ones_like(x):
    from engine.ops.array import ones_like as _ol

    return _ol(x)


def zeros_like(x):
    from engine.ops.array import zeros_like as _zl

    return _zl(x)
