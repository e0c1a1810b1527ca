"""Math ops: elementwise arithmetic with NumPy broadcasting, comparisons, reductions, matmul. An elementwise op is one
``elementwise(...)`` statement (scalar function, NumPy reference, dtype kinds, gradient) returning the function users
call (``sin = elementwise("Sin", ...)``).
"""

from __future__ import annotations

import operator
from functools import reduce

import numpy as np

from engine import graph, shapes
from engine.graph import convert_to_tensor
from engine.kernels import array as KA
from engine.kernels import reduce as R
from engine.ops._util import (BOOL, FLOAT, NUMERIC, create, elementwise, op_description, quiet, same_dtype, sample,
                              tensors_for_binary, unbroadcast)
from engine.ops.array import broadcast_reduced, cast, ones_like, select_grads, where, zeros_like
from engine.registry import NUMPY_KERNEL, Example, register, simple_kernel

# --- scalar functions: the one definition of each elementwise formula that is no operator or ufunc --------


def _maximum(a, b):
    return a if (a > b or a != a) else b  # NaN propagates; a tie (0.0 vs -0.0) gives b: as np.maximum


def _minimum(a, b):
    return a if (a < b or a != a) else b


def _square(a):
    return a * a


def _abs(a):
    return abs(a)  # abs(-0.0) is 0.0, as np.abs


def _sign(a):
    return 1 if a > 0 else (-1 if a < 0 else (0 if a == 0 else a))  # NaN stays NaN, as np.sign


def _div_grad(op, g):
    x, y = op.inputs
    z = op.outputs[0]
    return [unbroadcast(divide(g, y), x), unbroadcast(negative(divide(multiply(g, z), y)), y)]


def _pow_grad(op, g):
    x, y = op.inputs
    z = op.outputs[0]
    # as torch: d/dx is 0 where y == 0 (0 * 0**-1 would be NaN at x = 0); d/dy is z log x for x > 0,
    # at x = 0 the limit: 0 for y >= 0, -inf for y < 0 (z = inf); 0 for x < 0 (TensorFlow's choice)
    dx = multiply(g, where(equal(y, 0), zeros_like(z), multiply(y, pow(x, subtract(y, 1)))))
    positive = greater(x, 0)
    safe_log = where(positive, log(where(positive, x, ones_like(x))), zeros_like(x))
    at_zero = where(less(y, 0), zeros_like(z) - np.inf, zeros_like(z))
    dy = multiply(g, where(equal(x, 0), at_zero, where(positive, multiply(z, safe_log), zeros_like(z))))
    return [unbroadcast(dx, x), unbroadcast(dy, y)]


POSITIVE = (0.1, 3.0)
add = elementwise("Add", operator.add, np.add, NUMERIC,
                  grad=lambda op, g: [unbroadcast(g, x) for x in op.inputs])
subtract = elementwise("Sub", operator.sub, np.subtract, NUMERIC, python_name="subtract",
                       grad=lambda op, g: [unbroadcast(g, op.inputs[0]), unbroadcast(negative(g), op.inputs[1])])
multiply = elementwise("Mul", operator.mul, np.multiply, NUMERIC, python_name="multiply",
                       grad=lambda op, g: [unbroadcast(multiply(g, y), x) for x, y in (op.inputs, op.inputs[::-1])])
divide = elementwise("RealDiv", operator.truediv, np.divide, FLOAT, grad=_div_grad, python_name="divide",
                     doc="True division; float tensors only (cast integers explicitly).")
# floats only: an integer to a negative power has no integer value (NumPy raises; a kernel would give 0)
pow = elementwise("Pow", operator.pow, np.power, FLOAT,  # noqa: A001  (TensorFlow's name)
                  grad=_pow_grad, domain=(0.5, 2.0))
maximum = elementwise("Maximum", _maximum, np.maximum, NUMERIC,
                      grad=lambda op, g: select_grads(g, greater_equal(*op.inputs), *op.inputs))
minimum = elementwise("Minimum", _minimum, np.minimum, NUMERIC,
                      grad=lambda op, g: select_grads(g, less_equal(*op.inputs), *op.inputs))
