"""Gradients of composite graphs against central finite differences in float64.

Each op alone, over its registered examples, is checked by tests/engine/test_op_registry.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import engine as en
from engine import registry


def check_gradients(build, *arrays, static_shapes=None, eps=1e-6, rtol=1e-6, atol=1e-8, seed=0):
    """Compare ``en.gradients`` of ``sum(build(*x) * r)`` (fixed random ``r``) with central differences.

    ``arrays`` are float64 inputs fed through placeholders (``static_shapes`` may give them
    unknown dimensions). The random weighting ``r`` makes every output element matter.
    """
    graph = en.Graph()
    with graph.as_default():
        shapes = static_shapes or [a.shape for a in arrays]
        xs = [en.placeholder(en.float64, s, name=f"x{i}") for i, s in enumerate(shapes)]
        y = build(*xs)
        with en.Session() as probe:
            y_value = probe.run(y, dict(zip(xs, arrays)))
        r = np.random.default_rng(seed).uniform(0.5, 1.5, size=np.shape(y_value))
        loss = en.reduce_sum(en.multiply(y, en.constant(r, en.float64)))
        grads = en.gradients(loss, xs)
        sess = en.Session()
        feed = dict(zip(xs, arrays))
        symbolic = sess.run([g for g in grads if g is not None], feed)
        symbolic = iter(symbolic)
        for i, (x, a, g) in enumerate(zip(xs, arrays, grads)):
            numeric = np.zeros_like(a)
            flat = numeric.reshape(-1)
            for j in range(a.size):
                plus, minus = a.copy(), a.copy()
                plus.reshape(-1)[j] += eps
                minus.reshape(-1)[j] -= eps
                f_plus = sess.run(loss, {**feed, x: plus})
                f_minus = sess.run(loss, {**feed, x: minus})
                flat[j] = (f_plus - f_minus) / (2 * eps)
            if g is None:
                np.testing.assert_allclose(numeric, 0.0, atol=atol,
                                           err_msg=f"input {i}: no gradient but f depends on it")
                continue
            got = next(symbolic)
            assert got.shape == a.shape, f"input {i}: gradient shape {got.shape} != input shape {a.shape}"
            np.testing.assert_allclose(got, numeric, rtol=rtol, atol=max(atol, 1e-7 * np.abs(numeric).max()),
                                       err_msg=f"input {i}")


def rand(shape, low=-2.0, high=2.0, seed=0):
    return np.random.default_rng(seed).uniform(low, high, size=shape)


def test_python_operators():
    check_gradients(lambda x, y: (x + 2.0) * y - x / (y * y + 1.0) + (-x) ** 2.0 + x @ en.transpose(y),
                    rand((3, 3), seed=5), rand((3, 3), seed=6))


def test_unknown_batch_dimension_broadcast():
    # the bias gradient must be reduced at run time when the batch size is unknown statically
    check_gradients(lambda x, b: en.tanh(x + b), rand((5, 3), seed=8), rand((3,), seed=9),
                    static_shapes=[(None, 3), (3,)])


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_matmul(ta, tb):
    a = rand((4, 3) if ta else (3, 4), seed=10)
    b = rand((5, 4) if tb else (4, 5), seed=11)
    check_gradients(lambda x, y: en.matmul(x, y, transpose_a=ta, transpose_b=tb), a, b)


@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 2), (1, 2)])
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("op", [en.reduce_sum, en.reduce_mean, en.reduce_max], ids=lambda f: f.__name__)
def test_reductions(op, axis, keepdims):
    x = rand((2, 3, 4), seed=12)
    check_gradients(lambda t: op(t, axis=axis, keepdims=keepdims), x)


def test_softmax():
    check_gradients(en.softmax, rand((3, 5), seed=13))
    check_gradients(lambda x: en.softmax(x, axis=0), rand((4, 2), seed=14))


def test_shape_ops():
    x = rand((2, 3, 4), seed=15)
    check_gradients(lambda t: en.reshape(t, (6, -1)), x)
    check_gradients(lambda t: en.transpose(t, (2, 0, 1)), x)
    check_gradients(lambda t: en.transpose(t), x)
    check_gradients(lambda t: en.expand_dims(t, 1), x)
    check_gradients(lambda t: en.squeeze(t, axis=1), rand((3, 1, 2), seed=16))
    check_gradients(lambda t: en.placeholder_with_default(t, (2, 3, 4)), x)


def test_concat():
    check_gradients(lambda a, b, c: en.concat([a, b, c], axis=1), rand((2, 3), seed=17), rand((2, 1), seed=18),
                    rand((2, 4), seed=19))
    check_gradients(lambda a, b: en.concat([a, b], axis=0), rand((2, 3), seed=20), rand((4, 3), seed=21),
                    static_shapes=[(None, 3), (None, 3)])


def test_gather_with_repeated_indices():
    idx = np.array([[0, 2], [2, 3]], dtype=np.int64)
    check_gradients(lambda p: en.gather(p, idx), rand((5, 3), seed=22))
    # the same parameter used densely and sparsely: contributions are summed
    check_gradients(lambda p: en.gather(p, np.array([1, 1, 4])) * 2.0 + en.reduce_sum(p * p, axis=0), rand((5, 3)))


def test_where():
    cond = np.array([[True, False, True, False]])
    check_gradients(lambda x, y: en.where(cond, x, y), rand((3, 4), seed=23), rand((4,), seed=24))


def test_cast_add_n():
    check_gradients(lambda x: en.cast(en.cast(x, en.float32), en.float64) * 0 + en.add_n([x, x * x, en.exp(x)]),
                    rand((2, 3), seed=25))


def test_stop_gradient_blocks_flow():
    x = en.placeholder(en.float64, (2,))
    y = en.placeholder(en.float64, (2,))
    gx, gy = en.gradients(en.reduce_sum(en.stop_gradient(x * y) + 3.0 * x), [x, y])
    assert gy is None
    with en.Session() as s:
        np.testing.assert_array_equal(s.run(gx, {x: [1.0, 2.0], y: [3.0, 4.0]}), [3.0, 3.0])
    x = en.placeholder(en.float32, (2,))
    assert en.gradients(en.reduce_sum(en.stop_gradient(x)), [x]) == [None]


def test_unconnected_and_integer_inputs_get_none():
    x = en.placeholder(en.float32, (2,))
    z = en.placeholder(en.float32, (2,))
    i = en.placeholder(en.int32, (2,))
    y = en.reduce_sum(x * en.cast(i, en.float32))
    gx, gz, gi = en.gradients(y, [x, z, i])
    assert gx is not None and gz is None and gi is None


def test_no_ys_is_refused_and_no_xs_gives_no_gradients():
    """gradients([], xs) raised IndexError from inside the engine."""
    x = en.placeholder(en.float32, (2,), name="x")
    with pytest.raises(ValueError, match="ys is empty"):
        en.gradients([], [x])
    assert en.gradients(en.reduce_sum(x * x), []) == []


def test_paths_join_and_grad_ys():
    x = en.placeholder(en.float64, (3,))
    y = x * x + en.exp(x) + x  # three paths from x
    w = np.array([1.0, 2.0, 3.0])
    (g,) = en.gradients(y, [x], grad_ys=[en.constant(w, en.float64)])
    xv = np.array([0.1, 0.2, 0.3])
    with en.Session() as s:
        np.testing.assert_allclose(s.run(g, {x: xv}), w * (2 * xv + np.exp(xv) + 1))


def test_grad_ys_of_another_shape_than_y_is_refused_naming_y():
    """A scalar weight for a (3,) y built a graph that failed at run time in a gradient op, and for y = x the
    scalar came back as x's gradient."""
    x = en.placeholder(en.float32, (3,), name="x")
    y = en.multiply(x, 2.0, name="y")
    for ys, weight in ((y, 1.0), (y, np.ones(5, np.float32)), (x, np.float32(3.0))):
        with pytest.raises(ValueError, match=r"grad_ys for (y|x):0 has shape"):
            en.gradients(ys, [x], grad_ys=[weight])


