"""Elementwise math kernels (NumPy broadcasting) and their gradient helpers.

Binary kernels take ``a``, ``b`` flattened: equal sizes, or one operand whose shape is a
suffix of the output's (a scalar, a bias row) indexed modulo its size; any other broadcast
is materialized by :func:`prepare_binary` first.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# --- binary arithmetic -----------------------------------------------------------------


@njit(cache=True)
def add(a, b, out):
    na, nb = a.size, b.size
    if na == nb:
        for i in range(out.size):
            out[i] = a[i] + b[i]
    else:
        for i in range(out.size):
            out[i] = a[i % na] + b[i % nb]


@njit(cache=True)
def subtract(a, b, out):
    na, nb = a.size, b.size
    if na == nb:
        for i in range(out.size):
            out[i] = a[i] - b[i]
    else:
        for i in range(out.size):
            out[i] = a[i % na] - b[i % nb]


@njit(cache=True)
def multiply(a, b, out):
    na, nb = a.size, b.size
    if na == nb:
        for i in range(out.size):
            out[i] = a[i] * b[i]
    else:
        for i in range(out.size):
            out[i] = a[i % na] * b[i % nb]


@njit(cache=True)
def divide(a, b, out):
    na, nb = a.size, b.size
    if na == nb:
        for i in range(out.size):
            out[i] = a[i] / b[i]
    else:
        for i in range(out.size):
            out[i] = a[i % na] / b[i % nb]


@njit(cache=True)
def power(a, b, out):
    na, nb = a.size, b.size
    for i in range(out.size):
        out[i] = a[i % na] ** b[i % nb]


@njit(cache=True)
def maximum(a, b, out):
    na, nb = a.size, b.size
    for i in range(out.size):
        x, y = a[i % na], b[i % nb]
        out[i] = x if (x >= y or x != x) else y


@njit(cache=True)
def minimum(a, b, out):
    na, nb = a.size, b.size
    for i in range(out.size):
        x, y = a[i % na], b[i % nb]
        out[i] = x if (x <= y or x != x) else y


# --- comparisons (bool output) ----------------------------------------------------------------


@njit(cache=True)
def greater(a, b, out):
    na, nb = a.size, b.size
    for i in range(out.size):
        out[i] = a[i % na] > b[i % nb]


@njit(cache=True)
def greater_equal(a, b, out):
    na, nb = a.size, b.size
    for i in range(out.size):
        out[i] = a[i % na] >= b[i % nb]


@njit(cache=True)
def less(a, b, out):
    na, nb = a.size, b.size
    for i in range(out.size):
        out[i] = a[i % na] < b[i % nb]


@njit(cache=True)
def less_equal(a, b, out):
    na, nb = a.size, b.size
    for i in range(out.size):
        out[i] = a[i % na] <= b[i % nb]


@njit(cache=True)
def equal(a, b, out):
    na, nb = a.size, b.size
    for i in range(out.size):
        out[i] = a[i % na] == b[i % nb]


@njit(cache=True)
def not_equal(a, b, out):
    na, nb = a.size, b.size
    for i in range(out.size):
        out[i] = a[i % na] != b[i % nb]


# --- gradient helpers (same-shape operands) --------------------------------------------------


@njit(cache=True)
def relu_grad(g, y, out):
    for i in range(out.size):
        out[i] = g[i] if y[i] > 0 else 0


@njit(cache=True)
def sigmoid_grad(g, y, out):
    for i in range(out.size):
        out[i] = g[i] * y[i] * (1 - y[i])


@njit(cache=True)
def tanh_grad(g, y, out):
    for i in range(out.size):
        out[i] = g[i] * (1 - y[i] * y[i])


# --- unary ------------------------------------------------------------------------------------


@njit(cache=True)
def negative(x, out):
    for i in range(x.size):
        out[i] = -x[i]


@njit(cache=True)
def exp(x, out):
    for i in range(x.size):
        out[i] = np.exp(x[i])


@njit(cache=True)
def log(x, out):
    for i in range(x.size):
        out[i] = np.log(x[i])


@njit(cache=True)
def log1p(x, out):
    for i in range(x.size):
        out[i] = np.log1p(x[i])


@njit(cache=True)
def expm1(x, out):
    for i in range(x.size):
        out[i] = np.expm1(x[i])


@njit(cache=True)
def sqrt(x, out):
    for i in range(x.size):
        out[i] = np.sqrt(x[i])


@njit(cache=True)
def square(x, out):
    for i in range(x.size):
        out[i] = x[i] * x[i]


@njit(cache=True)
def absolute(x, out):
    for i in range(x.size):
        v = x[i]
        out[i] = -v if v < 0 else v


@njit(cache=True)
def sign(x, out):
    for i in range(x.size):
        v = x[i]
        out[i] = 1 if v > 0 else (-1 if v < 0 else 0)


@njit(cache=True)
def relu(x, out):
    for i in range(x.size):
        v = x[i]
        out[i] = v if v > 0 else 0


@njit(cache=True)
def sigmoid(x, out):
    for i in range(x.size):
        v = x[i]
        if v >= 0:
            out[i] = 1.0 / (1.0 + np.exp(-v))
        else:
            e = np.exp(v)
            out[i] = e / (1.0 + e)


@njit(cache=True)
def tanh(x, out):
    for i in range(x.size):
        out[i] = np.tanh(x[i])


@njit(cache=True)
def softplus(x, out):
    for i in range(x.size):
        v = x[i]
        out[i] = (v if v > 0 else 0) + np.log1p(np.exp(-abs(v)))


@njit(cache=True)
def where(c, x, y, out):
    for i in range(out.size):
        out[i] = x[i] if c[i] else y[i]


@njit(cache=True)
def all_finite(x):
    for i in range(x.size):
        if not math.isfinite(x[i]):
            return False
    return True


# --- Python wrappers: shapes in, arrays out --------------------------------------------------


def _flat_operand(x: np.ndarray, out_shape: tuple) -> np.ndarray:
    if x.shape == out_shape:
        return np.ascontiguousarray(x).reshape(-1)
    core = x.shape
    while core and core[0] == 1:
        core = core[1:]
    if core == out_shape[len(out_shape) - len(core):]:
        return np.ascontiguousarray(x).reshape(-1)  # suffix broadcast: indexed modulo its size
    return np.ascontiguousarray(np.broadcast_to(x, out_shape)).reshape(-1)


def prepare_binary(a: np.ndarray, b: np.ndarray):
    """Flattened operands and the broadcast output shape for a binary kernel."""
    if a.shape == b.shape:
        return np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1), a.shape
    shape = np.broadcast_shapes(a.shape, b.shape)
    return _flat_operand(a, shape), _flat_operand(b, shape), shape


def binary(kernel, a: np.ndarray, b: np.ndarray, out_dtype=None) -> np.ndarray:
    fa, fb, shape = prepare_binary(a, b)
    out = np.empty(shape, dtype=out_dtype or a.dtype)
    if out.size:
        kernel(fa, fb, out.reshape(-1))
    return out


def unary(kernel, x: np.ndarray, out_dtype=None) -> np.ndarray:
    out = np.empty(x.shape, dtype=out_dtype or x.dtype)
    if out.size:
        kernel(np.ascontiguousarray(x).reshape(-1), out.reshape(-1))
    return out


def select(cond: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    shape = np.broadcast_shapes(cond.shape, x.shape, y.shape)
    out = np.empty(shape, dtype=x.dtype)
    if out.size:
        flat = [np.ascontiguousarray(np.broadcast_to(v, shape)).reshape(-1) for v in (cond, x, y)]
        where(flat[0], flat[1], flat[2], out.reshape(-1))
    return out


def add_n(arrays) -> np.ndarray:
    out = np.array(arrays[0], copy=True, order="C")
    flat = out.reshape(-1)
    for a in arrays[1:]:
        add(flat, np.ascontiguousarray(a).reshape(-1), flat)
    return out


def matmul(a: np.ndarray, b: np.ndarray, transpose_a: bool = False, transpose_b: bool = False) -> np.ndarray:
    """2-D product through BLAS (NumPy's matmul); transposes are views, not copies."""
    return np.matmul(a.T if transpose_a else a, b.T if transpose_b else b)