_COMPARISON = dict(out_dtype=BOOL, not_differentiable="a comparison: bool output")
greater = elementwise("Greater", operator.gt, np.greater, NUMERIC, **_COMPARISON)
greater_equal = elementwise("GreaterEqual", operator.ge, np.greater_equal, NUMERIC, **_COMPARISON)
less = elementwise("Less", operator.lt, np.less, NUMERIC, **_COMPARISON)
less_equal = elementwise("LessEqual", operator.le, np.less_equal, NUMERIC, **_COMPARISON)
equal = elementwise("Equal", operator.eq, np.equal, NUMERIC + ("bool",), **_COMPARISON)
not_equal = elementwise("NotEqual", operator.ne, np.not_equal, NUMERIC + ("bool",), **_COMPARISON)
negative = elementwise("Neg", operator.neg, np.negative, NUMERIC, grad=lambda op, g: [negative(g)],
                       python_name="negative")
exp = elementwise("Exp", np.exp, np.exp, FLOAT, grad=lambda op, g: [multiply(g, op.outputs[0])])
log = elementwise("Log", np.log, np.log, FLOAT, grad=lambda op, g: [divide(g, op.inputs[0])], domain=POSITIVE)
log1p = elementwise("Log1p", np.log1p, np.log1p, FLOAT, grad=lambda op, g: [divide(g, add(op.inputs[0], 1))],
                    domain=POSITIVE)
expm1 = elementwise("Expm1", np.expm1, np.expm1, FLOAT, grad=lambda op, g: [multiply(g, add(op.outputs[0], 1))])
sqrt = elementwise("Sqrt", np.sqrt, np.sqrt, FLOAT, grad=lambda op, g: [divide(g, multiply(op.outputs[0], 2))],
                   domain=POSITIVE)
square = elementwise("Square", _square, np.square, NUMERIC,
                     grad=lambda op, g: [multiply(g, multiply(op.inputs[0], 2))])
abs = elementwise("Abs", _abs, np.abs, NUMERIC,  # noqa: A001  (TensorFlow's name)
                  grad=lambda op, g: [multiply(g, sign(op.inputs[0]))])
sign = elementwise("Sign", _sign, np.sign, NUMERIC,
                   not_differentiable="piecewise constant: its gradient is 0 where defined")
sin = elementwise("Sin", np.sin, np.sin, FLOAT, grad=lambda op, g: [multiply(g, cos(op.inputs[0]))])
cos = elementwise("Cos", np.cos, np.cos, FLOAT, grad=lambda op, g: [negative(multiply(g, sin(op.inputs[0])))])

# --- AddN, MatMul, reductions -------------------------------------------------------------------------


def _add_n_infer(inputs, attrs):
    """Equal shapes, as TensorFlow's AddN (no broadcasting: its gradient passes ``g`` on unreduced)."""
    d = same_dtype(inputs, NUMERIC)
    shape = inputs[0].shape
    for t in inputs[1:]:
        try:
            shape = shapes.merge(shape, t.shape)
        except ValueError:
            raise ValueError(f"add_n needs inputs of equal shapes: {[t.shape for t in inputs]}") from None
    return [(d, shape)]


@quiet
def _add_all(*xs):
    if any(x.shape != xs[0].shape for x in xs):
        raise ValueError(f"add_n needs inputs of equal shapes: {[x.shape for x in xs]}")
    out = np.array(xs[0], copy=True, order="C")
    for x in xs[1:]:
        np.add(out, x, out=out)
    return out


def _add_n_examples(rng):
    return [Example(tuple(sample(rng, (3, 2), t) for _ in range(3))) for t in (np.float32, np.float64, np.int32)] + [
        Example((sample(rng, (3, 2), np.float64), sample(rng, (1, 2), np.float64)))]  # refused: no broadcasting


@quiet
def _add_all_reference(*xs):
    if len({x.shape for x in xs}) > 1:
        raise ValueError(f"add_n needs inputs of equal shapes: {[x.shape for x in xs]}")
    return reduce(np.add, xs[1:], xs[0].copy())  # a chain of Adds: np.sum starts from +0.0 (-0.0 + -0.0 gave 0.0)


