"""CSE pass: identical pure nodes compute once; stateful, random and placeholder ops never merge."""

from __future__ import annotations

import numpy as np

import engine as en

ONLY_CSE = en.SessionConfig(passes={"cse"})
OFF = en.SessionConfig(optimize=False)


def _types(sess, fetches, feeds=()):
    return [n.type for n in sess.plan(list(fetches), list(feeds)).nodes]


def test_duplicate_subexpressions_run_once_with_identical_results():
    x = en.placeholder(en.float32, (None, 3), name="x")
    y = en.exp(x * 2.0) + en.exp(x * 2.0)
    feed = {x: np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)}
    on, off = en.Session(config=ONLY_CSE), en.Session(config=OFF)
    np.testing.assert_array_equal(on.run(y, feed), off.run(y, feed))
    assert _types(off, [y], [x]).count("Exp") == 2
    assert _types(on, [y], [x]).count("Exp") == 1
    assert _types(on, [y], [x]).count("Mul") == 1


def test_random_ops_are_never_merged():
    a = en.random_uniform((3,), seed=1)
    b = en.random_uniform((3,), seed=1)
    total = a + b
    sess = en.Session(config=ONLY_CSE)
    assert [n.type for n in sess.plan([total], []).nodes].count("RandomUniform") == 2
    first = en.Session(config=OFF).run([a, b])
    np.testing.assert_array_equal(sess.run([a, b])[0], first[0])


def test_placeholders_are_never_merged():
    p = en.placeholder(en.float32, (2,), name="p")
    q = en.placeholder(en.float32, (2,), name="q")
    sess = en.Session(config=ONLY_CSE)
    out = sess.run(p - q, {p: np.ones(2, np.float32), q: np.full(2, 3.0, np.float32)})
    np.testing.assert_array_equal(out, [-2.0, -2.0])


def test_reads_on_either_side_of_an_assignment_are_not_merged():
    v = en.Variable(np.zeros(2, np.float32), name="v")
    before = v + 1.0
    with en.control_dependencies([before]):
        write = v.assign(np.full(2, 5.0, np.float32))
    with en.control_dependencies([write]):
        after = v + 1.0
    for config in (ONLY_CSE, OFF):
        sess = en.Session(config=config)
        sess.run(v.initializer)
        b, a = sess.run([before, after])
        np.testing.assert_array_equal(b, [1.0, 1.0])
        np.testing.assert_array_equal(a, [6.0, 6.0])
    sess = en.Session(config=ONLY_CSE)
    assert [n.type for n in sess.plan([before, after], []).nodes].count("Add") == 2


def test_stateful_ops_are_never_merged():
    v = en.Variable(np.zeros((), np.float32), name="counter")
    inc1 = v.assign_add(1.0)
    inc2 = v.assign_add(1.0)
    sess = en.Session(config=ONLY_CSE)
    sess.run(v.initializer)
    sess.run([inc1.op, inc2.op])
    assert float(sess.run(v)) == 2.0
