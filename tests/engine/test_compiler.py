"""Whole-plan compilation (engine/compiler.py): same results as the interpreted plan, cached on disk.

Tolerance: float32 matmuls are loops in the compiled function and BLAS in the interpreted plan,
so results agree within rtol=1e-5, atol=1e-6; every other op is exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import engine as en
from engine import compiler
from engine.errors import InvalidArgumentError
from engine.saver import export_inference_graph, import_inference_graph

RTOL, ATOL = 1e-5, 1e-6


def _mlp(rng, hidden=16):
    """A small version of the serving model: embeddings, concat, Dense+ReLU, Dense."""
    store = en.placeholder(en.int64, shape=(None,), name="store")
    dense = en.placeholder(en.float32, shape=(None, 5), name="dense")
    table = en.Variable(rng.standard_normal((7, 3)).astype(np.float32), name="table")
    w1 = en.Variable(rng.standard_normal((8, hidden)).astype(np.float32), name="w1")
    b1 = en.Variable(rng.standard_normal((hidden,)).astype(np.float32), name="b1")
    w2 = en.Variable(rng.standard_normal((hidden, 1)).astype(np.float32), name="w2")
    with en.name_scope("model"):
        x = en.concat([en.gather(table, store), dense], 1)
        h = en.relu(en.matmul(x, w1) + b1)
        y = en.matmul(h, w2) + 0.5
    return store, dense, y


def _feeds(rng, rows):
    return rng.integers(0, 7, rows).astype(np.int64), rng.standard_normal((rows, 5)).astype(np.float32)


@pytest.fixture()
def exported(tmp_path):
    rng = np.random.default_rng(0)
    store, dense, y = _mlp(rng)
    with en.Session() as sess:
        sess.run(en.global_variables_initializer())
        export_inference_graph(sess, str(tmp_path / "model"), {"store": store, "dense": dense}, {"y": y})
    return str(tmp_path / "model")


def test_inference_model_compiled_matches_interpreted(exported):
    fast = import_inference_graph(exported)
    slow = import_inference_graph(exported)
    slow._call.max_rows = 0  # never compiled: the interpreted plan
    rng = np.random.default_rng(1)
    assert fast.warm_up() and fast.compile_error is None
    for rows in (1, 3, 16):
        s, d = _feeds(rng, rows)
        got = fast.run({"store": s, "dense": d})["y"]
        want = slow.run({"store": s, "dense": d})["y"]
        assert got.shape == want.shape == (rows, 1) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(fast.predict(s, d)["y"], want, rtol=RTOL, atol=ATOL)
    assert slow._call.compiled is None and fast._call.uses_compiled


def test_large_batches_take_the_interpreted_plan(exported):
    model = import_inference_graph(exported)
    model._call.max_rows = 2
    s, d = _feeds(np.random.default_rng(2), 50)
    out = model.run({"store": s, "dense": d})["y"]
    assert model._call.compiled is None  # a big batch never triggers compilation
    assert out.shape == (50, 1)


@pytest.mark.parametrize("value", [2.5, True, -1, "3"])
def test_a_max_rows_that_is_not_a_whole_number_is_refused_as_sizes_are(exported, value):
    """max_rows shares the engine's one size check (shapes.whole_number) with batch sizes and layer sizes: the same
    refusal, the same words; 0 (never compiled) stays allowed."""
    model = import_inference_graph(exported)
    with pytest.raises(ValueError, match=rf"max_rows must be a whole number of at least 0, got {value!r}"):
        model._call.max_rows = value
    model._call.max_rows = 0
    assert model._call.max_rows == 0


def test_live_session_reads_variables_at_each_call():
    rng = np.random.default_rng(3)
    store, dense, y = _mlp(rng)
    w2 = [v for v in en.global_variables() if v.op.name == "w2"][0]
    with en.Session() as sess:
        sess.run(en.global_variables_initializer())
        fast = compiler.compile_callable(sess, y, [store, dense])
        s, d = _feeds(rng, 4)
        np.testing.assert_allclose(fast(s, d), sess.run(y, {store: s, dense: d}), rtol=RTOL, atol=ATOL)
        assert fast.uses_compiled
        sess.run(w2.assign(np.zeros((16, 1), np.float32)))
        np.testing.assert_array_equal(fast(s, d), np.full((4, 1), 0.5, np.float32))


def test_a_fetched_view_of_a_variable_or_constant_is_a_copy():
    """A reshaped variable or Const is a view of session or plan storage: the caller writing into what it got
    must not change the variable, the constant, or a result it got earlier (as the interpreted plan)."""
    x = en.placeholder(en.float32, shape=(None, 2), name="x")
    k = en.constant(np.array([[1.0, 0.0], [0.0, 2.0]], np.float32))
    v = en.Variable(np.zeros((2, 2), np.float32), name="v")
    fetches = [en.reshape(v, (4,)), en.reshape(en.identity(v), (4,)), en.reshape(k, (4,)), en.matmul(x, k)]
    with en.Session() as sess:
        sess.run(en.global_variables_initializer())
        fast = compiler.compile_callable(sess, fetches, [x])
        got = fast(np.ones((1, 2), np.float32))
        assert fast.uses_compiled, fast.compile_error
        for value in got[:3]:
            value[...] = 1000.0
        np.testing.assert_array_equal(sess.run(v), np.zeros((2, 2), np.float32))
        again = fast(np.ones((1, 2), np.float32))
        np.testing.assert_array_equal(again[2], [1.0, 0.0, 0.0, 2.0])
        np.testing.assert_array_equal(again[3], [[1.0, 2.0]])
        sess.run(v.assign(np.ones((2, 2), np.float32)))
        np.testing.assert_array_equal(again[0], np.zeros(4, np.float32))  # an earlier result stays as it was


def test_a_scalar_constant_keeps_its_shape_through_the_compiled_plan():
    """A 0-d Const (a frozen scalar variable) came back with shape (1,), and beside a 0-d feed it failed the
    compiled plan's shape check on every call (each call then ran interpreted)."""
    x = en.placeholder(en.float32, shape=(), name="x")
    fetches = [en.sqrt(en.constant(np.float32(4.0))), en.relu(x) * en.constant(np.float32(2.0))]
    with en.Session() as sess:
        plan = compiler.CompiledPlan(sess, fetches, [x])  # no interpreted fallback: a failed check raises
        got = plan(np.array(3.0, np.float32))
        assert [g.shape for g in got] == [(), ()] and [float(g) for g in got] == [2.0, 6.0]


