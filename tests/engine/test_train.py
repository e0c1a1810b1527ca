"""Optimizers: exact update rules vs NumPy, learning known functions, sparse (lazy) updates."""

from __future__ import annotations

import re

import numpy as np
import pytest

import engine as en

OPTIMIZERS = {
    "sgd": lambda: en.train.GradientDescentOptimizer(0.1),
    "momentum": lambda: en.train.MomentumOptimizer(0.05, 0.9),
    "nesterov": lambda: en.train.MomentumOptimizer(0.05, 0.9, use_nesterov=True),
    "adam": lambda: en.train.AdamOptimizer(0.05),
    "adagrad": lambda: en.train.AdagradOptimizer(0.5),
}


def _numpy_step(kind, w, g, slots, t):
    if kind == "sgd":
        return w - 0.1 * g
    if kind in ("momentum", "nesterov"):
        slots["a"] = 0.9 * slots.get("a", 0.0) + g
        return w - 0.05 * (g + 0.9 * slots["a"] if kind == "nesterov" else slots["a"])
    if kind == "adam":
        m = 0.9 * slots.get("m", 0.0) + 0.1 * g
        v = 0.999 * slots.get("v", 0.0) + 0.001 * g * g
        slots["m"], slots["v"] = m, v
        lr_t = 0.05 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
        return w - lr_t * m / (np.sqrt(v) + 1e-8)
    acc = slots.get("acc", 0.1) + g * g
    slots["acc"] = acc
    return w - 0.5 * g / np.sqrt(acc)


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_update_rule_matches_numpy(kind):
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    w0 = np.array([0.3, -0.7])
    w = en.Variable(w0.copy(), name="w")
    loss = en.reduce_sum(en.square(en.matmul(en.constant(x), en.reshape(w, (2, 1)))))
    step = OPTIMIZERS[kind]().minimize(loss)
    expected, slots = w0.copy(), {}
    with en.Session() as s:
        s.run(en.global_variables_initializer())
        for t in range(1, 4):
            g = 2 * x.T @ (x @ expected)
            expected = _numpy_step(kind, expected, g, slots, t)
            s.run(step)
            np.testing.assert_allclose(s.run(w), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_linear_regression_learns_known_weights(kind):
    rng = np.random.default_rng(0)
    xv = rng.normal(size=(256, 3)).astype(np.float32)
    w_true, b_true = np.array([[1.5], [-2.0], [0.5]], np.float32), 0.7
    yv = xv @ w_true + b_true
    x = en.placeholder(en.float32, (None, 3))
    y = en.placeholder(en.float32, (None, 1))
    layer = en.layers.Dense(1, seed=1)
    loss = en.reduce_mean(en.square(layer(x) - y))
    step = OPTIMIZERS[kind]().minimize(loss)
    with en.Session() as s:
        s.run(en.global_variables_initializer())
        for _ in range(300):
            s.run(step, {x: xv, y: yv})
        final = s.run(loss, {x: xv, y: yv})
        w, b = s.run([layer.kernel, layer.bias])
    assert final < 1e-3, f"{kind}: mse {final}"
    np.testing.assert_allclose(w, w_true, atol=0.03)
    np.testing.assert_allclose(b, [b_true], atol=0.03)


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_mlp_learns_a_nonlinear_function(kind):
    rng = np.random.default_rng(1)
    xv = rng.uniform(-1, 1, size=(256, 2)).astype(np.float32)
    yv = (np.sin(2 * xv[:, :1]) + xv[:, 1:] ** 2).astype(np.float32)
    x = en.placeholder(en.float32, (None, 2))
    y = en.placeholder(en.float32, (None, 1))
    hidden = en.layers.Dense(32, activation="tanh", seed=2, name="hidden")(x)
    pred = en.layers.Dense(1, seed=3, name="out")(hidden)
    loss = en.reduce_mean(en.square(pred - y))
    rates = {"sgd": 0.3, "momentum": 0.05, "nesterov": 0.05, "adam": 0.01, "adagrad": 0.2}
    opt = {"sgd": en.train.GradientDescentOptimizer, "adagrad": en.train.AdagradOptimizer,
           "adam": en.train.AdamOptimizer}.get(kind)
    opt = opt(rates[kind]) if opt else en.train.MomentumOptimizer(rates[kind], 0.9, use_nesterov=kind == "nesterov")
    step = opt.minimize(loss)
    with en.Session() as s:
        s.run(en.global_variables_initializer())
        start = s.run(loss, {x: xv, y: yv})
        for _ in range(800):
            s.run(step, {x: xv, y: yv})
        final = s.run(loss, {x: xv, y: yv})
    assert final < 0.01 and final < start / 20, f"{kind}: mse {start} -> {final}"


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_sparse_updates_touch_only_gathered_rows(kind):
    table0 = np.arange(24, dtype=np.float32).reshape(6, 4) / 10
    emb = en.Variable(table0.copy(), name="emb")
    ids = en.placeholder(en.int64, (None,))
    loss = en.reduce_sum(en.square(en.gather(emb, ids)))
    opt = OPTIMIZERS[kind]()
    step = opt.minimize(loss)
    assert step is not None
    with en.Session() as s:
        s.run(en.global_variables_initializer())
        slots = [opt.get_slot(emb, n) for n in opt.get_slot_names()]
        slots0 = [s.run(v) for v in slots]
        s.run(step, {ids: [1, 3, 3]})
        after = s.run(emb)
        untouched = [0, 2, 4, 5]
        np.testing.assert_array_equal(after[untouched], table0[untouched])
        assert not np.allclose(after[[1, 3]], table0[[1, 3]])
        for v, v0 in zip(slots, slots0):
            np.testing.assert_array_equal(s.run(v)[untouched], v0[untouched])
        # lazy semantics: a second step on other rows leaves rows 1 and 3 and their slots alone
        before = s.run(emb)
        slots1 = [s.run(v) for v in slots]
        s.run(step, {ids: [0]})
        np.testing.assert_array_equal(s.run(emb)[[1, 3]], before[[1, 3]])
        for v, v1 in zip(slots, slots1):
            np.testing.assert_array_equal(s.run(v)[[1, 3]], v1[[1, 3]])


def test_sparse_and_dense_sgd_agree():
    table0 = np.random.default_rng(2).normal(size=(5, 3))
    ids = np.array([4, 0, 4, 2])
    results = []
    for dense in (False, True):
        g = en.Graph()
        with g.as_default():
            emb = en.Variable(table0.copy())
            rows = en.gather(emb, ids) if not dense else en.matmul(en.constant(np.eye(5)[ids]), emb)
            step = en.train.GradientDescentOptimizer(0.3).minimize(en.reduce_sum(en.tanh(rows)))
            with en.Session() as s:
                s.run(en.global_variables_initializer())
                s.run(step)
                results.append(s.run(emb))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-12)


