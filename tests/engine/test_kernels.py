"""Kernels alone, against independent NumPy references, over several dtypes and layouts."""

from __future__ import annotations

import numpy as np
import pytest

from engine.kernels import array as KA
from engine.kernels import math as K
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


@pytest.mark.parametrize("dtype", NUMERIC)
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
@pytest.mark.parametrize("kernel,ref", [(K.add, np.add), (K.subtract, np.subtract), (K.multiply, np.multiply),
                                        (K.maximum, np.maximum), (K.minimum, np.minimum)],
                         ids=lambda v: getattr(v, "__name__", ""))
def test_binary_arithmetic(kernel, ref, shapes, dtype):
    a, b = _arr(shapes[0], dtype, 1), _arr(shapes[1], dtype, 2)
    got = K.binary(kernel, a, b)
    expected = ref(a, b)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_divide_and_power(shapes, dtype):
    a, b = _arr(shapes[0], dtype, 3, 0.5, 2), _arr(shapes[1], dtype, 4, 0.5, 2)
    np.testing.assert_allclose(K.binary(K.divide, a, b), a / b, rtol=1e-6)
    np.testing.assert_allclose(K.binary(K.power, a, b), a ** b, rtol=1e-5)


@pytest.mark.parametrize("dtype", NUMERIC)
@pytest.mark.parametrize("kernel,ref", [(K.greater, np.greater), (K.less, np.less), (K.equal, np.equal),
                                        (K.greater_equal, np.greater_equal), (K.less_equal, np.less_equal),
                                        (K.not_equal, np.not_equal)], ids=lambda v: getattr(v, "__name__", ""))
def test_comparisons(kernel, ref, dtype):
    a, b = _arr((4, 5), dtype, 5, -2, 2), _arr((5,), dtype, 6, -2, 2)
    np.testing.assert_array_equal(K.binary(kernel, a, b, np.bool_), ref(a, b))


UNARY = [(K.negative, np.negative, -3, 3), (K.exp, np.exp, -3, 3), (K.log, np.log, 0.1, 3),
         (K.log1p, np.log1p, -0.5, 3), (K.expm1, np.expm1, -3, 3), (K.sqrt, np.sqrt, 0, 4),
         (K.square, np.square, -3, 3), (K.absolute, np.abs, -3, 3), (K.sign, np.sign, -3, 3),
         (K.relu, lambda x: np.maximum(x, 0), -3, 3), (K.sigmoid, lambda x: 1 / (1 + np.exp(-x)), -30, 30),
         (K.tanh, np.tanh, -3, 3), (K.softplus, lambda x: np.logaddexp(0, x), -30, 30)]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("kernel,ref,low,high", UNARY, ids=lambda v: getattr(v, "__name__", ""))
def test_unary(kernel, ref, low, high, dtype):
    x = _arr((3, 7), dtype, 7, low, high)
    got = K.unary(kernel, x)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, ref(x.astype(np.float64)), rtol=2e-6 if dtype == np.float32 else 1e-12,
                               atol=1e-6 if dtype == np.float32 else 1e-12)


def test_non_contiguous_inputs():
    x = np.arange(24, dtype=np.float64).reshape(4, 6)[:, ::2]
    np.testing.assert_array_equal(K.unary(K.square, x), x ** 2)
    np.testing.assert_array_equal(K.binary(K.add, x, x.T.copy().T), x + x)


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


@pytest.mark.parametrize("dtype", FLOATS)
def test_softmax(dtype):
    x = _arr((4, 6), dtype, 11, -50, 50)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(KN.softmax(x), e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
    e0 = np.exp(x - x.max(axis=0, keepdims=True))
    np.testing.assert_allclose(KN.softmax(x, 0), e0 / e0.sum(axis=0, keepdims=True), rtol=1e-5, atol=1e-7)


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


def test_unique_rows_sum_and_select_and_add_n():
    uniq, vals = KA.unique_rows_sum(np.array([[1.0], [2.0], [3.0]]), np.array([4, 1, 4]))
    np.testing.assert_array_equal(uniq, [1, 4])
    np.testing.assert_array_equal(vals, [[2.0], [4.0]])
    c = np.array([True, False, True])
    np.testing.assert_array_equal(K.select(c, np.ones((2, 3)), np.zeros(3)), np.where(c, 1.0, 0.0) * np.ones((2, 3)))
    arrays = [_arr((3, 2), np.float32, s) for s in range(3)]
    np.testing.assert_allclose(K.add_n(arrays), sum(arrays), rtol=1e-6)
    a, b = _arr((3, 4), np.float32, 1), _arr((5, 4), np.float32, 2)
    np.testing.assert_allclose(K.matmul(a, b, transpose_b=True), a @ b.T, rtol=1e-5)