def test_a_0d_gather_reshape_and_one_part_concat_compile_to_their_shapes():
    """A scalar index into a vector (a 0-d gather) emitted ``reshape((,))``: a SyntaxError raised by the serving
    callable itself, though the interpreted plan runs the graph. Every tuple an emitter writes: ``Emitter.tuple_of``."""
    i = en.placeholder(en.int64, shape=(), name="i")
    x = en.placeholder(en.float32, shape=(None,), name="x")
    table = en.constant(np.arange(5, dtype=np.float32) * 1.5)
    fetches = [en.gather(table, i), en.reshape(en.gather(table, i), ()), en.reshape(x, (1, -1)), en.concat([x], 0)]
    values = [np.array(3, np.int64), np.array([2.0, -1.0], np.float32)]
    with en.Session() as sess:
        plan = compiler.CompiledPlan(sess, fetches, [i, x])  # no interpreted fallback
        got = plan(*values)
        want = sess.run(fetches, dict(zip([i, x], values)))
        assert [g.shape for g in got] == [w.shape for w in want] == [(), (), (1, 2), (2,)]
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
        fast = compiler.compile_callable(sess, fetches[0], [i])
        assert float(fast(values[0])) == 4.5 and fast.uses_compiled, fast.compile_error


def _elementwise_case(op_type):
    x = en.placeholder(en.float32, shape=(None, 4), name="x")
    z = en.placeholder(en.float32, shape=(None, 4), name="z")
    row = en.constant(np.array([0.5, -1.0, 2.0, 3.0], np.float32))
    scalar = en.constant(np.float32(1.5))
    unary = {"Neg": en.negative, "Exp": en.exp, "Log": lambda a: en.log(en.abs(a) + 0.1),
             "Log1p": lambda a: en.log1p(en.abs(a)), "Expm1": en.expm1, "Sqrt": lambda a: en.sqrt(en.abs(a)),
             "Square": en.square, "Abs": en.abs, "Relu": en.relu, "Sigmoid": en.sigmoid, "Tanh": en.tanh,
             "Softplus": en.softplus}
    binary = {"Add": en.add, "Sub": en.subtract, "Mul": en.multiply,
              "RealDiv": lambda a, b: en.divide(a, en.abs(b) + 1), "Maximum": en.maximum, "Minimum": en.minimum}
    if op_type in unary:
        return [x], unary[op_type](x * 3.0)
    f = binary[op_type]
    return [x, z], en.concat([f(x, z), f(x, row), f(scalar, x), f(row, z)], 1)


@pytest.mark.parametrize("op_type", ["Neg", "Exp", "Log", "Log1p", "Expm1", "Sqrt", "Square", "Abs", "Relu",
                                     "Sigmoid", "Tanh", "Softplus", "Add", "Sub", "Mul", "RealDiv", "Maximum",
                                     "Minimum"])