def test_dropout_gradient_is_mask_over_keep_probability():
    x = en.placeholder(en.float64, (50, 4))
    y = en.dropout(x, rate=0.25, seed=3)
    (g,) = en.gradients(en.reduce_sum(y), [x])
    xv = rand((50, 4), 1.0, 2.0)
    with en.Session() as s:
        yv, gv = s.run([y, g], {x: xv})
    kept = yv != 0
    np.testing.assert_allclose(gv, kept / 0.75)
    np.testing.assert_allclose(yv[kept], xv[kept] / 0.75)
    assert 0.5 < kept.mean() < 0.95


def test_gradient_of_gather_is_sparse_but_fetched_dense():
    p = en.Variable(np.arange(12.0).reshape(4, 3), name="p")
    y = en.reduce_sum(en.gather(p, np.array([3, 0, 3])))
    (g,) = en.gradients(y, [p])
    assert isinstance(g, en.IndexedSlices)
    with en.Session() as s:
        s.run(en.global_variables_initializer())
        np.testing.assert_array_equal(s.run(g), [[1, 1, 1], [0, 0, 0], [0, 0, 0], [2, 2, 2]])


def test_missing_gradient_is_a_clear_error():
    x = en.placeholder(en.float64, (2,))
    y = en.nn.relu(x)
    y.op.op_def = dataclasses.replace(y.op.op_def, grad=None)  # as if Relu were registered without one
    with pytest.raises(LookupError, match="No gradient defined for op .*Relu"):
        en.gradients(en.reduce_sum(y), [x])