register("AddN", infer=_add_n_infer, kernel=simple_kernel(_add_all), reference=simple_kernel(_add_all_reference),
         examples=_add_n_examples,
         grad=lambda op, g: [g] * len(op.inputs))


def _matmul_grad(op, g):
    a, b = op.inputs
    ta, tb = op.attrs["transpose_a"], op.attrs["transpose_b"]
    da = matmul(b, g, transpose_a=tb, transpose_b=True) if ta else matmul(g, b, transpose_b=not tb)
    db = matmul(g, a, transpose_a=True, transpose_b=ta) if tb else matmul(a, g, transpose_a=not ta)
    return [da, db]


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


def _matmul_reference(op, ctx):
    ta, tb = op.attrs["transpose_a"], op.attrs["transpose_b"]
    return quiet(lambda a, b: np.matmul(a.T if ta else a, b.T if tb else b))


@quiet
def _product_into(out, a2, b2):
    """``a2 @ b2`` into ``out`` where it fits; an outer product (k = 1) as a broadcast multiply (5x gemm), each
    product added to +0.0 as gemm adds it (a -0.0 product is 0.0 both ways)."""
    if a2.ndim != 2 or b2.ndim != 2 or a2.shape[1] != b2.shape[0]:
        return np.matmul(a2, b2)  # the ordinary path raises the usual error
    shape = (a2.shape[0], b2.shape[1])
    if out is None or out.shape != shape or out.dtype != a2.dtype:
        out = np.empty(shape, a2.dtype)
    if a2.shape[1] == 1:
        if out.dtype.kind == "f" and out.flags.c_contiguous:
            KA.outer_into(out, a2.reshape(-1), b2.reshape(-1))  # (reshape copies a strided column)
            return out
        np.multiply(a2, b2, out=out)
        return np.add(out, 0, out=out) if out.dtype.kind == "f" else out  # +0.0 as np.matmul: outer_into
    return np.matmul(a2, b2, out=out)


def _matmul_out_kernel(op, ctx):
    """Writes into the plan's kept buffer (transposes are views: BLAS reads them with its trans flag)."""
    ta, tb = op.attrs["transpose_a"], op.attrs["transpose_b"]
    return lambda out, a, b: _product_into(out, a.T if ta else a, b.T if tb else b)


def _matmul_narrow(op, axis, start, stop):
    """Rows ``start:stop`` of the product from those rows of ``a``, columns from those columns of ``b``: a
    gradient ``g @ W.T`` of which only some columns are read (passes/narrowing.py) reads only those rows of ``W``."""
    ta, tb = op.attrs["transpose_a"], op.attrs["transpose_b"]
    part = slice(start, stop)

    def narrowed(out, a, b):
        a2, b2 = a.T if ta else a, b.T if tb else b
        return _product_into(out, a2[part], b2) if axis == 0 else _product_into(out, a2, b2[:, part])

    return narrowed


def _matmul_examples(rng):
    out = [Example((sample(rng, (4, 3) if ta else (3, 4), t), sample(rng, (5, 4) if tb else (4, 5), t)),
                   {"transpose_a": ta, "transpose_b": tb})
           for ta in (False, True) for tb in (False, True) for t in (np.float32, np.float64)]
    plain = {"transpose_a": False, "transpose_b": False}
    return out + [Example((sample(rng, (3, 1), np.float64), sample(rng, (1, 4), np.float64)), plain),
                  Example((sample(rng, (0, 2), np.float32), sample(rng, (2, 3), np.float32)), plain)]


