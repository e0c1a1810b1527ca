"""Kernels that write into a preallocated output, by op type (the buffer-reuse half of a plan).

Signature ``f(out, *inputs) -> array``: ``out`` is the buffer the plan kept from an earlier
run (or ``None``); a kernel uses it when shape and dtype fit and otherwise allocates, and the
plan keeps whatever it returns. Results are identical to the op's ordinary kernel.
"""

from __future__ import annotations

import numpy as np

from engine.kernels import array as KA


def _fits(out, shape, dtype):
    return out is not None and out.shape == shape and out.dtype == dtype


def _matmul(op, ctx):
    ta, tb = op.attrs["transpose_a"], op.attrs["transpose_b"]

    def matmul(out, a, b):
        a2 = a.T if ta else a  # transposes are views: BLAS reads them with its trans flag
        b2 = b.T if tb else b
        if a2.ndim != 2 or b2.ndim != 2 or a2.shape[1] != b2.shape[0]:
            return np.matmul(a2, b2)  # the ordinary path raises the usual error
        shape = (a2.shape[0], b2.shape[1])
        dtype = a.dtype  # MatMul's inference made both inputs one dtype
        if not _fits(out, shape, dtype):
            out = np.empty(shape, dtype)
        if a2.shape[1] == 1:  # an outer product: BLAS's gemm is ~5x slower than a broadcast multiply here
            return np.multiply(a2, b2, out=out)
        return np.matmul(a2, b2, out=out)

    return matmul


def _gather(op, ctx):
    def gather(out, params, indices):
        rows = params.shape[0]
        if params.ndim < 1 or params.size == 0 or indices.size == 0:
            return KA.gather(params, indices)
        p2 = params.reshape(rows, -1)
        idx = indices.reshape(-1)
        shape = indices.shape + params.shape[1:]
        if not _fits(out, shape, params.dtype):
            out = np.empty(shape, params.dtype)
        bad = KA.gather_rows(p2, idx, out.reshape(idx.size, -1))
        if bad >= 0:
            raise ValueError(f"index {int(idx[bad])} at position {bad} is out of range [0, {rows})")
        return out

    return gather


def _concat(op, ctx):
    axis = op.attrs["axis"]

    def concat(out, *xs):
        if not xs or any(x.ndim != xs[0].ndim for x in xs) or xs[0].ndim == 0:
            return np.concatenate(xs, axis=axis)
        ax = axis % xs[0].ndim
        shape = list(xs[0].shape)
        shape[ax] = sum(x.shape[ax] for x in xs)
        shape = tuple(shape)
        if not _fits(out, shape, xs[0].dtype) or any(x.dtype != out.dtype for x in xs):
            return np.concatenate(xs, axis=axis)
        return np.concatenate(xs, axis=axis, out=out)

    return concat


OUT_KERNELS = {"MatMul": _matmul, "GatherV2": _gather, "ConcatV2": _concat}
