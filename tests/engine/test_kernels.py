"""Kernels alone, against independent NumPy references, over several dtypes and layouts."""

from __future__ import annotations

import operator

import numpy as np
import pytest

from engine.kernels import array as KA
from engine.kernels import elementwise as EW
from engine.kernels import nn as KN
from engine.kernels import reduce as R

FLOATS = [np.float32, np.float64]
NUMERIC = FLOATS + [np.int32, np.int64]
SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 1), (1, 4)), ((2, 3, 4), (3, 1)), ((), (2, 3)), ((0, 3), (3,))]


def _arr(shape, dtype, seed, low=-3, high=3):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.uniform(low, high, size=shape).astype(dtype)
    return rng.integers(low, high, size=shape).astype(dtype)


def test_generated_op_kernel_broadcasts_and_takes_non_contiguous_inputs():
    """Elementwise kernels come from scalar functions (the registry test checks every op; this the wrapper)."""
    from engine.ops.math import _square

    add, square = EW.op_kernel(operator.add, 2), EW.op_kernel(_square, 1)
    x = np.arange(24, dtype=np.float64).reshape(4, 6)[:, ::2]
    np.testing.assert_array_equal(square(x), x ** 2)
    np.testing.assert_array_equal(add(x, x.T.copy().T), x + x)
    for shapes in SHAPES:
        a, b = _arr(shapes[0], np.int32, 1), _arr(shapes[1], np.int32, 2)
        np.testing.assert_array_equal(add(a, b), a + b)


def test_scalar_functions_must_be_copyable_into_kernels():
    with pytest.raises(ValueError, match="plain module-level def"):
        EW.check_scalar(lambda x: x, "Bad")
    offset = 1.0

    def closure(x):
        return x + offset

    with pytest.raises(ValueError, match="no closure"):
        EW.check_scalar(closure, "Bad")
    # an operator the generator has no expression for: told which ones it has (it was told to write a def only)
    with pytest.raises(ValueError, match=r"operator\.floordiv is not one of the operators .*operator\.truediv"):
        EW.check_scalar(operator.floordiv, "FloorDiv")


@pytest.mark.parametrize("dtype", NUMERIC)
@pytest.mark.parametrize("axes", [(0,), (1,), (2,), (0, 1), (1, 2), (0, 2), (0, 1, 2)], ids=str)
@pytest.mark.parametrize("kind,ref", [("sum", np.sum), ("max", np.max)])
def test_reductions(kind, ref, axes, dtype):
    x = _arr((3, 4, 5), dtype, 8)
    for keepdims in (False, True):
        got = R.reduce(x, axes, keepdims, kind)
        expected = ref(x, axis=axes, keepdims=keepdims)
        assert got.shape == expected.shape and got.dtype == x.dtype
        np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_mean_and_sum_to_shape():
    x = _arr((3, 4), np.float64, 9)
    np.testing.assert_allclose(R.reduce(x, (0,), False, "mean"), x.mean(axis=0))
    g = _arr((2, 3, 4), np.float64, 10)
    np.testing.assert_allclose(R.sum_to_shape(g, (3, 1)), g.sum(axis=(0, 2)).reshape(3, 1))
    np.testing.assert_allclose(R.sum_to_shape(g, ()), g.sum())


def test_float32_sums_over_leading_axes_accumulate_in_float64_fused_or_not():
    """2**24 + 1 + 1 is 2**24 added in float32, 2**24 + 2 in float64 (and 2**24 + 2 is a float32):
    reduce_sum over rows, mean, SumToShape (a bias gradient) and its fused form all give the latter."""
    import engine as en

    x = np.array([[2.0 ** 24, 1.0], [1.0, 1.0], [1.0, 1.0]], np.float32)
    assert R.reduce(x, (0,), False, "sum").tolist() == [2.0 ** 24 + 2, 3.0]
    assert R.reduce(np.ones((3, 100), np.float32) * x[:, :1], (0,), False, "sum")[0] == 2.0 ** 24 + 2
    assert R.sum_to_shape(x, (2,)).tolist() == [2.0 ** 24 + 2, 3.0]
    graph = en.Graph()
    with graph.as_default():  # the bias exists before the op, as a layer's does (fusion's row-sum case)
        bias = en.constant(np.zeros(2, np.float32))
        xs = en.placeholder(en.float32, (3, 2))
        y = en.relu(xs)
        fetch = [y, graph.create_op("SumToShape", [y, bias]).outputs[0]]
    for config in (en.SessionConfig(), en.SessionConfig(optimize=False)):
        plan = en.Session(graph, config).plan(fetch, [xs])
        assert any(step.also for step in plan.steps) == config.optimize  # fused: the row sum in relu's kernel
        assert en.Session(graph, config).run(fetch, {xs: x})[1].tolist() == [2.0 ** 24 + 2, 3.0]


