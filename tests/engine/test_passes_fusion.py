"""Elementwise fusion: chains become one generated, disk-cached Numba kernel with identical results."""

from __future__ import annotations

import operator
import os

import numpy as np
import pytest

import engine as en
from engine import config
from engine.kernels import elementwise as EW
from engine.ops._util import create
from engine.ops.nn import _relu

ONLY_FUSION = en.SessionConfig(passes={"fusion"})
OFF = en.SessionConfig(optimize=False)


def _nodes(sess, fetches, feeds):
    return sess.plan(list(fetches), list(feeds)).nodes


@pytest.mark.parametrize("dtype", [en.float32, en.float64])
def test_bias_relu_chain_is_one_kernel_with_identical_results(dtype):
    x = en.placeholder(dtype, (None, 5), name="x")
    b = en.constant(np.linspace(-1, 1, 5).astype(dtype.np), dtype)
    y = en.relu(x + b) * 2.0
    on, off = en.Session(config=ONLY_FUSION), en.Session(config=OFF)
    for rows in (1, 7, 300):
        feed = {x: np.random.default_rng(rows).standard_normal((rows, 5)).astype(dtype.np)}
        np.testing.assert_array_equal(on.run(y, feed), off.run(y, feed))
    fused = [n for n in _nodes(on, [y], [x]) if n.type == "FusedElementwise"]
    assert len(fused) == 1 and [op.type for op in fused[0].members] == ["Add", "Relu", "Mul"]


@pytest.mark.parametrize("dtype", [en.float32, en.float64])
def test_the_bias_gradient_is_summed_inside_the_relu_gradient_kernel(dtype):
    """Dense -> ReLU's backward pass: ReluGrad and the bias gradient (SumToShape) are ONE fused step
    with two outputs, bit for bit the unfused values, in every run-time case it meets."""
    x = en.placeholder(dtype, (None, 6), name="x")
    layer = en.layers.Dense(5, activation=en.relu, seed=1, dtype=dtype)
    y = layer(x)
    loss = en.reduce_sum(en.square(y))
    grads = en.gradients(loss, [layer.kernel, layer.bias])
    on, off = en.Session(), en.Session(config=en.SessionConfig(optimize=False, reuse_buffers=False))
    for sess in (on, off):
        sess.run(en.global_variables_initializer())
    steps = on.plan(grads, [x]).steps
    fused = [s for s in steps if s.also]
    assert len(fused) == 1 and fused[0].label.endswith("-> ReluGrad -> SumToShape)")
    assert not any(s.type == "SumToShape" and s.op.outputs[0].shape == (5,) for s in steps)
    for rows in (0, 1, 7, 300):
        feed = {x: np.random.default_rng(rows).standard_normal((rows, 6)).astype(dtype.np)}
        for _ in range(2):  # the second run writes into the kept buffers
            for got, want in zip(on.run(grads, feed), off.run(grads, feed)):
                np.testing.assert_array_equal(got, want)
    profile = en.profiler.profile(on, grads, {x: feed[x]}, runs=1)
    assert any(op.output_bytes == (300 * 5 + 5) * dtype.np.itemsize for op in profile.ops)  # both outputs counted


def test_a_row_sum_is_not_fused_across_a_state_write_or_a_control_edge():
    x = en.placeholder(en.float32, (None, 3), name="x")
    v = en.Variable(np.zeros(3, np.float32), name="v")
    g = en.relu(x)
    write = v.assign_add(np.ones(3, np.float32))
    across_write = create("SumToShape", [g, v.value()])  # created after the write: it must see the state as written
    h = en.relu(x - 1.0)
    with en.control_dependencies([write]):
        after_control = create("SumToShape", [h, v.value()])
    sess = en.Session()
    sess.run(v.initializer)
    steps = sess.plan([across_write, after_control, write], [x]).steps
    assert [s.type for s in steps if s.type == "SumToShape"] == ["SumToShape", "SumToShape"]
    assert not any(s.also for s in steps)
    got = sess.run([across_write, after_control], {x: np.array([[1.0, -2.0, 3.0], [2.0, 2.0, -1.0]], np.float32)})
    np.testing.assert_array_equal(got[0], [3.0, 2.0, 3.0])
    np.testing.assert_array_equal(got[1], [1.0, 1.0, 2.0])


