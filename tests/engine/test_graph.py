"""Graph construction: names, scopes, control dependencies, static shape/dtype inference and errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

import engine as en
from engine.ops import array as A


def test_unique_names_and_scopes():
    a = en.constant(1.0, name="c")
    b = en.constant(2.0, name="c")
    assert (a.name, b.name) == ("c:0", "c_1:0")
    with en.name_scope("layer"):
        c = en.add(a, b)
        with en.name_scope("inner"):
            d = en.multiply(c, c, name="prod")
    with en.name_scope("layer"):
        e = en.add(a, b)
    assert c.op.name == "layer/Add"
    assert d.op.name == "layer/inner/prod"
    assert e.op.name == "layer_1/Add"
    v = None
    with en.name_scope("dense"):
        v = en.Variable(np.zeros((2, 2), np.float32), name="kernel")
    assert v.name == "dense/kernel:0" and v.op.name == "dense/kernel"
    assert en.get_default_graph().get_tensor_by_name("layer/inner/prod:0") is d


def test_graph_as_default_and_isolation():
    g = en.Graph()
    with g.as_default():
        x = en.constant(1.0)
        assert en.get_default_graph() is g
    assert en.get_default_graph() is not g
    assert x.graph is g
    with pytest.raises(ValueError, match="another graph"):
        en.add(x, en.constant(2.0))


def test_static_shapes_and_dtypes():
    x = en.placeholder(en.float32, (None, 3))
    w = en.Variable(np.ones((3, 4), np.float32))
    y = en.matmul(x, w) + en.constant(np.zeros(4, np.float32))
    assert y.shape == (None, 4) and y.dtype == en.float32
    assert en.reduce_sum(y, axis=1).shape == (None,)
    assert en.reduce_mean(y, axis=0, keepdims=True).shape == (1, 4)
    assert en.reshape(y, (-1, 2)).shape == (None, 2)
    assert en.concat([y, y], axis=1).shape == (None, 8)
    assert en.gather(w, np.array([[0, 1]])).shape == (1, 2, 4)
    assert en.transpose(y).shape == (4, None)
    assert (x > 0.0).dtype == en.bool
    assert en.placeholder(en.int64).shape is None
    assert en.shape(x).dtype == en.int64


def test_an_axis_named_twice_or_a_perm_that_is_no_permutation_is_refused_at_any_rank():
    """Sum over (0, 0) summed axis 0 once in the kernels while NumPy (the reference) refused it; a perm of
    (-1, 0) was refused for a known rank but ran as (1, 0) for an unknown one."""
    known, unknown = en.placeholder(en.float32, (2, 3)), en.placeholder(en.float32)
    for x in (known, unknown):
        with pytest.raises(ValueError, match="not a permutation"):
            en.transpose(x, (-1, 0))
    with pytest.raises(ValueError, match=r"names axis 0 twice"):
        en.reduce_sum(known, axis=(0, -2))
    with en.Session() as s:
        with pytest.raises(en.errors.InvalidArgumentError, match=r"names axis 0 twice"):
            s.run(en.reduce_sum(unknown, axis=(0, 0)), {unknown: np.ones((2, 3), np.float32)})


def test_shape_error_names_op_and_inputs():
    a = en.placeholder(en.float32, (3, 4), name="a")
    b = en.placeholder(en.float32, (5,), name="b")
    with pytest.raises(ValueError, match=r"Add op 'Add'.*a:0 float32 \(3, 4\).*b:0 float32 \(5,\)"):
        en.add(a, b)
    with pytest.raises(ValueError, match=r"MatMul op .*inner dimensions differ: 4 vs 5"):
        en.matmul(a, en.placeholder(en.float32, (5, 2)))


def test_dtype_errors_are_not_silent():
    f = en.placeholder(en.float32, (2,), name="f")
    i = en.placeholder(en.int32, (2,), name="i")
    with pytest.raises(TypeError, match=r"dtypes differ \(float32 vs int32\).*f:0"):
        en.add(f, i)
    with pytest.raises(TypeError, match="not integral"):
        i * 1.5
    with pytest.raises(TypeError, match="cannot be used as float32"):
        f + np.array([1.0, 2.0])  # float64 array into a float32 op
    with pytest.raises(TypeError, match=r"RealDiv op .*dtype int32 is not supported \(needs float\)"):
        en.divide(i, i)
    for build in (lambda: en.reduce_mean(i), lambda: i.graph.create_op("Mean", [i], {"axis": 0, "keepdims": False})):
        with pytest.raises(TypeError, match=r"Mean op .*dtype int32 is not supported \(needs float\)"):
            build()  # the op's own rule: its kernel could not run an int mean (the reference truncated one)
    # found by a probe: BroadcastReduced (a reduction's gradient) said int32 for a mean of ints, and both its
    # kernel and its reference returned float64 (g / count)
    x = en.placeholder(en.int32, (2, 3))
    with pytest.raises(TypeError, match=r"BroadcastReduced op .*dtype int32 is not supported \(needs float\)"):
        A.broadcast_reduced(en.placeholder(en.int32, (2, 1)), x, 1, True, mean=True)
    summed = A.broadcast_reduced(en.placeholder(en.int32, (2, 1)), x, 1, True, mean=False)
    value = en.Session().run(summed, {summed.op.inputs[0]: [[1], [2]], x: np.zeros((2, 3), np.int32)})
    assert summed.dtype == en.int32 and value.dtype == np.int32
    assert (f * 2).dtype == en.float32 and (i * 2).dtype == en.int32


@pytest.mark.parametrize("build,said", [
    (lambda f, i, v: f + np.array([1.0, 2.0]), r"Add op: input 1 beside f:0: array of dtype float64 .*float32"),
    (lambda f, i, v: np.array([1.0, 2.0]) * f, r"Mul op: input 0 beside f:0: array of dtype float64 .*float32"),
    (lambda f, i, v: i * 2 ** 40, r"Mul op: input 1 beside i:0: 1099511627776 is out of the range of int32"),
    (lambda f, i, v: en.maximum(i, 2.5, name="cap"), r"Maximum op 'cap': input 1 beside i:0: 2.5 is not integral"),
    (lambda f, i, v: en.matmul(en.reshape(f, (1, 2)), np.ones((2, 2))), r"MatMul op: input 1 beside Reshape:0"),
    (lambda f, i, v: en.where([True, False], f, np.zeros(2)), r"Select op: input 2 beside f:0: .*float64"),
    (lambda f, i, v: en.where([1, 0], f, f), r"Select op: input 0: .*not boolean"),
    (lambda f, i, v: en.leaky_relu(f, np.float64(0.1)), r"LeakyRelu op: alpha beside f:0: .*float64"),
    (lambda f, i, v: v.assign(np.zeros(2)), r"Assign of variable v: array of dtype float64 .*float32"),
    (lambda f, i, v: v.assign_add(i), r"AssignAdd of variable v: expected a float32 tensor, got i:0 of dtype int32"),
    (lambda f, i, v: en.gradients(f * 2.0, [f], grad_ys=[np.ones(2)]), r"gradients: grad_ys for Mul:0: .*float64"),
    (lambda f, i, v: en.Variable(np.zeros(2), dtype=en.float32, name="w"), r"Variable w: initial value: .*float64"),
    (lambda f, i, v: en.Variable(f, dtype=en.int32, name="w"), r"Variable w: initial value: expected a int32 tensor"),
])
def test_a_value_refused_beside_a_tensor_names_the_op_and_the_tensor(build, said):
    """A Python or NumPy operand that cannot take its tensor operand's dtype (NumPy's float64 beside a float32
    tensor: the commonest mixed-dtype mistake) said "constant Const: array of dtype float64 cannot be used as
    float32", naming neither the op nor the tensor; two tensors of different dtypes name both already."""
    f = en.placeholder(en.float32, (2,), name="f")
    i = en.placeholder(en.int32, (2,), name="i")
    v = en.Variable(np.zeros(2, np.float32), name="v")
    with pytest.raises((TypeError, ValueError), match=said):
        build(f, i, v)