def test_elementwise_ops_are_exact(op_type):
    feeds, out = _elementwise_case(op_type)
    rng = np.random.default_rng(4)
    values = [rng.standard_normal((3, 4)).astype(np.float32) for _ in feeds]
    values[0][0, 0] = np.nan  # NaN propagation follows the engine's kernels too
    with en.Session() as sess:
        fast = compiler.compile_callable(sess, out, feeds)
        got = fast(*values)
        assert fast.uses_compiled, fast.compile_error
        np.testing.assert_array_equal(got, sess.run(out, dict(zip(feeds, values))))


def test_cast_reshape_and_transposed_matmul():
    x = en.placeholder(en.float32, shape=(None, 3), name="x")
    w = en.constant(np.arange(12, dtype=np.float32).reshape(4, 3))
    y = en.matmul(x, w, transpose_b=True)  # (n, 4)
    y = en.reshape(en.cast(en.cast(y, en.int32), en.float32), (-1, 2))
    t = en.matmul(x, x, transpose_a=True)
    values = np.random.default_rng(5).standard_normal((2, 3)).astype(np.float32) * 10
    with en.Session() as sess:
        fast = compiler.compile_callable(sess, [y, t], [x])
        got = fast(values)
        assert fast.uses_compiled, fast.compile_error
        want = sess.run([y, t], {x: values})
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], rtol=RTOL, atol=ATOL)


def test_unsupported_op_falls_back_with_the_reason():
    x = en.placeholder(en.float32, shape=(None, 3), name="x")
    y = en.softmax(x) * 2.0
    values = np.random.default_rng(6).standard_normal((2, 3)).astype(np.float32)
    with en.Session() as sess:
        fast = compiler.compile_callable(sess, y, [x])
        np.testing.assert_array_equal(fast(values), sess.run(y, {x: values}))
        assert fast.compiled is None and "Softmax" in fast.compile_error
    with pytest.raises(compiler.UnsupportedGraphError, match="Softmax op"):
        compiler.generate([y], [x])


def test_a_cache_that_cannot_hold_the_plan_leaves_the_interpreted_plan_serving(monkeypatch, tmp_path, caplog):
    """The plan's source is written under the cache directory on the first small batch: where it could not be (here
    its subdirectory's name is taken by a file; a full disk, ENOSPC, the same) the OSError came out of the serving
    callable (and InferenceModel.warm_up), though the interpreted plan runs the batch. Fusion runs its ops unfused
    there; the compiled path is off, its compile_error saying why."""
    from engine import config
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path))
    (tmp_path / compiler.CACHE_SUBDIR).write_text("a file where the plans' directory goes")
    x = en.placeholder(en.float32, shape=(None, 3), name="x")
    y = en.matmul(x, en.constant(np.arange(6, dtype=np.float32).reshape(3, 2)))  # BLAS interpreted: no generated code
    values = np.ones((2, 3), np.float32)
    with en.Session() as sess:
        fast = compiler.compile_callable(sess, y, [x])
        with caplog.at_level("WARNING", logger="engine.compiler"):
            np.testing.assert_array_equal(fast(values), sess.run(y, {x: values}))
        assert not fast.uses_compiled and fast.warm_up() is False
        assert fast.compile_error.startswith(f"cannot write the compiled plan under {tmp_path}")
        assert compiler.CACHE_SUBDIR in caplog.text


def test_stateful_ops_are_refused():
    v = en.Variable(np.zeros(2, np.float32), name="v")
    with pytest.raises(compiler.UnsupportedGraphError, match="stateful"):
        compiler.generate([v.assign_add(np.ones(2, np.float32))], [])


def test_failed_runtime_check_gives_the_interpreted_error(exported):
    model = import_inference_graph(exported)
    s, d = _feeds(np.random.default_rng(7), 2)
    s[1] = 99  # out of the table's range
    with pytest.raises(InvalidArgumentError, match="out of range"):
        model.run({"store": s, "dense": d})
    assert model._call.uses_compiled  # the fast path stays on for good inputs


def test_unconvertible_feeds_go_through_the_session_checks(exported):
    model = import_inference_graph(exported)
    s, d = _feeds(np.random.default_rng(8), 2)
    out = model.run({"store": s.tolist(), "dense": d.astype(np.float32)})["y"]  # a list: converted, then run
    assert out.shape == (2, 1)
    with pytest.raises(InvalidArgumentError, match="shape"):
        model.run({"store": s, "dense": np.zeros((2, 4), np.float32)})