UNARY = [en.negative, en.exp, en.log1p, en.expm1, en.square, en.abs, en.relu, en.sigmoid, en.tanh, en.softplus]


def test_every_fusible_op_matches_its_unfused_kernel_including_nan():
    x = en.placeholder(en.float32, (64,), name="x")
    y = en.placeholder(en.float32, (64,), name="y")
    values = np.random.default_rng(0).uniform(-3, 3, 64).astype(np.float32)
    values[::9] = np.nan
    other = np.random.default_rng(1).uniform(0.5, 3, 64).astype(np.float32)
    outs = [f(en.abs(x) * 0.5) for f in UNARY]
    outs += [en.maximum(x, y), en.minimum(x, y) - y, en.sqrt(en.abs(x)) / y, en.log(y + 1.0)]
    feed = {x: values, y: other}
    on, off = en.Session(config=ONLY_FUSION), en.Session(config=OFF)
    for a, b in zip(on.run(outs, feed), off.run(outs, feed)):
        np.testing.assert_array_equal(a, b)


def test_gradients_of_fused_ops_match():
    x = en.placeholder(en.float64, (None, 4), name="x")
    w = en.constant(np.random.default_rng(2).standard_normal((4,)))
    loss = en.reduce_sum(en.tanh(en.sigmoid(x * w) - 0.5) ** 2.0)
    grads = en.gradients(loss, [x])
    feed = {x: np.random.default_rng(3).standard_normal((6, 4))}
    a = en.Session(config=ONLY_FUSION).run(grads, feed)[0]
    b = en.Session(config=OFF).run(grads, feed)[0]
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_a_run_time_broadcast_it_cannot_express_falls_back_to_the_member_ops():
    x = en.placeholder(en.float32, (None, 1), name="x")
    y = en.placeholder(en.float32, (None, 1), name="y")
    z = en.relu(x - y)
    feed = {x: np.array([[1.0], [-2.0], [3.0]], np.float32), y: np.array([[0.5]], np.float32)}
    got = en.Session(config=ONLY_FUSION).run(z, feed)
    np.testing.assert_array_equal(got, np.maximum(feed[x] - feed[y], 0))


def test_fetched_intermediates_and_reads_across_state_writes_are_not_fused():
    x = en.placeholder(en.float32, (3,), name="x")
    inner = x + 1.0
    outer = en.relu(inner)
    sess = en.Session(config=ONLY_FUSION)
    types = [n.type for n in _nodes(sess, [inner, outer], [x])]
    assert "Relu" in types or types.count("FusedElementwise") == 2
    a, b = sess.run([inner, outer], {x: np.array([-3.0, 0.0, 3.0], np.float32)})
    np.testing.assert_array_equal(a, [-2.0, 1.0, 4.0])
    np.testing.assert_array_equal(b, [0.0, 1.0, 4.0])

    v = en.Variable(np.ones(3, np.float32), name="v")
    first = v * 2.0
    with en.control_dependencies([first]):
        write = v.assign(np.full(3, 10.0, np.float32))
    with en.control_dependencies([write]):
        total = first + v
    sess = en.Session(config=ONLY_FUSION)
    sess.run(v.initializer)
    np.testing.assert_array_equal(sess.run(total), [12.0, 12.0, 12.0])