def test_operators_build_the_expected_ops():
    x = en.placeholder(en.float32, (2,))
    types = [t.op.type for t in (x + 1, 1 - x, x * x, x / 2, x @ en.reshape(x, (2, 1)) if False else x ** 2, -x,
                                 x < 1, x >= 1, abs(x))]
    assert types == ["Add", "Sub", "Mul", "RealDiv", "Pow", "Neg", "Less", "GreaterEqual", "Abs"]
    m = en.placeholder(en.float32, (2, 2))
    assert (m @ m).op.type == "MatMul"
    assert len({x, x}) == 1 and x == x  # identity semantics: hashable, usable as dict keys
    with pytest.raises(TypeError, match="truth value"):
        bool(x > 0)


def test_control_dependencies_and_group():
    a = en.no_op(name="a")
    b = en.constant(1.0)
    with en.control_dependencies([a, b]):
        c = en.constant(2.0)
        with en.control_dependencies(None):
            d = en.constant(3.0)
    assert c.op.control_inputs == (a, b.op)
    assert d.op.control_inputs == ()
    g = en.group(a, [c, d])
    assert g.type == "NoOp" and set(g.control_inputs) == {a, c.op, d.op}


def test_variable_requires_known_shape_and_checks_assign():
    with pytest.raises(ValueError, match="fully defined"):
        en.Variable(en.placeholder(en.float32, (None,)))
    v = en.Variable(np.zeros(3, np.float32), name="v")
    with pytest.raises(ValueError, match=r"shape \(2,\) differs from variable v"):
        v.assign(np.zeros(2, np.float32))
    assert v in en.trainable_variables() and v in en.global_variables()
    w = en.Variable(1.0, trainable=False)
    assert w not in en.trainable_variables()