def _matmul_emit(c, op, ins):
    """Loops, not BLAS: at a few rows a call into BLAS costs more than the product. Without ``transpose_b`` the inner
    loop runs along a row of ``b`` (vectorized) and the sum over ``p`` is unrolled by four, each output element still
    adding its terms in order (the plain loop's rounding, a quarter of the loads and stores)."""
    a, b = op.inputs
    dtype = op.outputs[0].dtype.name
    if a.ndim != 2 or b.ndim != 2:
        c.unsupported("only rank-2 products are compiled")
    ta, tb = bool(op.attrs["transpose_a"]), bool(op.attrs["transpose_b"])
    a_ik = "a[p, i]" if ta else "a[i, p]"
    name = f"_matmul_{'t' if ta else 'n'}{'t' if tb else 'n'}_{dtype}"
    head = [f"def {name}(a, b):", f"    m = a.shape[{1 if ta else 0}]", f"    k = a.shape[{0 if ta else 1}]",
            f"    n = b.shape[{0 if tb else 1}]"]
    if not tb:
        x = [a_ik.replace("p", f"p + {u}") if u else a_ik for u in range(4)]
        loop = ["    out = np.zeros((m, n), a.dtype)", "    k4 = k - k % 4", "    for i in range(m):",
                "        for p in range(0, k4, 4):", *[f"            x{u} = {x[u]}" for u in range(4)],
                "            for j in range(n):", "                o = out[i, j]",
                *[f"                o += x{u} * b[p{' + ' + str(u) if u else ''}, j]" for u in range(4)],
                "                out[i, j] = o", "        for p in range(k4, k):", f"            x = {a_ik}",
                "            for j in range(n):", "                out[i, j] += x * b[p, j]"]
    else:  # b is (n, k): dot products of contiguous rows
        loop = ["    out = np.empty((m, n), a.dtype)", "    for i in range(m):", "        for j in range(n):",
                f"            acc = np.{dtype}(0)", "            for p in range(k):",
                f"                acc += {a_ik} * b[j, p]", "            out[i, j] = acc"]
    c.helper(name, "\n".join([*head, *loop, "    return out"]))
    c.check(f"{ins[0]}.shape[{0 if ta else 1}] != {ins[1]}.shape[{1 if tb else 0}]", "inner dimensions")
    return f"{name}({ins[0]}, {ins[1]})"


register("MatMul", infer=_matmul_infer, kernel=_matmul_reference, reference=NUMPY_KERNEL,
         examples=_matmul_examples, grad=_matmul_grad, out_kernel=_matmul_out_kernel, narrow=_matmul_narrow,
         emit=_matmul_emit)


def _reduce_infer(inputs, attrs, kinds=NUMERIC):
    x = inputs[0]
    d = same_dtype(inputs, kinds)
    if x.shape is None:
        return [(d, None)]
    axes = shapes.normalize_axes(attrs["axis"], len(x.shape))
    if attrs["keepdims"]:
        return [(d, tuple(1 if i in axes else s for i, s in enumerate(x.shape)))]
    return [(d, tuple(s for i, s in enumerate(x.shape) if i not in axes))]


def _reduce_kernel(kind):
    def make(op, ctx):
        axis, keepdims = op.attrs["axis"], op.attrs["keepdims"]
        if op.inputs[0].ndim is not None:
            axes = shapes.normalize_axes(axis, op.inputs[0].ndim)
            return lambda x: R.reduce(x, axes, keepdims, kind)
        return lambda x: R.reduce(x, shapes.normalize_axes(axis, x.ndim), keepdims, kind)

    return make


def _reduce_reference(fn):
    def make(op, ctx):
        axis, keepdims = op.attrs["axis"], op.attrs["keepdims"]
        return quiet(lambda x: np.asarray(fn(x, axis=axis, keepdims=keepdims), dtype=x.dtype))

    return make


def _sum(x, axis, keepdims):
    """``np.sum`` in the kernels' accumulator (float64, int64: ``kernels.reduce.accumulator``), rounded to ``x``'s
    dtype by the caller: a float32 accumulator made 3e38 + 3e38 - 3e38 inf where the kernel gives 3e38."""
    return np.sum(x, axis=axis, keepdims=keepdims, dtype=R.accumulator(x.dtype))