def test_generated_kernels_are_files_in_the_numba_cache_named_by_their_source_hash():
    source = EW.chain_source([(operator.add, [("leaf", 0), ("leaf", 1)]), (_relu, [("step", 0)])], ["full", "row"],
                             "float32", 3)
    serial = EW.chain_kernels(source).serial
    assert EW.chain_kernels(source).serial is serial  # loaded once per process
    directory = os.path.join(config.CACHE_DIR, "shelfcast_fused")
    files = [f for f in os.listdir(directory) if f.endswith(".py")]
    matching = [f for f in files if open(os.path.join(directory, f)).read() == source]
    assert len(matching) == 1 and matching[0].startswith("fused_")
    out = np.empty(6, np.float32)
    serial(out, np.arange(-3, 3, dtype=np.float32), np.array([1, 0, -1], np.float32))
    np.testing.assert_array_equal(out, [0, 0, 0, 1, 1, 1])
    cached = [f for _, _, names in os.walk(config.CACHE_DIR) for f in names
              if f.startswith(matching[0][:-3]) and f.endswith(".nbi")]
    assert cached, "numba wrote no on-disk cache index for the generated module"


def test_a_damaged_generated_module_in_the_cache_is_written_again(tmp_path, monkeypatch):
    """A cached module that is not UTF-8 (a damaged disk, a truncated multi-byte write) raised
    UnicodeDecodeError on every import, in every process sharing the cache."""
    from engine import generated

    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path))
    source = "VALUE = 'caf\u00e9'\n"
    path = generated.module_path("damaged", "mod", "k0")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(source.encode()[:-3])  # cut inside the two-byte UTF-8 of the e-acute
    module = generated.import_generated(source, "k0", "damaged", "mod", "shelfcast_test_damaged_")
    assert module.VALUE == "caf\u00e9" and open(path, encoding="utf-8").read() == source


def test_training_the_same_model_with_and_without_passes_gives_the_same_losses():
    def train(config_):
        graph = en.Graph()
        with graph.as_default():
            en.set_random_seed(0)
            x = en.placeholder(en.float32, (None, 6), name="x")
            ids = en.placeholder(en.int64, (None,), name="ids")
            t = en.placeholder(en.float32, (None, 1), name="t")
            h = en.concat([x, en.layers.Embedding(10, 3, seed=1)(ids)], 1)
            h = en.layers.Dense(16, activation="relu", seed=2)(h)
            pred = en.layers.Dense(1, seed=3)(h)
            loss = en.reduce_mean(en.square(pred - t))
            step = en.train.AdamOptimizer(0.01).minimize(loss)
            sess = en.Session(config=config_)
            sess.run(en.global_variables_initializer())
            run = sess.make_callable([loss, step], [x, ids, t])
            rng = np.random.default_rng(5)
            losses = []
            for _ in range(15):
                xs = rng.standard_normal((32, 6)).astype(np.float32)
                idv = rng.integers(0, 10, 32)
                losses.append(float(run(xs, idv, xs[:, :1] * 2 + 1)[0]))
            return losses

    np.testing.assert_allclose(train(en.SessionConfig()), train(OFF), rtol=1e-5)


def test_an_unwritable_cache_dir_runs_the_members_unfused_with_a_warning(monkeypatch):
    def refuse(source):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(EW, "chain_kernels", refuse)
    x = en.placeholder(en.float32, (None, 2), name="x")
    y = en.relu(x - 1.0)
    with pytest.warns(RuntimeWarning, match="fusion disabled"):
        got = en.Session(config=ONLY_FUSION).run(y, {x: np.array([[0.0, 3.0]], np.float32)})
    np.testing.assert_array_equal(got, [[0.0, 2.0]])


def test_a_row_sum_above_the_parallel_threshold_gives_the_same_values(monkeypatch):
    """(There the chain runs its parallel kernel, then the sum its own.)"""
    monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", 1000)
    x = en.placeholder(en.float32, (None, 40), name="x")
    bias = en.constant(np.zeros(40, np.float32))
    g = en.relu(x)
    summed = create("SumToShape", [g, bias])
    feed = {x: np.random.default_rng(3).standard_normal((200, 40)).astype(np.float32)}
    on, off = en.Session(), en.Session(config=OFF)
    assert any(s.also for s in on.plan([g, summed], [x]).steps)
    for got, want in zip(on.run([g, summed], feed), off.run([g, summed], feed)):
        np.testing.assert_array_equal(got, want)