def test_global_step_compute_apply_and_errors():
    w = en.Variable(1.0, name="w")
    unused = en.Variable(2.0, name="unused")
    step_var = en.train.get_or_create_global_step()
    opt = en.train.GradientDescentOptimizer(0.5)
    gv = opt.compute_gradients(w * w, var_list=[w, unused])
    assert gv[1][0] is None
    train = opt.apply_gradients(gv, global_step=step_var)
    with en.Session() as s:
        s.run(en.global_variables_initializer())
        s.run(train)
        s.run(train)
        assert s.run(step_var) == 2
        assert s.run(w) == 0.0  # 1 - 0.5*2*1 = 0, then stays 0
    with pytest.raises(ValueError, match="No gradients provided"):
        opt.minimize(w * 1.0, var_list=[unused])


def test_a_tensor_where_a_variable_belongs_is_refused_naming_it():
    """var_list=[a tensor] raised AttributeError: 'Tensor' object has no attribute '_as_tensor', and
    global_step=3 AttributeError: 'int' object has no attribute 'assign_add'."""
    w = en.Variable(np.ones(2, np.float32), name="w")
    x = en.placeholder(en.float32, (2,), name="x")
    loss = en.reduce_sum(w * x)
    opt = en.train.GradientDescentOptimizer(0.1)
    with pytest.raises(TypeError, match=r"var_list: <en.Tensor 'x:0' .*> is not a variable"):
        opt.minimize(loss, var_list=[w, x])
    with pytest.raises(TypeError, match=r"global_step: 3 is not a variable"):
        opt.minimize(loss, global_step=3)


