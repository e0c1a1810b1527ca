"""Fused optimizer updates: one pass over a variable (and its slots) per step, in place.

Adam's scalars (``c1 = 1 - beta1``, ``c2 = 1 - beta2``, the rate) come in the variable's dtype: float32 variables are
updated in float32 throughout, as PyTorch's fused Adam. Each optimizer's arithmetic is written once; the sparse loops
touch only the distinct rows a gather's gradient names. ``error_model="numpy"``: IEEE division, no ZeroDivisionError
check, lets LLVM vectorize the loops (Adam: ~5x) with the same values.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

CHUNK = 1 << 16  # elements per task of the parallel dense Adam


@njit(cache=True, error_model="numpy")
def sgd_dense(var, grad, lr):
    for i in range(var.size):
        var[i] -= lr * grad[i]


@njit(cache=True, error_model="numpy")
def sgd_sparse(var, values, idx, lr):
    for k in range(idx.size):
        sgd_dense(var[idx[k]], values[k], lr)


@njit(cache=True, error_model="numpy")
def momentum_dense(var, accum, grad, lr, momentum, nesterov):
    for i in range(var.size):
        a = accum[i] * momentum + grad[i]
        accum[i] = a
        if nesterov:
            var[i] -= lr * (grad[i] + momentum * a)
        else:
            var[i] -= lr * a


@njit(cache=True, error_model="numpy")
def momentum_sparse(var, accum, values, idx, lr, momentum, nesterov):
    for k in range(idx.size):
        r = idx[k]
        momentum_dense(var[r], accum[r], values[k], lr, momentum, nesterov)


@njit(inline="always", error_model="numpy")
def _adam_step(x, m, v, g, lr_t, beta1, c1, beta2, c2, epsilon):
    """Adam's update of one value: (x, m, v) after gradient ``g`` — the one definition both loops inline."""
    mi = beta1 * m + c1 * g
    vi = beta2 * v + c2 * g * g
    return x - lr_t * mi / (np.sqrt(vi) + epsilon), mi, vi


@njit(cache=True, error_model="numpy")
def adam_dense(var, m, v, grad, lr_t, beta1, c1, beta2, c2, epsilon):
    for i in range(var.size):
        var[i], m[i], v[i] = _adam_step(var[i], m[i], v[i], grad[i], lr_t, beta1, c1, beta2, c2, epsilon)


@njit(cache=True, parallel=True, error_model="numpy")
def adam_dense_parallel(var, m, v, grad, lr_t, beta1, c1, beta2, c2, epsilon):
    """``adam_dense`` on CHUNK-element pieces split across threads (variables above PARALLEL_MIN_ELEMENTS)."""
    for c in prange((var.size + CHUNK - 1) // CHUNK):
        s = slice(c * CHUNK, min(var.size, (c + 1) * CHUNK))
        adam_dense(var[s], m[s], v[s], grad[s], lr_t, beta1, c1, beta2, c2, epsilon)


@njit(cache=True, error_model="numpy")
def adam_sparse(var, m, v, values, idx, lr_t, beta1, c1, beta2, c2, epsilon):
    """``adam_dense``'s step on the rows ``idx`` (2-D indexing: no row views per update)."""
    for k in range(idx.size):
        r = idx[k]
        for i in range(var.shape[1]):
            var[r, i], m[r, i], v[r, i] = _adam_step(var[r, i], m[r, i], v[r, i], values[k, i], lr_t, beta1, c1,
                                                     beta2, c2, epsilon)


@njit(cache=True, error_model="numpy")
def adagrad_dense(var, accum, grad, lr):
    for i in range(var.size):
        g = grad[i]
        a = accum[i] + g * g
        accum[i] = a
        var[i] -= lr * g / np.sqrt(a)


@njit(cache=True, error_model="numpy")
def adagrad_sparse(var, accum, values, idx, lr):
    for k in range(idx.size):
        r = idx[k]
        adagrad_dense(var[r], accum[r], values[k], lr)