def test_sin_cos_and_pow_gradients_at_large_arguments_and_zero_bases():
    """d sin = cos exactly (sin(x + pi/2) was off by 0.06 at 1e8); d pow at x = 0 as torch: d/dx 0 where
    y == 0, d/dy 0 where y >= 0 and -inf where y < 0 (z = inf)."""
    x = en.placeholder(en.float64, (None,))
    y = en.placeholder(en.float64, (None,))
    big = np.array([1e8, -3e7, 0.5])
    dsin, dcos = en.gradients(en.reduce_sum(en.sin(x)), [x])[0], en.gradients(en.reduce_sum(en.cos(x)), [x])[0]
    dx, dy = en.gradients(en.reduce_sum(en.pow(x, y)), [x, y])
    with en.Session() as s:
        np.testing.assert_array_equal(s.run(dsin, {x: big}), np.cos(big))
        np.testing.assert_array_equal(s.run(dcos, {x: big}), -np.sin(big))
        gx, gy = s.run([dx, dy], {x: [0.0, 1.0, 0.0, 0.0, 2.0], y: [0.0, 0.0, 2.0, -1.0, 3.0]})
    np.testing.assert_array_equal(gx, [0.0, 0.0, 0.0, -np.inf, 12.0])
    np.testing.assert_array_equal(gy, [0.0, 0.0, 0.0, -np.inf, 8 * np.log(2.0)])
    check_gradients(lambda a: en.cos(a) * en.sin(a), rand((3, 4)))


def test_relu_propagates_nan_in_every_backend_fused_and_compiled():
    graph = en.Graph()
    with graph.as_default():
        x = en.placeholder(en.float32, (None, 3))
        out = en.relu(x + en.constant(np.zeros(3, np.float32)))
    feed = np.array([[np.nan, -1.0, 2.0]], np.float32)
    for config in (en.SessionConfig(), en.SessionConfig(optimize=False), en.SessionConfig(backend="reference")):
        np.testing.assert_array_equal(en.Session(graph, config).run(out, {x: feed}), [[np.nan, 0.0, 2.0]])
    np.testing.assert_array_equal(en.compiler.CompiledPlan(en.Session(graph), [out], [x])(feed)[0],
                                  [[np.nan, 0.0, 2.0]])


def test_gathers_with_int32_and_int64_indices_aggregate_into_one_sparse_gradient():
    w = en.Variable(np.ones((4, 2)), name="emb")
    ids = en.placeholder(en.int32, (None,))
    loss = en.reduce_sum(en.gather(w, ids)) + en.reduce_sum(en.gather(w, [0]))  # a list: int64 indices
    (g,) = en.gradients(loss, [w])
    assert isinstance(g, en.IndexedSlices) and g.indices.dtype == en.int64
    step = en.train.GradientDescentOptimizer(1.0).minimize(loss)
    with en.Session() as s:
        s.run(en.global_variables_initializer())
        np.testing.assert_array_equal(s.run(g, {ids: np.int32([0, 3])}), [[2, 2], [0, 0], [0, 0], [1, 1]])
        s.run(step, {ids: np.int32([0, 3])})
        np.testing.assert_array_equal(s.run(w), [[-1, -1], [1, 1], [1, 1], [0, 0]])


