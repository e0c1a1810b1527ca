"""Indexing kernels: gather rows, scatter-add rows (densify sparse gradients), merge duplicate sparse rows. Pure
data movement (reshape, transpose, concat, cast) is NumPy's in ``ops/array.py``: a copy Numba would not make faster.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def gather_rows(params, idx, out):
    v = params.shape[0]
    for i in range(idx.size):
        j = idx[i]
        if j < 0 or j >= v:
            return i  # position of the first bad index
        for k in range(params.shape[1]):  # element by element: a slice copy per row costs ~5x more
            out[i, k] = params[j, k]
    return -1


@njit(cache=True)
def scatter_add_rows(out, values, idx):
    for i in range(idx.size):
        out[idx[i], :] += values[i, :]


def check_rows(indices, rows: int, what: str = "index") -> np.ndarray:
    """``indices`` flattened, or a ValueError naming the first outside [0, rows): the references' check (no
    wrap-around of negative indices, as NumPy would), worded as the kernels word theirs."""
    flat = np.asarray(indices).reshape(-1)
    bad = np.flatnonzero((flat < 0) | (flat >= rows))
    if bad.size:
        raise out_of_range(flat, int(bad[0]), rows, what)
    return flat


def out_of_range(flat_indices: np.ndarray, position: int, rows: int, what: str = "index") -> ValueError:
    """The one wording of a bad row index, for every kernel and reference that checks one."""
    return ValueError(f"{what} {int(flat_indices[position])} at position {position} is out of range [0, {rows})")


def gather(params: np.ndarray, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``params[indices]`` along axis 0, written into ``out`` when it has the result's shape and dtype (a plan's
    kept buffer); an out-of-range index is a ValueError naming it."""
    rows = params.shape[0]
    shape = indices.shape + params.shape[1:]
    if out is None or out.shape != shape or out.dtype != params.dtype:
        out = np.empty(shape, params.dtype)
    idx = np.ascontiguousarray(indices).reshape(-1)
    if idx.size:
        width = math.prod(params.shape[1:])  # reshape(n, -1) of 0 rows has no width to infer
        bad = gather_rows(np.ascontiguousarray(params).reshape(rows, width), idx, out.reshape(idx.size, width))
        if bad >= 0:
            raise out_of_range(idx, bad, rows)
    return out


def scatter_add_dense(values: np.ndarray, indices: np.ndarray, dense_shape) -> np.ndarray:
    """The dense tensor of ``dense_shape`` that a sparse (values, indices) gradient stands for."""
    dense_shape = tuple(int(d) for d in dense_shape)
    out = np.zeros(dense_shape, dtype=values.dtype)
    idx = np.ascontiguousarray(indices).reshape(-1)
    if idx.size:
        check_rows(idx, dense_shape[0])
        scatter_add_rows(out.reshape(dense_shape[0], -1), np.ascontiguousarray(values).reshape(idx.size, -1), idx)
    return out


@njit(cache=True)
def merge_duplicate_rows(values, idx, pos, uniq, merged):
    """Sum the rows of a sparse gradient that share an index, in occurrence order, without sorting: ``pos`` (one entry
    per variable row, all -1, restored) maps a row to its place in ``uniq``/``merged``. Returns the number of distinct
    rows, or -(k+1) when ``idx[k]`` is out of range."""
    u = 0
    n_rows = pos.size
    result = 0
    for k in range(idx.size):
        r = idx[k]
        if r < 0 or r >= n_rows:
            result = -(k + 1)
            break
        p = pos[r]
        if p < 0:
            pos[r] = u
            uniq[u] = r
            for j in range(values.shape[1]):
                merged[u, j] = values[k, j]
            u += 1
        else:
            for j in range(values.shape[1]):
                merged[p, j] += values[k, j]
    for q in range(u):
        pos[uniq[q]] = -1
    return result if result < 0 else u


def merge_sparse_rows(values: np.ndarray, indices: np.ndarray, n_rows: int, scratch: dict | None = None):
    """(distinct row indices, their summed gradient rows) of a sparse gradient; ValueError on a bad index. ``scratch``
    (a dict the caller keeps, one per update op) holds the row map and buffers, so a step allocates nothing here."""
    idx = np.ascontiguousarray(indices).reshape(-1)
    width = math.prod(np.shape(values)[np.ndim(indices):])  # not np.prod: ~4 us on a tuple, 3 sparse updates a step
    v2 = np.ascontiguousarray(values).reshape(idx.size, width)
    scratch = {} if scratch is None else scratch
    merged = scratch.get("merged")
    if merged is None or merged.shape[0] < idx.size or merged.shape[1:] != v2.shape[1:] or merged.dtype != v2.dtype:
        merged = scratch["merged"] = np.empty_like(v2)
        scratch["uniq"] = np.empty(idx.size, np.int64)
    uniq = scratch["uniq"]
    if idx.size == 0:
        return uniq[:0], merged[:0]
    pos = scratch.get("pos")
    if pos is None or pos.size != n_rows:
        pos = scratch["pos"] = np.full(n_rows, -1, np.int64)
    count = merge_duplicate_rows(v2, idx, pos, uniq, merged)
    if count < 0:
        raise out_of_range(idx, -count - 1, n_rows, "sparse gradient index")
    return uniq[:count], merged[:count]


@njit(cache=True)
def outer_into(out, a, b):
    """``out[i, j] = a[i] * b[j]``: a product with inner dimension 1, its one term added to +0.0 as
    ``np.matmul`` (BLAS) and the compiled plans' loops add it (so ``-0.0 * 1`` gives 0.0 there too)."""
    for i in range(a.size):
        x = a[i]
        for j in range(b.size):
            out[i, j] = 0.0 + x * b[j]


@njit(cache=True)
def concat_rows_into(out, xs):
    """``np.concatenate(xs, axis=1, out=out)`` for 2-D arrays: row by row, each output row written
    once while it is in cache (NumPy copies input by input, a strided pass over ``out`` per input)."""
    for i in range(out.shape[0]):
        start = 0
        for x in xs:
            for k in range(x.shape[1]):
                out[i, start + k] = x[i, k]
            start += x.shape[1]