def test_a_chain_written_over_its_dying_input_runs_the_loop_that_reads_and_writes_one_array(monkeypatch):
    """The plan writes bias+ReLU over the matmul's buffer and ReLU's gradient over the incoming
    gradient's (passes/liveness.py). Those steps must call the ``_io`` kernels (one array read and
    written: vectorized; ``out`` aliasing ``x0`` is LLVM's scalar fallback), with the same bits."""
    calls = []
    load = EW.chain_kernels

    def recording(source):
        module = load(source)

        def wrap(name):
            def call(*args):
                calls.append(name)
                return getattr(module, name)(*args)
            return call

        names = [n for n in dir(module) if n.startswith(("serial", "parallel"))]
        return type("Recorded", (), {n: staticmethod(wrap(n)) for n in names})

    monkeypatch.setattr(EW, "chain_kernels", recording)
    x = en.placeholder(en.float32, (None, 6), name="x")
    layer = en.layers.Dense(5, activation=en.relu, seed=1)
    loss = en.reduce_sum(en.square(en.layers.Dense(1, seed=2)(layer(x))))
    step = en.train.GradientDescentOptimizer(0.01).minimize(loss)  # the bias gradient is not fetched: kept buffer
    on, off = en.Session(), en.Session(config=en.SessionConfig(optimize=False, reuse_buffers=False))
    for sess in (on, off):
        sess.run(en.global_variables_initializer())
    feed = {x: np.random.default_rng(3).standard_normal((64, 6)).astype(np.float32)}
    for _ in range(3):  # from the second run on, the kept buffers are there to be written over
        assert on.run([loss, step], feed)[0] == off.run([loss, step], feed)[0]
    for got, want in zip(on.run([layer.kernel, layer.bias]), off.run([layer.kernel, layer.bias])):
        np.testing.assert_array_equal(got, want)
    assert "serial_io0" in calls and "serial_sum_io0" in calls  # bias+ReLU and ReLU's gradient, in place
    source = EW.chain_source([(operator.add, [("leaf", 0), ("leaf", 1)]), (_relu, [("step", 0)])], ["full", "row"],
                             "float32", 3)
    module = load(source)
    values, bias = np.arange(-6, 6, dtype=np.float32) / 4, np.array([1, 0, -1], np.float32)
    apart, over = np.empty_like(values), values.copy()
    module.serial(apart, values, bias)
    module.serial_io0(over, bias)
    np.testing.assert_array_equal(over, apart)


@pytest.mark.parametrize("rows", [3, 0])
def test_a_chain_over_rows_of_zero_width_gives_the_empty_result(rows):
    """x (N, 0) + b (0,): no row to repeat (the row kind would read modulo its 0 elements)."""
    graph = en.Graph()
    with graph.as_default():
        x = en.placeholder(en.float32, (None, 0))
        b = en.placeholder(en.float32, (0,))
        y = en.relu(x + b)
    feeds = {x: np.zeros((rows, 0), np.float32), b: np.zeros((0,), np.float32)}
    for session_config in (en.SessionConfig(), OFF):
        out = en.Session(graph, config=session_config).run(y, feeds)
        assert out.shape == (rows, 0) and out.dtype == np.float32


def test_a_generated_module_follows_the_umask_so_another_user_sharing_the_cache_reads_it(tmp_path, monkeypatch):
    """Generated modules were written 0600 (mkstemp's mode): a process of another user sharing NUMBA_CACHE_DIR (a
    cache warmed by a deploy user, served by the app's) could not read one, and failed writing it again."""
    from engine import generated

    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path))
    old = os.umask(0o022)
    try:
        generated.import_generated("VALUE = 1\n", "k1", "modes", "mod", "shelfcast_test_modes_")
    finally:
        os.umask(old)
    assert os.stat(generated.module_path("modes", "mod", "k1")).st_mode & 0o777 == 0o644