def test_python_numbers_out_of_the_dtypes_range_are_refused_not_wrapped():
    x = en.placeholder(en.int32, (None,), name="x")
    f = en.placeholder(en.float32, (None,), name="f")
    for make, value, dtype in [(lambda: en.constant(2 ** 40), "1099511627776", "int32"),
                               (lambda: en.constant(3e9, en.int32), "3000000000.0", "int32"),
                               (lambda: en.constant(2 ** 63, en.int64), "9223372036854775808", "int64"),
                               (lambda: en.constant(1e39), "1e+39", "float32"),
                               (lambda: en.greater(x, 2 ** 32), "4294967296", "int32"),
                               (lambda: en.Session().run(x, {x: [2 ** 40]}), "1099511627776", "int32"),
                               (lambda: en.Session().run(f, {f: [1e39]}), "1e+39", "float32")]:
        with pytest.raises(ValueError, match=re.escape(value) + f".*out of the range of {dtype}"):
            make()
    assert en.Session().run(en.constant([-2 ** 31, 2 ** 31 - 1], en.int32)).tolist() == [-2 ** 31, 2 ** 31 - 1]
    assert np.isinf(en.Session().run(en.constant(float("inf")))) and en.Session().run(en.constant(1e-50)) == 0


def test_python_and_numpy_operands_join_the_tensors_graph_not_the_default_one():
    g = en.Graph()
    with g.as_default():
        x = en.placeholder(en.float32, (None, 2), name="x")
        v = en.Variable(np.zeros(2, np.float32), name="v")
        c = en.placeholder(en.bool, (2,), name="c")
    made = [x * 2.0, 3.0 - x, en.where(c, 1.0, 0.0), en.concat([x, np.ones((1, 2), np.float32)], 0),
            en.gather(v, [1, 0]), v.assign(np.ones(2, np.float32)), en.layers.Dense(3, seed=0)(x), en.leaky_relu(x)]
    assert all(t.graph is g for t in made)
    assert en.get_default_graph().get_operations() == []
    with en.Session(g) as s:
        s.run(en.global_variables_initializer())
        assert s.run(made[0], {x: np.ones((1, 2), np.float32)}).tolist() == [[2.0, 2.0]]


def test_group_joins_its_inputs_graph_and_control_inputs_of_another_graph_are_refused():
    """en.group (and variables_initializer) built its NoOp in the default graph whatever its inputs' graph: a
    session of their graph could not run it, and one of the default graph ran the other graph's ops."""
    g = en.Graph()
    with g.as_default():
        v = en.Variable(np.zeros(2, np.float32), name="v")
        inc = v.assign_add(np.ones(2, np.float32))
    step, init = en.group(inc.op), en.variables_initializer([v])
    assert step.graph is g and init.graph is g
    with en.Session(g) as sess:
        sess.run(init)
        sess.run(step)
        assert sess.run(v).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="control input 'AssignAdd' is from another graph"):
        en.get_default_graph().create_op("NoOp", control_inputs=[inc.op])