def test_clipping_an_embedding_models_gradients_by_global_norm():
    """An IndexedSlices is converted to its dense tensor by any op (as TensorFlow), so gradient clipping
    written by hand works on a gathered table's gradient; the clipped step is what NumPy computes."""
    table = np.arange(8.0).reshape(4, 2)
    emb = en.Variable(table, name="emb")
    dense = en.Variable(np.ones((2, 1)), name="dense")
    ids = en.placeholder(en.int64, (None,))
    pred = en.matmul(en.gather(emb, ids), dense)
    loss = en.reduce_sum(en.square(pred))
    opt = en.train.GradientDescentOptimizer(0.5)
    grads = opt.compute_gradients(loss)
    assert isinstance(grads[0][0], en.IndexedSlices)
    norm = en.sqrt(en.add_n([en.reduce_sum(en.square(g)) for g, _ in grads]))
    scale = en.minimum(1.0 / norm, 1.0)  # clip to a global norm of 1
    step = opt.apply_gradients([(g * scale, v) for g, v in grads])
    feed = np.array([0, 2, 0])
    rows = table[feed]
    d_pred = 2 * rows @ np.ones((2, 1))
    g_emb = np.zeros_like(table)
    np.add.at(g_emb, feed, d_pred @ np.ones((1, 2)))
    g_dense = rows.T @ d_pred
    total = np.sqrt((g_emb ** 2).sum() + (g_dense ** 2).sum())
    with en.Session() as s:
        s.run(en.global_variables_initializer())
        np.testing.assert_allclose(s.run(norm, {ids: feed}), total)
        s.run(step, {ids: feed})
        np.testing.assert_allclose(s.run(emb), table - 0.5 * g_emb / total)
        np.testing.assert_allclose(s.run(dense), 1 - 0.5 * g_dense / total)


def _fake(monkeypatch, base, **changes):
    """``base``'s definition under the name 'Fake<base>', with ``changes``, registered for this test only."""
    fake = dataclasses.replace(registry.get_op_def(base), name=f"Fake{base}", **changes)
    monkeypatch.setitem(registry._REGISTRY, fake.name, fake)
    return fake.name


def test_a_sparse_gradient_reaches_only_an_op_that_takes_it(monkeypatch):
    """``OpDef.sparse_grad`` (Identity's) decides it: a gather's IndexedSlices passes through Identity to the
    gathered tensor; any other op's gradient function gets it densified."""
    dense_identity = _fake(monkeypatch, "Identity", sparse_grad=False)
    x = en.placeholder(en.float64, (4, 3))
    rows = np.array([3, 0, 3])
    (sparse,) = en.gradients(en.reduce_sum(en.gather(en.identity(x), rows)), [x])
    through = en.get_default_graph().create_op(dense_identity, [x]).outputs[0]
    (dense,) = en.gradients(en.reduce_sum(en.gather(through, rows)), [x])
    assert isinstance(sparse, en.IndexedSlices) and isinstance(dense, en.Tensor)
    want = [[1, 1, 1], [0, 0, 0], [0, 0, 0], [2, 2, 2]]
    with en.Session() as s:
        for g in (sparse, dense):
            np.testing.assert_array_equal(s.run(g, {x: np.ones((4, 3))}), want)


def test_a_sparse_gradients_dense_form_carries_no_control_edge_of_the_block_it_was_first_used_in():
    """Its dense op is made once, at first use: made inside ``control_dependencies([bump])``, every later use of
    the gradient ran ``bump`` too (a norm computed elsewhere incremented a counter at every run)."""
    emb = en.Variable(np.ones((4, 2), np.float32), name="emb")
    counter = en.Variable(np.zeros((), np.float32), name="counter", trainable=False)
    ids = en.placeholder(en.int64, (None,))
    (grad,) = en.gradients(en.reduce_sum(en.gather(emb, ids)), [emb])
    bump = counter.assign_add(np.float32(1))
    with en.control_dependencies([bump]):
        scaled = en.multiply(grad, 0.5)
    norm = en.reduce_sum(en.square(grad))
    with en.Session() as s:
        s.run(en.global_variables_initializer())
        assert s.run(norm, {ids: [0, 1]}) == 4.0 and s.run(counter) == 0.0
        s.run(scaled, {ids: [0, 1]})
        assert s.run(counter) == 1.0  # the op made inside the block still waits for bump


