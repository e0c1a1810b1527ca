"""Per-op profiles (engine/profiler.py): every step timed, bytes right, table and Chrome trace."""

from __future__ import annotations

import json

import numpy as np
import pytest

import engine as en


def _graph():
    x = en.placeholder(en.float32, shape=(None, 3), name="x")
    w = en.Variable(np.ones((3, 4), np.float32), name="w")
    y = en.matmul(x, w, name="product")
    return x, w, en.reduce_sum(en.relu(y), name="total")


def test_profile_times_every_step_and_counts_bytes():
    x, _, total = _graph()
    feed = {x: np.ones((5, 3), np.float32)}
    with en.Session() as sess:
        sess.run(en.global_variables_initializer())
        prof = en.profiler.profile(sess, total, feed, runs=4)
        assert float(sess.run(total, feed)) == pytest.approx(60.0)
    assert prof.runs == 4 and len(prof.events) == 4 * len(prof.ops)
    assert all(op.calls == 4 and op.total_ns > 0 for op in prof.ops)
    product = next(op for op in prof.ops if op.name == "product")
    assert product.type == "MatMul"
    assert product.output_bytes == 5 * 4 * 4 and product.input_bytes == (5 * 3 + 3 * 4) * 4
    types = {row[0] for row in prof.by_type()}
    assert "MatMul" in types and sum(row[3] for row in prof.by_type()) == prof.total_ns
    table = prof.table()
    assert "product" in table and "MatMul" in table and "op type" in table


def test_profile_runs_the_plan_as_a_run_does_with_its_kept_buffers():
    """What is timed is what a run executes: the plan's runners and kept buffers (a step written over its
    dying input runs its in-place loop), not each kernel with a fresh output."""
    x, _, total = _graph()
    feed = {x: np.ones((5, 3), np.float32)}
    with en.Session() as sess:
        sess.run(en.global_variables_initializer())
        plan = sess.plan(total, [x])
        assert plan.n_buffers and all(b is None for b in plan.buffers)  # not run yet
        en.profiler.profile(sess, total, feed, runs=2)
        assert all(b is not None for b in plan.buffers)
        assert float(sess.run(total, feed)) == pytest.approx(60.0)


def test_chrome_trace_is_valid_trace_event_json(tmp_path):
    x, _, total = _graph()
    with en.Session() as sess:
        sess.run(en.global_variables_initializer())
        prof = en.profiler.profile(sess, [total], {x: np.ones((2, 3), np.float32)}, runs=2)
    path = prof.write_chrome_trace(str(tmp_path / "trace.json"))
    doc = json.loads(open(path, encoding="utf-8").read())
    complete = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert len(complete) == 2 * len(prof.ops)
    assert all({"name", "cat", "ts", "dur", "pid", "tid"} <= set(e) and e["dur"] >= 0 for e in complete)
    starts = [e["ts"] for e in complete]
    assert starts == sorted(starts)  # steps run one after another
    assert {"product"} <= {e["name"] for e in complete}


def test_profile_runs_stateful_steps_for_real():
    v = en.Variable(np.zeros(2, np.float32), name="counter")
    inc = v.assign_add(np.ones(2, np.float32))
    with en.Session() as sess:
        sess.run(en.global_variables_initializer())
        en.profiler.profile(sess, inc, runs=3, warmup=1)
        np.testing.assert_array_equal(sess.run(v), [4.0, 4.0])


def test_profile_rejects_bad_counts_and_missing_feeds():
    x, _, total = _graph()
    with en.Session() as sess:
        with pytest.raises(ValueError, match="runs"):
            en.profiler.profile(sess, total, {x: np.ones((1, 3), np.float32)}, runs=0)
        with pytest.raises(en.errors.InvalidArgumentError, match="placeholder"):
            en.profiler.profile(sess, total)


def test_profile_names_the_op_whose_kernel_fails_as_a_run_does():
    x = en.placeholder(en.float32, (None, 2), name="x")
    y = en.placeholder(en.float32, (None, 2), name="y")
    total = en.reduce_sum(en.square(x - y, name="gap"))
    feed = {x: np.ones((5, 2), np.float32), y: np.ones((4, 2), np.float32)}
    with en.Session() as sess:
        with pytest.raises(en.errors.InvalidArgumentError) as ran:
            sess.run(total, feed)
        with pytest.raises(en.errors.InvalidArgumentError) as profiled:
            en.profiler.profile(sess, total, feed, runs=1)
    assert str(profiled.value) == str(ran.value)
    assert profiled.value.op_name == ran.value.op_name
