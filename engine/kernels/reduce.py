"""Reductions (sum, max) over any axes by two 2-D kernels: reduced axes trailing (``(M, R)``, row kernel) or leading
(``(R, M)``, column kernel: the bias gradient); any other layout is transposed once.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from engine import config


@njit(cache=True)
def sum_rows(x, out, zero):
    m, r = x.shape
    for i in range(m):
        acc = zero
        for j in range(r):
            acc += x[i, j]
        out[i] = acc


@njit(cache=True)
def sum_cols(x, out, zero):
    """Column sums, rows added in order into accumulators of ``zero``'s type (float64, as ``sum_rows``)."""
    r, m = x.shape
    acc = np.full(m, zero)
    for i in range(r):
        for j in range(m):
            acc[j] += x[i, j]
    for j in range(m):
        out[j] = acc[j]


@njit(cache=True, parallel=True)
def sum_rows_parallel(x, out, zero):
    """``sum_rows`` on blocks of 64 rows split across threads (arrays above PARALLEL_MIN_ELEMENTS)."""
    m = x.shape[0]
    for b in prange((m + 63) // 64):
        sum_rows(x[b * 64:min(m, b * 64 + 64)], out[b * 64:min(m, b * 64 + 64)], zero)


@njit(cache=True, parallel=True)
def sum_cols_parallel(x, out, zero):
    """``sum_cols`` on blocks of 64 columns split across threads; each column still sums rows in order."""
    m = x.shape[1]
    for b in prange((m + 63) // 64):
        sum_cols(x[:, b * 64:min(m, b * 64 + 64)], out[b * 64:min(m, b * 64 + 64)], zero)


@njit(cache=True)
def max_rows(x, out):
    m, r = x.shape
    for i in range(m):
        best = x[i, 0]
        for j in range(1, r):
            v = x[i, j]
            if v > best or v != v:
                best = v
        out[i] = best


@njit(cache=True)
def max_cols(x, out):
    r, m = x.shape
    for j in range(m):
        out[j] = x[0, j]
    for i in range(1, r):
        for j in range(m):
            v = x[i, j]
            if v > out[j] or v != v:
                out[j] = v


_ZEROS = (np.float64(0.0), np.int64(0))  # the accumulators' types: float64 for floats, int64 for integers


def accumulator(dtype) -> np.dtype:
    """The type a sum of ``dtype`` values adds in, here and in the NumPy references (ops/math.py, ops/array.py):
    float64 for floats, int64 for integers. A float32 sum rounds once, at the end (3e38 + 3e38 - 3e38 is 3e38, not
    the inf a float32 accumulator reaches), and a mean divides before that rounding."""
    return np.dtype(np.float64 if np.dtype(dtype).kind == "f" else np.int64)


_LAYOUTS: dict = {}  # (shape, axes, keepdims) -> (out_shape, m, r, layout): worked out once per shape


def _layout(shape: tuple, axes: tuple, keepdims: bool):
    key = (shape, axes, keepdims)
    found = _LAYOUTS.get(key)
    if found is None:
        rank = len(shape)
        kept = [d for d in range(rank) if d not in axes]
        out_shape = (tuple(1 if d in axes else shape[d] for d in range(rank)) if keepdims
                     else tuple(shape[d] for d in kept))
        m = math.prod(shape[d] for d in kept)
        r = math.prod(shape[d] for d in axes)
        if tuple(axes) == tuple(range(rank - len(axes), rank)):
            layout = "rows"
        elif tuple(axes) == tuple(range(len(axes))):
            layout = "cols"
        else:
            layout = tuple(kept + list(axes))  # the transpose that makes the reduced axes trailing
        found = (out_shape, m, r, layout)
        if len(_LAYOUTS) < 4096:
            _LAYOUTS[key] = found
    return found


def reduce(x: np.ndarray, axes: tuple, keepdims: bool, kind: str) -> np.ndarray:
    """``kind`` in sum/max/mean over ``axes`` (normalized, sorted, non-negative)."""
    out_shape, m, r, layout = _layout(x.shape, tuple(axes), keepdims)
    if kind == "max" and r == 0:
        raise ValueError(f"reduce_max over an empty axis of an array of shape {x.shape}")
    out = np.empty(m, dtype=x.dtype)
    if m == 0:
        return out.reshape(out_shape)
    # a mean adds and divides in the accumulator's type, then rounds once: a float32 mean of [3e38, 3e38, 0] is 2e38
    sums = np.empty(m, np.float64) if kind == "mean" and r and x.dtype != np.float64 else out
    big = x.size >= config.PARALLEL_MIN_ELEMENTS
    if layout == "rows":
        x2 = (x if x.flags.c_contiguous else np.ascontiguousarray(x)).reshape(m, r)
        largest, total = max_rows, sum_rows_parallel if big and m > 1 else sum_rows
    elif layout == "cols":
        x2 = (x if x.flags.c_contiguous else np.ascontiguousarray(x)).reshape(r, m)
        largest, total = max_cols, sum_cols_parallel if big and m > 64 else sum_cols
    else:
        x2 = np.ascontiguousarray(np.transpose(x, layout)).reshape(m, r)
        largest, total = max_rows, sum_rows
    if r == 0:  # a mean of nothing is NaN, without 0 / 0's RuntimeWarning
        out[:] = np.nan if kind == "mean" else 0
    elif kind == "max":
        largest(x2, out)
    else:
        total(x2, sums, _ZEROS[x.dtype.kind != "f"])
    if kind == "mean" and r:
        sums /= r
        if sums is not out:
            with np.errstate(over="ignore"):  # a mean beyond float32's range is inf, as a sum's is
                out[:] = sums
    return out.reshape(out_shape)


def sum_to_shape(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum a broadcast result back to ``shape`` (the inverse of NumPy broadcasting)."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = list(range(lead)) + [lead + i for i, d in enumerate(shape) if d == 1 and g.shape[lead + i] != 1]
    return reduce(g, tuple(axes), False, "sum").reshape(shape)


@njit(cache=True)
def all_finite(x):
    """False as soon as one element of the flat array ``x`` is NaN or infinite."""
    for i in range(x.size):
        if not math.isfinite(x[i]):
            return False
    return True