@pytest.mark.parametrize("grad,error,message", [
    (lambda op, g: [g, g], ValueError, r"gradient of FakeAdd op 'y' for input 1 has shape \(3, 4\); the input b:0"),
    (lambda op, g: [g, en.reduce_sum(g)], ValueError, r"input 1 has shape \(\); the input b:0 has shape \(4,\)"),
    (lambda op, g: [en.cast(g, en.float32), en.reduce_sum(g, axis=0)], TypeError, "input 0 has dtype float32"),
], ids=["not summed back to a broadcast input", "summed too far", "dtype"])
def test_a_gradient_unlike_its_input_is_refused_when_the_graph_is_built(monkeypatch, grad, error, message):
    """A gradient function's result must fit its input (static shape where known, dtype): found by
    ``gradients()`` as the graph is built, not by a broadcasting error (or none) at run time."""
    fake_add = _fake(monkeypatch, "Add", grad=grad)
    x = en.placeholder(en.float64, (3, 4), name="x")
    b = en.placeholder(en.float64, (4,), name="b")
    y = en.get_default_graph().create_op(fake_add, [x, b], name="y").outputs[0]
    with pytest.raises(error, match=message):
        en.gradients(en.reduce_sum(y), [x, b])


def test_a_gradient_of_unknown_static_shape_passes_the_static_check():
    x = en.placeholder(en.float64, (None, 4), name="x")
    b = en.placeholder(en.float64, (4,), name="b")
    gx, gb = en.gradients(en.reduce_sum(x + b), [x, b])
    assert gb.shape == (4,)
    with en.Session() as s:
        np.testing.assert_array_equal(s.run(gb, {x: np.ones((3, 4)), b: np.zeros(4)}), [3, 3, 3, 3])


def test_a_variables_gradient_sums_its_reads_through_read_value():
    """``read_value()`` is the variable, as TensorFlow's identity read is: a loss using both it and the variable
    got only the direct path's gradient (weight decay on a snapshot vanished silently), and one using the
    snapshot alone got none ("No gradients provided")."""
    graph = en.Graph()
    with graph.as_default():
        v = en.Variable(np.array([1.0, -2.0, 3.0]), name="v")
        loss = en.reduce_sum(en.square(v)) + 3.0 * en.reduce_sum(v.read_value()) + en.reduce_sum(
            en.exp(v.read_value()))
        (g,) = en.gradients(loss, [v])
        snapshot_only = en.train.GradientDescentOptimizer(0.5).minimize(en.reduce_sum(en.square(v.read_value())))
        with en.Session() as sess:
            sess.run(en.global_variables_initializer())
            value = np.array([1.0, -2.0, 3.0])
            np.testing.assert_allclose(sess.run(g), 2 * value + 3.0 + np.exp(value))
            sess.run(snapshot_only)
            np.testing.assert_allclose(sess.run(v), value - 0.5 * 2 * value)


def test_a_sparse_gradient_summed_with_a_dense_one_keeps_its_static_shape():
    """A variable read by a gather and by a dense op: its sparse gradient is densified to join the dense one in
    an add_n. The densified tensor had no static shape (densify was not given the IndexedSlices'), so nothing
    downstream of it could check or plan by its shape."""
    p = en.Variable(np.arange(12.0).reshape(4, 3), name="p")
    x = en.placeholder(en.float64, (None, 3))
    y = en.reduce_sum(en.gather(p, np.array([3, 0, 3]))) + en.reduce_sum(en.matmul(x, p, transpose_b=True))
    (g,) = en.gradients(y, [p])
    assert g.op.type == "AddN" and [t.op.type for t in g.op.inputs].count("ScatterAddDense") == 1
    assert [t.shape for t in g.op.inputs] == [(4, 3), (4, 3)]
    with en.Session() as s:
        s.run(en.global_variables_initializer())
        np.testing.assert_array_equal(s.run(g, {x: np.ones((2, 3))}), [[3, 3, 3], [2, 2, 2], [2, 2, 2], [4, 4, 4]])
