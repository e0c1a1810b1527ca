"""Dead-node pruning: nodes nobody reads after other rewrites are dropped; side effects stay."""

from __future__ import annotations

import dataclasses

import numpy as np

import engine as en
from engine.passes import prune


def test_pruning_drops_what_folding_left_dead_with_identical_results():
    x = en.placeholder(en.float32, (2,), name="x")
    y = x + en.constant(1.0) * en.constant(2.0)
    feed = {x: np.array([1.0, 2.0], np.float32)}
    folded = en.Session(config=en.SessionConfig(passes={"constant_folding"}))
    pruned = en.Session(config=en.SessionConfig(passes={"constant_folding", "pruning"}))
    np.testing.assert_array_equal(folded.run(y, feed), pruned.run(y, feed))
    np.testing.assert_array_equal(pruned.run(y, feed), en.Session(config=en.SessionConfig(optimize=False)).run(y, feed))
    assert len(folded.plan([y], [x]).nodes) == 4  # two dead constants remain without pruning
    assert [n.type for n in pruned.plan([y], [x]).nodes] == ["Const", "Add"]


def test_pruning_keeps_state_writes_fetched_ops_and_control_inputs():
    v = en.Variable(np.zeros((), np.float32), name="v")
    inc = v.assign_add(1.0)
    with en.control_dependencies([inc]):
        done = en.no_op()
    sess = en.Session(config=en.SessionConfig(passes={"pruning"}))
    sess.run(v.initializer)
    sess.run(done)
    sess.run(done)
    assert float(sess.run(v)) == 2.0
    plan = sess.plan([done], [])
    ir_nodes = list(plan.nodes)
    assert {n.type for n in ir_nodes} >= {"AssignAdd", "NoOp"}


def test_prune_on_an_ir_removes_unread_pure_nodes():
    x = en.placeholder(en.float32, (2,), name="x")
    y = x * 2.0
    sess = en.Session(config=en.SessionConfig(optimize=False))
    plan = sess.plan([y], [x])
    from engine.passes import PlanIR

    dead = en.exp(x)  # build a node list with an extra node nobody reads
    extra = dataclasses.replace(sess.plan([dead], [x]).nodes[-1], output=3)  # a slot of its own
    ir = PlanIR(list(plan.nodes[:-1]) + [extra, plan.nodes[-1]], [0], {plan.nodes[-1].output}, set(), 4, {})
    assert [n.type for n in prune(ir).nodes] == ["Const", "Mul"]