@pytest.mark.parametrize("dtype", FLOATS)
def test_softmax(dtype):
    x = _arr((4, 6), dtype, 11, -50, 50)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(KN.softmax(x), e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
    e0 = np.exp(x - x.max(axis=0, keepdims=True))
    np.testing.assert_allclose(KN.softmax(x, 0), e0 / e0.sum(axis=0, keepdims=True), rtol=1e-5, atol=1e-7)
    for shape, axis in (((3, 0), -1), ((0, 3), 0), ((3, 0), 0)):  # an empty axis gives an empty result (torch)
        assert KN.softmax(np.zeros(shape, dtype), axis).shape == shape


@pytest.mark.parametrize("dtype", NUMERIC)
@pytest.mark.parametrize("idx_dtype", [np.int32, np.int64])
def test_gather_and_scatter(dtype, idx_dtype):
    params = _arr((6, 2, 3), dtype, 12)
    idx = np.array([[5, 0], [0, 3]], dtype=idx_dtype)
    np.testing.assert_array_equal(KA.gather(params, idx), params[idx])
    values = _arr((4, 2, 3), dtype, 13)
    expected = np.zeros_like(params)
    np.add.at(expected, idx.reshape(-1), values)
    np.testing.assert_array_equal(KA.scatter_add_dense(values, idx.reshape(-1), params.shape), expected)
    with pytest.raises(ValueError, match="index 6 at position 1 is out of range"):
        KA.gather(params, np.array([0, 6], dtype=idx_dtype))


def test_merge_sparse_rows_sums_duplicates_and_reuses_its_scratch():
    scratch = {}
    for _ in range(2):  # the second call reuses the buffers and finds the row map reset
        uniq, vals = KA.merge_sparse_rows(np.array([[1.0], [2.0], [3.0]]), np.array([4, 1, 4]), 6, scratch)
        np.testing.assert_array_equal(uniq, [4, 1])
        np.testing.assert_array_equal(vals, [[4.0], [2.0]])
        assert (scratch["pos"] == -1).all()
    with pytest.raises(ValueError, match="index 6 at position 0 is out of range"):
        KA.merge_sparse_rows(np.ones((1, 1)), np.array([6]), 6, scratch)


@pytest.mark.parametrize("dtype", FLOATS)
def test_adam_parallel_and_sparse_forms_are_the_serial_loop_on_chunks_and_rows(dtype):
    """One update loop per optimizer: the parallel Adam runs it on chunks, the sparse one on touched rows."""
    from engine.kernels import train as KT

    rng = np.random.default_rng(7)
    var, m = rng.standard_normal((2, 70_000)).astype(dtype)
    v = rng.uniform(1e-6, 1.0, 70_000).astype(dtype)
    grad = rng.standard_normal(70_000).astype(dtype)
    scalars = tuple(dtype(s) for s in (1e-3, 0.9, 0.1, 0.999, 0.001, 1e-7))
    serial, parallel = [a.copy() for a in (var, m, v)], [a.copy() for a in (var, m, v)]
    KT.adam_dense(*serial, grad, *scalars)
    KT.adam_dense_parallel(*parallel, grad, *scalars)  # two chunks of KT.CHUNK and a rest
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)
    rows, values = np.array([5, 0, 9]), grad[:96].reshape(3, 32)
    tables = [a[:320].reshape(10, 32).copy() for a in (var, m, v)]
    want = [t.copy() for t in tables]
    for k, r in enumerate(rows):  # touched rows: the dense loop on that row; the others stay as they were
        KT.adam_dense(*[w[r] for w in want], values[k], *scalars)
    KT.adam_sparse(*tables, values, rows, *scalars)
    for a, b in zip(tables, want):
        np.testing.assert_array_equal(a, b)
