"""Neural-network kernels: softmax over the last axis (rows of a 2-D view)."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def softmax_rows(x, out):
    m, k = x.shape
    for i in range(m):
        mx = x[i, 0]
        for j in range(1, k):
            if x[i, j] > mx:
                mx = x[i, j]
        total = 0.0
        for j in range(k):
            e = np.exp(x[i, j] - mx)
            out[i, j] = e
            total += e
        for j in range(k):
            out[i, j] = out[i, j] / total


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    if x.size == 0:  # also an empty axis: nothing to normalize
        return np.empty(x.shape, x.dtype)
    moved = np.moveaxis(x, axis, -1)
    flat = np.ascontiguousarray(moved).reshape(-1, moved.shape[-1])
    out = np.empty_like(flat)
    softmax_rows(flat, out)
    return np.ascontiguousarray(np.moveaxis(out.reshape(moved.shape), -1, axis))