def _mean(x, axis, keepdims):
    """``np.mean``, whose "Mean of empty slice" is a ``warnings.warn`` that ``quiet`` cannot silence: NaN there; added
    and divided in the accumulator, as the kernel."""
    total = _sum(x, axis, keepdims)
    return total / (x.size // max(total.size, 1))


def _reduce_examples(rng):
    cases = [((3, 4), None, False), ((3, 4), 0, False), ((3, 4), 1, True), ((2, 3, 4), (0, 2), False),
             ((2, 3, 4), (1,), True), ((2, 3, 4), -1, False), ((0, 3), 1, False), ((0, 3), 0, False),
             ((2, 3), (0, -2), False)]  # axis 0 twice: refused, by shape inference where the rank is known
    huge = np.array([[3e38, 3e38, -3e38], [3e38, 3e38, 0.0]], np.float32)  # overflows a float32 accumulator
    return [Example((sample(rng, shape, t),), {"axis": axis, "keepdims": keep})
            for t in (np.float32, np.float64, np.int32) for shape, axis, keep in cases] + [
        Example((huge,), {"axis": axis, "keepdims": False}) for axis in (1, None)]


def _spread_grad(mean):
    """Sum's (mean=False) or Mean's gradient: ``g`` spread back over the reduced axes."""
    return lambda op, g: [broadcast_reduced(g, op.inputs[0], op.attrs["axis"], op.attrs["keepdims"], mean=mean)]


def _max_reduce_grad(op, g):
    x, y = op.inputs[0], op.outputs[0]
    axis, keepdims = op.attrs["axis"], op.attrs["keepdims"]
    mask = cast(equal(x, broadcast_reduced(y, x, axis, keepdims, mean=False)), x.dtype)
    count = reduce_sum(mask, axis, keepdims=keepdims)
    return [multiply(broadcast_reduced(divide(g, count), x, axis, keepdims, mean=False), mask)]


register("Sum", infer=_reduce_infer, kernel=_reduce_kernel("sum"), reference=_reduce_reference(_sum),
         examples=_reduce_examples, grad=_spread_grad(False))
register("Mean", infer=lambda inputs, attrs: _reduce_infer(inputs, attrs, FLOAT),  # an int mean: no int value
         kernel=_reduce_kernel("mean"), reference=_reduce_reference(_mean),
         examples=lambda rng: [e for e in _reduce_examples(rng) if e.inputs[0].dtype.kind == "f"],  # floats only
         grad=_spread_grad(True))
register("Max", infer=_reduce_infer, kernel=_reduce_kernel("max"), reference=_reduce_reference(np.max),
         examples=lambda rng: [e for e in _reduce_examples(rng) if e.inputs[0].size],  # non-empty inputs only
         grad=_max_reduce_grad)


def add_n(inputs, name=None):
    """Sum of same-shaped tensors in one kernel (how ``gradients`` joins paths)."""
    inputs = [convert_to_tensor(t) for t in inputs]
    if not inputs:
        raise ValueError("add_n needs at least one input")
    if len(inputs) == 1:
        return inputs[0]
    return create("AddN", inputs, name=name)


def matmul(a, b, transpose_a=False, transpose_b=False, name=None):
    a, b = tensors_for_binary(a, b, op=op_description("MatMul", name))
    return create("MatMul", [a, b], {"transpose_a": bool(transpose_a), "transpose_b": bool(transpose_b)}, name)


def _reduce(op_type, x, axis, keepdims, name):
    axis = axis if axis is None else tuple(map(operator.index, axis)) if isinstance(axis, (list, tuple)) else \
        operator.index(axis)  # whole numbers: int() made axis 1.5 axis 1
    return create(op_type, [x], {"axis": axis, "keepdims": bool(keepdims)}, name)


def reduce_sum(x, axis=None, keepdims=False, name=None):
    return _reduce("Sum", convert_to_tensor(x), axis, keepdims, name)


def reduce_mean(x, axis=None, keepdims=False, name=None):
    return _reduce("Mean", convert_to_tensor(x), axis, keepdims, name)


def reduce_max(x, axis=None, keepdims=False, name=None):
    return _reduce("Max", convert_to_tensor(x), axis, keepdims, name)


graph.set_operators(add=add, subtract=subtract, multiply=multiply, divide=divide, matmul=matmul, pow=pow,
                    negative=negative, abs=abs, greater=greater, less=less, greater_equal=greater_equal,
                    less_equal=less_equal)
