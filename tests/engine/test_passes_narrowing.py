"""Narrowing: a product of which only slices are read (dense1's input gradient, read by the embeddings' slices only)
computes just those columns, with the gradients of the product computed whole."""

from __future__ import annotations

import numpy as np

import engine as en
from pipeline import models
from pipeline.features import CATEGORICAL_FIELDS

NARROWING_OFF = en.SessionConfig(passes=set(en.SessionConfig().passes) - {"narrowing"})


def _concat_model(transpose_b=False):
    """[features (fed), embedding a (4 wide), embedding b (2 wide)] @ kernel -> squared sum: the product's shape."""
    rng = np.random.default_rng(3)
    features = en.placeholder(en.float64, (None, 3), name="features")
    ids = en.placeholder(en.int32, (None,), name="ids")
    table_a = en.Variable(rng.normal(size=(5, 4)).astype(np.float64), name="table_a")
    table_b = en.Variable(rng.normal(size=(6, 2)).astype(np.float64), name="table_b")
    kernel_value = rng.normal(size=(9, 7)).astype(np.float64)
    kernel = en.Variable(kernel_value.T.copy() if transpose_b else kernel_value, name="kernel")
    x = en.concat([features, en.gather(table_a, ids), en.gather(table_b, ids)], axis=1)
    loss = en.reduce_sum(en.square(en.tanh(en.matmul(x, kernel, transpose_b=transpose_b))))
    feed = {features: rng.normal(size=(8, 3)).astype(np.float64), ids: np.array([0, 1, 4, 1, 2, 3, 0, 4], np.int32)}
    return loss, [table_a, table_b, kernel], feed


def _gradients(config, loss, variables, feed):
    grads = en.gradients(loss, variables)
    sess = en.Session(config=config)
    sess.run(en.global_variables_initializer())
    plan = sess.plan(grads, list(feed))
    vals = plan.slots([feed[t] for t in feed])
    out = plan.execute(vals)
    return out, plan, vals  # a gather's IndexedSlices fetched dense


def _narrowed_products(plan, vals):
    """(static width, run-time shape) of every product the plan computes narrowed."""
    return [(plan.labels[n.output], vals[n.output].shape) for n in plan.nodes
            if n.op_def.narrow is not None and "of axis" in plan.labels[n.output]]


def test_narrowed_gradients_equal_the_whole_products_and_the_reference():
    for transpose_b in (False, True):
        with en.Graph().as_default():
            loss, variables, feed = _concat_model(transpose_b=transpose_b)
            narrowed, plan, vals = _gradients(en.SessionConfig(), loss, variables, feed)
            whole, _, _ = _gradients(NARROWING_OFF, loss, variables, feed)
            reference, _, _ = _gradients(en.SessionConfig(backend="reference"), loss, variables, feed)
            assert [shape for _, shape in _narrowed_products(plan, vals)] == [(8, 6)]  # the 6 embedding columns
            for n, w, r in zip(narrowed, whole, reference):
                np.testing.assert_allclose(n, w, rtol=1e-12, atol=1e-12)
                np.testing.assert_allclose(n, r, rtol=1e-12, atol=1e-12)


def test_narrowed_embedding_gradient_matches_finite_differences():
    with en.Graph().as_default():
        loss, variables, feed = _concat_model()
        (g_a, _, _), _, _ = _gradients(en.SessionConfig(), loss, variables, feed)
        sess = en.Session(config=en.SessionConfig(backend="reference"))
        sess.run(en.global_variables_initializer())
        table = sess.run(variables[0])
        eps = 1e-6
        for i, j in [(0, 0), (1, 3), (4, 2), (2, 1)]:
            values = []
            for sign in (1, -1):
                moved = table.copy()
                moved[i, j] += sign * eps
                variables[0].load(moved, sess)
                values.append(sess.run(loss, feed))
            assert abs((values[0] - values[1]) / (2 * eps) - g_a[i, j]) < 1e-6 * max(1.0, abs(g_a[i, j]))


def test_narrowing_fires_on_the_products_training_step():
    """The forecaster's dense1 input gradient: only the embeddings' columns (the scaled features come first)."""
    dims = {f: 2 + k for k, f in enumerate(CATEGORICAL_FIELDS)}
    dense_size = 5
    config = models.ModelConfig(kind="mlp", dense_size=dense_size, vocab_sizes={f: 7 for f in CATEGORICAL_FIELDS},
                                embedding_dims=dims, hidden_units=(16, 8),
                                dense_mean=np.zeros(dense_size, np.float32), dense_std=np.ones(dense_size, np.float32))
    rows = 4
    with en.Graph().as_default():
        tensors = models.build(config, seed=0)
        target = en.placeholder(en.float32, (None,), name="target")
        loss = en.reduce_mean(en.square(tensors.log1p - target))
        train_op = en.train.AdamOptimizer(1e-3).minimize(loss)
        sess = en.Session()
        sess.run(en.global_variables_initializer())
        feed = {tensors.dense: np.ones((rows, dense_size), np.float32), target: np.zeros(rows, np.float32),
                **{tensors.categorical[f]: np.arange(rows, dtype=np.int32) for f in CATEGORICAL_FIELDS}}
        plan = sess.plan([train_op], list(feed))
        vals = plan.slots(list(feed.values()))
        plan.execute(vals)
    width = sum(dims.values())
    assert [shape for _, shape in _narrowed_products(plan, vals)] == [(rows, width)]
    assert f"[{dense_size}:{dense_size + width} of axis 1]" in _narrowed_products(plan, vals)[0][0]


def test_a_product_folded_to_a_constant_is_not_narrowed():
    """A product of constants (here dense1's input gradient under a constant grad_ys with a constant kernel) is
    folded at plan time into a Const node that keeps its MatMul op, so its OpDef still has `narrow`. The pass took
    it for a product to compute and gave it the narrowed kernel, which has no inputs to read there: every run failed
    ("narrowed() missing 2 required positional arguments"). A folded value is left whole; its slices read it."""
    rng = np.random.default_rng(5)
    with en.Graph().as_default():
        features = en.placeholder(en.float64, (8, 3), name="features")
        table = en.Variable(rng.normal(size=(8, 4)), name="table")
        kernel = en.constant(rng.normal(size=(7, 5)))
        product = en.matmul(en.concat([features, table], axis=1), kernel)
        grads = en.gradients(product, [table], grad_ys=[en.constant(rng.normal(size=(8, 5)))])
        results = {}
        for backend in ("kernels", "reference"):
            sess = en.Session(config=en.SessionConfig(backend=backend))
            sess.run(en.global_variables_initializer())
            plan = sess.plan(grads, [features])
            results[backend] = plan.execute(plan.slots([np.zeros((8, 3))]))[0]
            if backend == "kernels":
                assert any(n.const_value is not None and n.op_def.narrow is not None for n in plan.nodes)  # folded
    np.testing.assert_allclose(results["kernels"], results["reference"], rtol=1e-12, atol=1e-12)
