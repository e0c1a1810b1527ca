"""Test helpers for op authors: ``check_gradients`` compares a gradient with finite differences.

Every differentiable op is checked with it (tests/engine/test_gradients.py); a new op's test
should be too.
"""

from __future__ import annotations

import numpy as np

import engine as en


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
