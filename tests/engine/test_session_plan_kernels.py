"""Kernels the fast plans rely on: sparse-gradient row merging, float32 Adam, outer-product matmul,
row-by-row concatenation of large batches."""

from __future__ import annotations

import numpy as np
import pytest

import engine as en
from engine.kernels import array as KA


def test_merge_sparse_rows_sums_duplicates_in_occurrence_order_without_densifying():
    values = np.arange(12, dtype=np.float32).reshape(6, 2)
    idx = np.array([3, 1, 3, 0, 1, 3])
    uniq, merged = KA.merge_sparse_rows(values, idx, 5)
    assert list(uniq) == [3, 1, 0]
    np.testing.assert_array_equal(merged, [values[0] + values[2] + values[5], values[1] + values[4], values[3]])
    uniq2, _ = KA.merge_sparse_rows(values, idx, 5)  # the scratch map was restored
    assert list(uniq2) == [3, 1, 0]


def test_merge_sparse_rows_names_an_out_of_range_index():
    with pytest.raises(ValueError, match=r"index 9 at position 1 is out of range \[0, 4\)"):
        KA.merge_sparse_rows(np.ones((2, 3)), np.array([0, 9]), 4)


def test_float32_adam_with_duplicate_sparse_rows_matches_a_float32_reference():
    table0 = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    table = en.Variable(table0.copy(), name="table")
    ids = en.placeholder(en.int64, (None,), name="ids")
    loss = en.reduce_sum(en.square(en.gather(table, ids)))
    step = en.train.AdamOptimizer(0.1).minimize(loss)
    sess = en.Session()
    sess.run(en.global_variables_initializer())
    batch = np.array([1, 4, 1])
    sess.run(step, {ids: batch})
    w = table0.copy()
    g = np.zeros_like(w)
    np.add.at(g, batch, 2 * w[batch])
    rows = np.unique(batch)
    f = np.float32
    m = f(0.1) * g[rows]
    v = f(0.001) * g[rows] * g[rows]
    lr_t = f(0.1 * np.sqrt(1 - 0.999) / (1 - 0.9))
    w[rows] -= lr_t * m / (np.sqrt(v) + f(1e-8))
    np.testing.assert_allclose(sess.run(table), w, rtol=1e-6, atol=1e-7)


def test_concat_of_a_large_batch_along_columns_is_numpy_concatenate_bit_for_bit():
    from engine.ops import array as A

    rows = A.CONCAT_ROWS_MIN + 3  # the row-by-row Numba copy; smaller batches take np.concatenate
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((rows, w)).astype(np.float32) for w in (8, 32, 4, 20)]
    inputs = [en.placeholder(en.float32, (None, p.shape[1]), name=f"p{k}") for k, p in enumerate(parts)]
    joined = en.concat(inputs, 1)
    out = en.Session().make_callable(en.square(joined), inputs)  # square: the concat writes a kept buffer
    np.testing.assert_array_equal(out(*parts), np.square(np.concatenate(parts, axis=1)))
    with pytest.raises(en.errors.InvalidArgumentError):  # rows that differ are still the usual error
        out(parts[0], parts[1][:-1], parts[2], parts[3])


@pytest.mark.parametrize("dtype", [en.float32, en.float64])
@pytest.mark.parametrize("transpose_a", [False, True])
def test_an_outer_product_matmul_gives_np_matmuls_signs_of_zero(dtype, transpose_a):
    """Found by a probe: the outer-product path (inner dimension 1) of a plan with passes on gave -0.0 where
    np.matmul, the passes-off plan and the reference backend give 0.0 (gemm adds each product to +0.0)."""
    a = np.array([[-0.0], [1.0], [0.0], [-2.0]], dtype.np)
    b = np.array([[1.0, -0.0, -3.0]], dtype.np)
    x = en.placeholder(dtype, a.T.shape if transpose_a else a.shape)
    y = en.placeholder(dtype, b.shape)
    product = en.matmul(x, y, transpose_a=transpose_a)
    fetch = en.square(product)  # a consumer: the product is written into a kept buffer
    feed = {x: a.T.copy() if transpose_a else a, y: b}
    want = np.matmul(a, b)
    for config in (en.SessionConfig(), en.SessionConfig(optimize=False, reuse_buffers=False),
                   en.SessionConfig(optimize=False, backend="reference")):
        got, _ = en.Session(config=config).run([product, fetch], feed)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want), err_msg=f"{config}: signs of zero")