def test_gradients_of_another_graphs_tensors_are_refused():
    with en.Graph().as_default():
        x = en.placeholder(en.float32, (2,))
    y = en.reduce_sum(en.square(en.placeholder(en.float32, (2,))))
    with pytest.raises(ValueError, match="another graph"):
        en.gradients(y, [x])


def test_ops_needed_stops_at_an_op_whose_outputs_are_all_fed():
    from engine.graph import ops_needed

    x = en.placeholder(en.float32, (None, 2), name="x")
    h = en.relu(x, name="h")
    with en.control_dependencies([h.op]):
        o = en.identity(h, name="o")
    assert ops_needed([o], [h]) == {o.op}
    assert ops_needed([h.op], [h]) == set()
    assert ops_needed([o], []) == {o.op, h.op, x.op}


@pytest.mark.parametrize("make, field", [
    (lambda: en.layers.Dense(2.5), "Dense dense: units"), (lambda: en.layers.Dense("3"), "Dense dense: units"),
    (lambda: en.layers.Dense(0), "Dense dense: units"), (lambda: en.layers.Dense(True), "Dense dense: units"),
    (lambda: en.layers.Embedding(5.9, 2), "Embedding embedding: input_dim"),
    (lambda: en.layers.Embedding(5, 0, name="ids"), "Embedding ids: output_dim")])
def test_a_layer_size_that_is_not_a_whole_number_of_at_least_1_is_refused_naming_it(make, field):
    """Dense(2.5) built 2 units and Embedding(5.9, 2) 5 rows, silently; Dense(0) on 0 features divided by zero."""
    with pytest.raises(ValueError, match=f"{field} must be a whole number of at least 1"):
        make()
    assert en.layers.Dense(np.int64(3))(en.placeholder(en.float32, (None, 2))).shape == (None, 3)


@pytest.mark.parametrize("build", [
    lambda x: en.reshape(x, (2.5, -1)), lambda x: en.constant(1.0, shape=(2.5,)),
    lambda x: en.reduce_sum(x, axis=1.5), lambda x: en.reduce_max(x, axis=(0.5,)), lambda x: en.concat([x, x], 1.5),
    lambda x: en.expand_dims(x, 0.5), lambda x: en.squeeze(x, 0.5), lambda x: en.transpose(x, (1.5, 0)),
    lambda x: en.softmax(x, axis=0.5)])
def test_a_fractional_axis_or_dimension_is_refused_not_truncated(build):
    """int() made reshape(x, (2.5, -1)) a (2, 3) and reduce_sum(x, axis=1.5) a sum over axis 1, silently."""
    x = en.placeholder(en.float32, (2, 3))
    with pytest.raises(TypeError):
        build(x)
    assert en.reduce_sum(x, axis=np.int64(1)).shape == (2,) and en.reshape(x, [np.int32(3), -1]).shape == (3, 2)


@pytest.mark.parametrize("target", [(0, -1), (-1, 0), (2, 0, -1)])
def test_a_reshape_target_with_a_minus_one_beside_a_zero_is_refused_at_any_input_shape(target):
    """NumPy (the interpreted kernel) refuses such a target at every input size, an empty batch's too (any size fits the
    -1); the compiled plan's Numba reshape returned (0, 0) for an empty batch instead: the same graph gave a result
    compiled and an error interpreted. Refused when the graph is built, whatever the input's static shape."""
    for shape in [(None, 2), (0, 2), None]:
        with pytest.raises(ValueError, match=r"Reshape op .*has a -1 beside a 0"):
            en.reshape(en.placeholder(en.float32, shape), target)
    assert en.reshape(en.placeholder(en.float32, (None, 2)), (0, 4)).shape == (0, 4)  # a 0 alone stays valid


def test_a_layer_first_called_under_control_dependencies_initializes_without_them():
    """Dense's and Embedding's initial values (RandomUniform, zeros) took the block's control edge, so
    global_variables_initializer() ran the block's op: here a counter's increment, left at 1 after init."""
    x = en.placeholder(en.float32, (None, 3), name="x")
    counter = en.Variable(0.0, name="counter")
    with en.control_dependencies([counter.assign_add(1.0)]):
        en.layers.Dense(2, seed=0)(x)
        en.layers.Embedding(5, 2, seed=0)(en.constant([1]))
    with en.Session() as s:
        s.run(en.global_variables_initializer())
        assert s.run(counter) == 0.0