def test_learning_rate_can_be_a_fed_tensor():
    w = en.Variable(1.0)
    lr = en.placeholder(en.float32, ())
    step = en.train.GradientDescentOptimizer(lr).minimize(w * 2.0)
    with en.Session() as s:
        s.run(en.global_variables_initializer())
        s.run(step, {lr: 0.25})
        assert s.run(w) == 0.5


@pytest.mark.parametrize("optimizer", [en.train.GradientDescentOptimizer, en.train.AdamOptimizer])
def test_a_learning_rate_tensor_that_is_not_a_scalar_is_refused_when_built(optimizer):
    """A (3, 1) rate for a (3, 1) variable built, then failed in the kernel ('only 0-dimensional arrays can be
    converted') while the reference backend applied it per element; a (1,) rate passed (NumPy deprecation)."""
    w = en.Variable(np.ones((3, 1), np.float32), name="w")
    for rate in (np.full((3, 1), 0.1, np.float32), np.float32([0.1])):
        with pytest.raises(ValueError, match=r"learning rate .* must be a scalar"):
            optimizer(en.constant(rate)).minimize(en.reduce_sum(w * w))
    with pytest.raises(ValueError, match=r"learning rate .* must be a scalar"):
        optimizer(en.placeholder(en.float32, (None,))).minimize(en.reduce_sum(w * w))


@pytest.mark.parametrize("make, message", [
    (lambda: en.train.GradientDescentOptimizer(-0.1), "learning_rate: expected a finite number in [0, inf)"),
    (lambda: en.train.GradientDescentOptimizer(float("nan")), "learning_rate"),
    (lambda: en.train.AdamOptimizer(float("inf")), "learning_rate"),
    (lambda: en.train.AdamOptimizer(1e-3, beta1=1.0), "beta1: expected a finite number in [0, 1)"),
    (lambda: en.train.AdamOptimizer(1e-3, beta2=-0.5), "beta2"),
    (lambda: en.train.AdamOptimizer(1e-3, epsilon=float("nan")), "epsilon"),
    (lambda: en.train.MomentumOptimizer(0.1, momentum=float("nan")), "momentum"),
    (lambda: en.train.AdagradOptimizer(0.1, initial_accumulator_value=-1.0), "initial_accumulator_value"),
    (lambda: en.train.GradientDescentOptimizer("fast"), "learning_rate: expected a number, got 'fast'"),
])
def test_optimizer_hyperparameters_out_of_range_are_refused_by_name(make, message):
    """A negative or NaN learning rate trained silently (towards a worse loss, or NaN weights)."""
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_a_learning_rate_of_zero_or_a_tensor_is_accepted():
    en.train.GradientDescentOptimizer(0.0)
    with en.Graph().as_default():
        en.train.AdamOptimizer(en.placeholder(en.float32, shape=()))


def test_an_optimizer_built_under_control_dependencies_initializes_without_them():
    """TensorFlow 1.x's pattern ``with control_dependencies(update_ops): minimize(loss)``: the slots' and
    Adam's step's initializers took the block's edge, so global_variables_initializer() ran the update op and
    failed for its unfed placeholder. A variable is made outside the block, as TensorFlow's init_scope does;
    the training step still runs after the update."""
    x = en.placeholder(en.float32, (None, 2), name="x")
    stats = en.Variable(np.zeros(2, np.float32), name="stats", trainable=False)
    update = stats.assign(en.reduce_mean(x, axis=0))
    w = en.Variable(np.ones((2, 1), np.float32), name="w")
    with en.control_dependencies([update]):
        train_op = en.train.AdamOptimizer(0.1).minimize(en.reduce_sum(en.square(en.matmul(x, w))))
        made_inside = en.Variable(np.zeros(1, np.float32), name="made_inside")
    assert all(not v.initializer.control_inputs and not v.op.control_inputs for v in en.global_variables())
    with en.Session() as sess:
        sess.run(en.global_variables_initializer())
        assert sess.run(made_inside).tolist() == [0.0]
        sess.run(train_op, {x: np.array([[1.0, 3.0]], np.float32)})
        assert sess.run(stats).tolist() == [1.0, 3.0]