def test_cache_key_ignores_weights_but_not_shapes():
    def source(seed, hidden):
        en.reset_default_graph()
        store, dense, y = _mlp(np.random.default_rng(seed), hidden)
        return compiler.generate([y], [store, dense])[0]

    assert compiler.cache_key(source(0, 16)) == compiler.cache_key(source(1, 16))
    assert compiler.cache_key(source(0, 16)) != compiler.cache_key(source(0, 8))


_CHILD = textwrap.dedent("""
    import json, numpy as np, engine as en
    from engine import compiler
    x = en.placeholder(en.float32, shape=(None, 3), name="x")
    y = en.relu(en.matmul(x, en.constant(np.ones((3, 2), np.float32))) + 1.0)
    with en.Session() as sess:
        fast = compiler.compile_callable(sess, y, [x])
        out = fast(np.ones((1, 3), np.float32))
        stats = fast.compiled.function.stats
        print(json.dumps({"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values()),
                          "path": fast.compiled.path, "out": out.tolist()}))
""")


def test_fresh_process_loads_the_compiled_plan_from_the_cache(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def child():
        done = subprocess.run([sys.executable, "-c", _CHILD], env=env, cwd=root, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    first, second = child(), child()
    assert first["misses"] >= 1 and first["out"] == [[4.0, 4.0]]
    assert second["misses"] == 0 and second["hits"] >= 1 and second["out"] == first["out"]
    assert second["path"].startswith(str(tmp_path / "cache")) and os.path.exists(second["path"])


def test_compiled_result_never_aliases_a_variable_read_through_views():
    """ReadVariable's emitter hands over the variable itself (its kernel copies): a view of it fetched
    from the compiled plan must come back as a copy, as from the interpreted plan."""
    x = en.placeholder(en.float32, (None, 2), name="x")
    v = en.Variable(np.float32([[1, 2], [3, 4]]), name="v")
    read = v.read_value()
    fetches = {"r": en.reshape(read, (-1,)), "i": en.identity(read), "y": en.matmul(x, v)}
    with en.Session() as sess:
        sess.run(en.global_variables_initializer())
        fast = compiler.compile_callable(sess, fetches, [x])
        out = fast(np.ones((1, 2), np.float32))
        assert fast.uses_compiled, fast.compile_error
        out["r"][:] = -99.0
        out["i"][:] = -99.0
        np.testing.assert_array_equal(sess.run(v), [[1, 2], [3, 4]])
        np.testing.assert_allclose(fast(np.ones((1, 2), np.float32))["y"], [[4, 6]])


def test_compiled_fast_path_refuses_a_closed_session():
    x = en.placeholder(en.float32, (None, 2), name="x")
    v = en.Variable(np.float32([1, 2]), name="v")
    y = x * v
    sess = en.Session()
    sess.run(en.global_variables_initializer())
    fast = compiler.compile_callable(sess, y, [x])
    np.testing.assert_array_equal(fast(np.ones((1, 2), np.float32)), [[1, 2]])
    assert fast.uses_compiled, fast.compile_error
    sess.close()
    for rows in (1, 40):  # the compiled batch and the interpreted one alike
        with pytest.raises(RuntimeError, match="closed Session"):
            fast(np.ones((rows, 2), np.float32))
    with pytest.raises(RuntimeError, match="closed Session"):
        fast.compiled(np.ones((1, 2), np.float32))


@pytest.mark.parametrize("value, ok", [("", True), (" 8 ", True), ("1e6", False), ("-1", False)])
def test_the_engines_size_settings_from_the_environment_are_whole_numbers_or_unset(value, ok):
    """int() of SHELFCAST_COMPILED_MAX_ROWS / SHELFCAST_PARALLEL_MIN_ELEMENTS failed `import engine` on an empty
    value (make and CI pass unset variables as empty) or '1e6', with 'invalid literal for int()' naming neither."""
    env = {**os.environ, "SHELFCAST_COMPILED_MAX_ROWS": value, "SHELFCAST_PARALLEL_MIN_ELEMENTS": value}
    done = subprocess.run([sys.executable, "-c", "import engine; print(engine.compiler.DEFAULT_MAX_ROWS, "
                           "engine.config.PARALLEL_MIN_ELEMENTS)"], env=env, capture_output=True, text=True)
    if ok:
        assert done.returncode == 0 and done.stdout.split() == (["8", "8"] if value.strip() else ["16", "8388608"])
    else:
        assert done.returncode != 0
        assert f"environment variable SHELFCAST_PARALLEL_MIN_ELEMENTS must be a whole number >= 0, got {value!r}" \
            in done.stderr
