"""Fused optimizer updates: one pass over a variable (and its slots) per step, in place.

Adam's scalars (``c1 = 1 - beta1``, ``c2 = 1 - beta2``, the rate) come in the variable's
dtype, so a float32 variable is updated in float32 arithmetic throughout (as PyTorch's fused
Adam does) and a float64 one in float64.

Dense variants take flattened views of the variable, its slots and the gradient; sparse
variants take 2-D row views and the unique row indices a gather's gradient touched, and
leave every other row (and its slots) untouched.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True)
def sgd_dense(var, grad, lr):
    for i in range(var.size):
        var[i] -= lr * grad[i]


@njit(cache=True)
def sgd_sparse(var, values, idx, lr):
    for k in range(idx.size):
        r = idx[k]
        for j in range(var.shape[1]):
            var[r, j] -= lr * values[k, j]


@njit(cache=True)
def momentum_dense(var, accum, grad, lr, momentum, nesterov):
    for i in range(var.size):
        a = accum[i] * momentum + grad[i]
        accum[i] = a
        if nesterov:
            var[i] -= lr * (grad[i] + momentum * a)
        else:
            var[i] -= lr * a


@njit(cache=True)
def momentum_sparse(var, accum, values, idx, lr, momentum, nesterov):
    for k in range(idx.size):
        r = idx[k]
        for j in range(var.shape[1]):
            g = values[k, j]
            a = accum[r, j] * momentum + g
            accum[r, j] = a
            if nesterov:
                var[r, j] -= lr * (g + momentum * a)
            else:
                var[r, j] -= lr * a


@njit(cache=True)
def adam_dense(var, m, v, grad, lr_t, beta1, c1, beta2, c2, epsilon):
    for i in range(var.size):
        g = grad[i]
        mi = beta1 * m[i] + c1 * g
        vi = beta2 * v[i] + c2 * g * g
        m[i] = mi
        v[i] = vi
        var[i] -= lr_t * mi / (np.sqrt(vi) + epsilon)


@njit(cache=True, parallel=True)
def adam_dense_parallel(var, m, v, grad, lr_t, beta1, c1, beta2, c2, epsilon):
    """``adam_dense`` split across threads, for variables above PARALLEL_MIN_ELEMENTS."""
    for i in prange(var.size):
        g = grad[i]
        mi = beta1 * m[i] + c1 * g
        vi = beta2 * v[i] + c2 * g * g
        m[i] = mi
        v[i] = vi
        var[i] -= lr_t * mi / (np.sqrt(vi) + epsilon)


@njit(cache=True)
def adam_sparse(var, m, v, values, idx, lr_t, beta1, c1, beta2, c2, epsilon):
    for k in range(idx.size):
        r = idx[k]
        for j in range(var.shape[1]):
            g = values[k, j]
            mi = beta1 * m[r, j] + c1 * g
            vi = beta2 * v[r, j] + c2 * g * g
            m[r, j] = mi
            v[r, j] = vi
            var[r, j] -= lr_t * mi / (np.sqrt(vi) + epsilon)


@njit(cache=True)
def adagrad_dense(var, accum, grad, lr):
    for i in range(var.size):
        g = grad[i]
        a = accum[i] + g * g
        accum[i] = a
        var[i] -= lr * g / np.sqrt(a)


@njit(cache=True)
def adagrad_sparse(var, accum, values, idx, lr):
    for k in range(idx.size):
        r = idx[k]
        for j in range(var.shape[1]):
            g = values[k, j]
            a = accum[r, j] + g * g
            accum[r, j] = a
            var[r, j] -= lr * g / np.sqrt(a)
