"""Execution plans: buffers kept across runs (never handed to the caller), liveness sharing,
``make_callable``'s cheap feed checks, SessionConfig, and thread safety of a shared plan."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import engine as en


def _mlp():
    x = en.placeholder(en.float32, (None, 8), name="x")
    h = x
    for i in range(4):
        h = en.layers.Dense(8, activation="relu", seed=i, name=f"d{i}")(h)
    return x, h


def test_results_of_one_run_are_not_overwritten_by_the_next():
    x, y = _mlp()
    sess = en.Session()
    sess.run(en.global_variables_initializer())
    call = sess.make_callable(y, [x])
    a_in = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    b_in = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    a = call(a_in)
    a_copy = a.copy()
    b = call(b_in)
    np.testing.assert_array_equal(a, a_copy)
    assert not np.shares_memory(a, b)
    np.testing.assert_array_equal(call(a_in), a_copy)


def test_intermediate_buffers_are_reused_across_runs_and_shared_by_liveness():
    x, y = _mlp()
    sess = en.Session()
    sess.run(en.global_variables_initializer())
    plan = sess.plan([y], [x])
    buffered = [n for n in plan.nodes if n.out_kernel]
    assert len(buffered) >= 4
    assert 0 < plan.n_buffers < len(buffered)  # dead values' buffers serve later steps
    feed = {x: np.ones((3, 8), np.float32)}
    sess.run(y, feed)
    kept = [id(b) for b in plan.buffers]
    sess.run(y, feed)
    assert [id(b) for b in plan.buffers] == kept  # same arrays, no new allocation
    off = en.Session(config=en.SessionConfig(optimize=False, reuse_buffers=False))
    for v in en.global_variables():
        v.load(sess.run(v), off)
    np.testing.assert_allclose(sess.run(y, feed), off.run(y, feed), rtol=1e-6)


def test_make_callable_checks_feeds_cheaply_but_strictly():
    x = en.placeholder(en.float32, (None, 2), name="x")
    call = en.Session().make_callable(x * 2.0, [x])
    np.testing.assert_array_equal(call([[1, 2]]), [[2.0, 4.0]])  # lists go through full conversion
    np.testing.assert_array_equal(call(np.asfortranarray(np.ones((2, 2), np.float32))), np.full((2, 2), 2.0))
    with pytest.raises(en.errors.InvalidArgumentError, match="dtype float64"):
        call(np.ones((1, 2)))
    with pytest.raises(en.errors.InvalidArgumentError, match=r"shape \(1, 3\)"):
        call(np.ones((1, 3), np.float32))
    with pytest.raises(TypeError, match="expected 1 feed values"):
        call()


def test_a_plan_run_with_another_count_of_feed_values_is_refused():
    """Plan.run, the public plan API the profiler uses, zipped the values with the feeds: an extra one was dropped
    silently, a missing one left its placeholder unfed."""
    x = en.placeholder(en.float32, (None, 2), name="x")
    plan = en.Session().plan([x * 2.0], [x])
    np.testing.assert_array_equal(plan.run([np.ones((1, 2), np.float32)])[0], [[2.0, 2.0]])
    for values in ([], [np.ones((1, 2), np.float32)] * 2):
        with pytest.raises(TypeError, match=f"expected 1 feed values, got {len(values)}"):
            plan.run(values)


def test_session_config_validates_its_fields():
    with pytest.raises(ValueError, match="unknown pass"):
        en.SessionConfig(passes={"cse", "loop_unrolling"})
    with pytest.raises(TypeError, match="SessionConfig"):
        en.Session(config={"optimize": False})
    assert en.SessionConfig(optimize=False).enabled_passes == frozenset()
    # the config as the first argument (the graph's) was taken for a graph: every fetch 'not in this session's graph'
    with pytest.raises(TypeError, match=r"takes an en.Graph, got SessionConfig \(a SessionConfig goes as config="):
        en.Session(en.SessionConfig(backend="reference"))
    with pytest.raises(TypeError, match="takes an en.Graph, got str"):
        en.Session("grpc://localhost:2222")


def test_kernel_errors_name_the_op_with_buffers_and_fusion_on():
    a = en.placeholder(en.float32, (None, None), name="a")
    b = en.placeholder(en.float32, (None, None), name="b")
    prod = en.matmul(a, b, name="product")
    sess = en.Session()
    with pytest.raises(en.errors.InvalidArgumentError, match="MatMul op 'product' failed"):
        sess.run(prod, {a: np.ones((2, 3), np.float32), b: np.ones((2, 3), np.float32)})


def test_a_fused_groups_failing_member_is_the_op_the_error_names():
    """A fused group whose operands do not fit runs its ops one by one; the one that failed was reported as the group's
    last op ("fused op 'out' (Add -> Mul -> Exp)", op_name 'out'), where passes off name the Add and its inputs."""
    x = en.placeholder(en.float32, (None,), name="x")
    y = en.placeholder(en.float32, (None,), name="y")
    out = en.exp(en.add(x, y, name="mismatch") * 2.0, name="out")
    feed = {x: np.ones(2, np.float32), y: np.ones(3, np.float32)}
    errors = []
    for config in (en.SessionConfig(), en.SessionConfig(optimize=False)):
        sess = en.Session(config=config)
        with pytest.raises(en.errors.InvalidArgumentError) as failed:
            sess.run(out, feed)
        errors.append((str(failed.value), failed.value.op_name))
    assert "FusedElementwise" in [s.type for s in en.Session().plan(out, [x, y]).steps]  # the group was fused
    assert errors[0] == errors[1] and errors[0][1] == "mismatch"
    assert errors[0][0].startswith("Add op 'mismatch' failed:") and "(inputs: x:0 float32(2,), y:0 float32(3,))" in \
        errors[0][0]


def test_concurrent_calls_of_one_callable_do_not_share_buffers():
    x, y = _mlp()
    sess = en.Session()
    sess.run(en.global_variables_initializer())
    call = sess.make_callable(y, [x])
    inputs = [np.random.default_rng(i).standard_normal((64, 8)).astype(np.float32) for i in range(4)]
    expected = [call(v) for v in inputs]
    errors = []

    def worker(k):
        for _ in range(200):
            got = call(inputs[k])
            if not np.array_equal(got, expected[k]):
                errors.append(k)
                return

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_parallel_kernels_above_the_threshold_give_the_serial_results(monkeypatch):
    from engine import config
    from engine.kernels import reduce as R

    x = np.random.default_rng(0).standard_normal((300, 200)).astype(np.float32)
    serial = [R.reduce(x, (1,), False, "sum"), R.reduce(x, (0,), False, "sum")]
    monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", 1000)
    parallel = [R.reduce(x, (1,), False, "sum"), R.reduce(x, (0,), False, "sum")]
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)
    p = en.placeholder(en.float32, (None, 200), name="p")
    y = en.relu(p + en.constant(np.ones(200, np.float32)))
    np.testing.assert_array_equal(en.Session().run(y, {p: x}), np.maximum(x + 1, 0))


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("k", [1, 5])
def test_matmul_into_kept_buffers_matches_numpy_for_every_transpose(ta, tb, k):
    rng = np.random.default_rng(k)
    a_val = rng.standard_normal((k, 4) if ta else (4, k)).astype(np.float32)
    b_val = rng.standard_normal((3, k) if tb else (k, 3)).astype(np.float32)
    a = en.placeholder(en.float32, a_val.shape, name="a")
    b = en.placeholder(en.float32, b_val.shape, name="b")
    y = en.matmul(a, b, transpose_a=ta, transpose_b=tb) * 1.0  # the product feeds a buffered chain
    expected = (a_val.T if ta else a_val) @ (b_val.T if tb else b_val)
    sess = en.Session()
    for _ in range(2):
        np.testing.assert_allclose(sess.run(y, {a: a_val, b: b_val}), expected, rtol=1e-6)


def test_a_fused_elementwise_step_writes_over_an_input_that_dies_there():
    x = en.placeholder(en.float32, (None, 4), name="x")
    w = en.constant(np.arange(16, dtype=np.float32).reshape(4, 4) / 10)
    b = en.constant(np.array([-1, 0, 1, 2], np.float32))
    product = en.matmul(x, w)
    y = en.matmul(en.relu(product + b), w)  # relu(.. + b) may overwrite `product`
    kept = en.matmul(en.relu(product + b), w) + product  # here `product` is read again later
    xv = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    sess = en.Session()
    plan = sess.plan([y], [x])
    fused = next(n for n in plan.nodes if n.type == "FusedElementwise")
    mm = next(n for n in plan.nodes if n.type == "MatMul")
    sess.run(y, {x: xv})
    assert plan.groups[fused.id] == plan.groups[mm.id]  # the same buffer: written in place
    pre = xv @ (np.arange(16, dtype=np.float32).reshape(4, 4) / 10)
    expected_y = np.maximum(pre + [-1, 0, 1, 2], 0) @ (np.arange(16, dtype=np.float32).reshape(4, 4) / 10)
    np.testing.assert_allclose(sess.run(y, {x: xv}), expected_y, rtol=1e-6)
    np.testing.assert_allclose(sess.run(kept, {x: xv}), expected_y + pre, rtol=1e-6)
    plan_kept = sess.plan([kept], [x])
    fused_kept = [n for n in plan_kept.nodes if n.type == "FusedElementwise"][0]
    mm_kept = next(n for n in plan_kept.nodes if n.type == "MatMul")
    assert plan_kept.groups.get(fused_kept.id) != plan_kept.groups[mm_kept.id]
    off = en.Session(config=en.SessionConfig(optimize=False, reuse_buffers=False))
    np.testing.assert_allclose(sess.run(kept, {x: xv}), off.run(kept, {x: xv}), rtol=1e-6)


@pytest.mark.parametrize("view", ["a row of it", "its transpose"])
def test_an_elementwise_step_never_writes_over_a_buffer_another_operand_views(view):
    """``g + v`` where ``v`` is a view of ``g`` read at other positions (a row broadcast along the rows, a
    transpose): written over ``g`` in place, row 1 would read the row already overwritten."""
    x = en.placeholder(en.float32, (3, 3), name="x")
    g = x * 3.0  # a kept buffer, last read by the sum below
    if view == "a row of it":
        a, b = en.placeholder(en.float32, (1, 3)), en.placeholder(en.float32, (2, 3))
        v, = en.gradients(en.concat([a, b], 0), [a], grad_ys=g)  # ConcatSlice: g[0:1], a view
        feeds = {a: np.zeros((1, 3), np.float32), b: np.zeros((2, 3), np.float32)}
    else:
        v, feeds = en.transpose(g), {}
    out = en.matmul(g + v, en.ones((3, 1)))  # the sum is not fetched: it gets a kept buffer
    xv = np.arange(9, dtype=np.float32).reshape(3, 3) + 1
    gv = xv * 3
    expected = ((gv + (gv[0:1] if view == "a row of it" else gv.T)).sum(axis=1, keepdims=True))
    for config in (en.SessionConfig(), en.SessionConfig(optimize=False, reuse_buffers=False),
                   en.SessionConfig(backend="reference")):
        got = en.Session(config=config).run(out, {x: xv, **feeds})
        np.testing.assert_array_equal(got, expected, err_msg=str(config))
