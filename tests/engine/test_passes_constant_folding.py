"""Constant folding: pure subgraphs of constants are computed once at plan time, never random or state."""

from __future__ import annotations

import numpy as np

import engine as en

ONLY_FOLD = en.SessionConfig(passes={"constant_folding", "pruning"})
OFF = en.SessionConfig(optimize=False)


def _nodes(sess, fetches, feeds=()):
    return sess.plan(list(fetches), list(feeds)).nodes


def test_constant_subgraph_becomes_one_constant_with_identical_results():
    x = en.placeholder(en.float32, (None, 2), name="x")
    scale = en.exp(en.constant([1.0, 2.0]) * 0.5) + en.square(en.constant(3.0))
    y = x * scale
    feed = {x: np.arange(6, dtype=np.float32).reshape(3, 2)}
    on, off = en.Session(config=ONLY_FOLD), en.Session(config=OFF)
    np.testing.assert_array_equal(on.run(y, feed), off.run(y, feed))
    types = [n.type for n in _nodes(on, [y], [x])]
    assert types == ["Const", "Mul"]
    assert "Exp" in [n.type for n in _nodes(off, [y], [x])]


def test_a_fetched_folded_value_is_a_private_copy():
    c = en.constant([1.0, 2.0]) * 2.0
    sess = en.Session(config=ONLY_FOLD)
    first = sess.run(c)
    first[:] = -1.0
    np.testing.assert_array_equal(sess.run(c), [2.0, 4.0])


def test_random_and_stateful_ops_are_not_folded():
    r = en.random_uniform((3,), seed=4) * 2.0
    v = en.Variable(np.ones(3, np.float32), name="v")
    s = v * 2.0
    sess = en.Session(config=ONLY_FOLD)
    sess.run(v.initializer)
    assert "RandomUniform" in [n.type for n in _nodes(sess, [r])]
    assert not np.array_equal(sess.run(r), sess.run(r))  # drawn on every run
    sess.run(v.assign(np.full(3, 5.0, np.float32)))
    np.testing.assert_array_equal(sess.run(s), [10.0, 10.0, 10.0])


def test_ops_with_control_inputs_are_not_folded():
    v = en.Variable(np.zeros((), np.float32), name="v")
    inc = v.assign_add(1.0)
    with en.control_dependencies([inc]):
        c = en.constant(2.0) * 3.0
    sess = en.Session(config=ONLY_FOLD)
    sess.run(v.initializer)
    assert float(sess.run(c)) == 6.0
    assert float(sess.run(v)) == 1.0  # the control dependency still ran


def test_a_failing_constant_op_reports_at_run_time_with_its_name():
    bad = en.gather(en.constant([1.0, 2.0]), en.constant([5], en.int64), name="lookup")
    sess = en.Session(config=ONLY_FOLD)
    try:
        sess.run(bad)
    except en.errors.InvalidArgumentError as e:
        assert "lookup" in str(e) and "out of range" in str(e)
    else:
        raise AssertionError("expected an out-of-range error")
