"""Variables: named state that lives in a Session and survives across runs (whitepaper section 2).

Reads have TensorFlow 1.x reference semantics: an op sees a variable's value when it runs (updates write in place),
so ``control_dependencies`` order side effects; ``read_value()`` takes a snapshot (gradients flow through it to the
variable). Assignments name the variable by attribute, not by a data input: assigning never needs the old value and
reading never runs an assignment (partial execution stays exact).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from engine import dtypes, shapes
from engine.errors import InvalidArgumentError, uninitialized
from engine.graph import (GLOBAL_VARIABLES, TRAINABLE_VARIABLES, _OperatorsMixin, convert_to_tensor,
                          get_default_graph, python_value_to_array)
from engine.ops._util import declared
from engine.ops.control import group
from engine.registry import NUMPY_KERNEL, Example, register

_V = np.arange(6, dtype=np.float32).reshape(2, 3)  # the variable "w" of the examples
_VAR_ATTRS = {"var": "w", "dtype": dtypes.float32, "shape": (2, 3)}


def read_state(ctx, name):
    """The session's array for variable ``name``; FailedPreconditionError when never initialized."""
    try:
        return ctx.state[name]
    except KeyError:
        raise uninitialized(name) from None


register("VariableV2", infer=declared, kernel=lambda op, ctx: partial(read_state, ctx, op.name),
         reference=NUMPY_KERNEL, examples=lambda rng: [Example((), {"dtype": dtypes.float32, "shape": (2, 3)},
                                                               {"subject": _V})],
         stateful=True, not_differentiable="a source: its storage (gradients are taken w.r.t. a read of it)",
         output_aliases="storage", emit=lambda c, op, ins: c.param_variable(op.name),
         variable_read=lambda op: op.name)


def _assign_infer(inputs, attrs):
    value = inputs[0]
    if value.dtype != attrs["dtype"]:
        raise TypeError(f"value dtype {value.dtype.name} differs from variable {attrs['var']} ({attrs['dtype'].name})")
    if not shapes.compatible(value.shape, attrs["shape"]):
        raise ValueError(f"value shape {value.shape} differs from variable {attrs['var']} shape {attrs['shape']}")
    return declared(inputs, attrs)


def _check_runtime_shape(op, value):
    if value.shape != op.attrs["shape"]:
        raise InvalidArgumentError(
            f"{op.type} '{op.name}': value of shape {value.shape} cannot be assigned to variable "
            f"{op.attrs['var']} of shape {op.attrs['shape']}", op.name)


def _assign_kernel(op, ctx):
    state, name, npd = ctx.state, op.attrs["var"], op.attrs["dtype"].np

    def assign(value):
        _check_runtime_shape(op, value)
        current = state.get(name)
        if current is not None and current.shape == value.shape and current.flags.writeable:
            np.copyto(current, value)  # in place: every read of the variable sees the new value
            return current
        stored = np.array(value, dtype=npd, copy=True, order="C")
        state[name] = stored
        return stored

    return assign


def _assign_update_kernel(ufunc):
    def make(op, ctx):
        name = op.attrs["var"]

        def update(value):
            current = read_state(ctx, name)
            _check_runtime_shape(op, value)
            ufunc(current, value, out=current)
            return current

        return update

    return make


def _read_kernel(op, ctx):
    name = op.attrs["var"]
    return lambda: read_state(ctx, name).copy()


def _state_examples(with_value):
    def examples(rng):
        value = (rng.standard_normal((2, 3)).astype(np.float32),) if with_value else ()
        return [Example(value, dict(_VAR_ATTRS), {"w": _V})]

    return examples


register("ReadVariable", infer=declared, kernel=_read_kernel,
         reference=NUMPY_KERNEL, examples=_state_examples(False), stateful=True,
         not_differentiable="a source: the variable's value (gradients are taken w.r.t. this output)",
         emit=lambda c, op, ins: c.param_variable(op.attrs["var"]), variable_read=lambda op: op.attrs["var"])
for _name, _kernel in (("Assign", _assign_kernel), ("AssignAdd", _assign_update_kernel(np.add)),
                       ("AssignSub", _assign_update_kernel(np.subtract))):
    register(_name, infer=_assign_infer, kernel=_kernel, reference=NUMPY_KERNEL, examples=_state_examples(True),
             stateful=True, writes_state=True, not_differentiable="a state update: no gradient flows through it",
             output_aliases="storage")


class Variable(_OperatorsMixin):
    """A tensor whose value persists in the Session between runs, from when its ``.initializer`` runs."""

    def __init__(self, initial_value, name=None, trainable=True, dtype=None, collections=None):
        graph = get_default_graph()
        var_name = graph.unique_name(name or "Variable")
        # made as TensorFlow's init_scope makes them: no control edge of an enclosing control_dependencies block
        with graph.control_dependencies(None), graph.name_scope(var_name + "/"):
            value = initial_value() if callable(initial_value) else initial_value
            init = convert_to_tensor(value, dtype=dtype, name="initial_value",
                                     what=f"Variable {var_name}: initial value")
        if not shapes.is_fully_defined(init.shape):
            raise ValueError(f"Variable {var_name}: initial value shape {init.shape} must be fully defined")
        self._dtype = init.dtype
        self._shape = tuple(init.shape)
        with graph.control_dependencies(None):
            self.op = graph.create_op("VariableV2", (), {"dtype": init.dtype, "shape": self._shape},
                                      name=var_name, exact_name=True)
            with graph.name_scope(var_name + "/"):
                self.initializer = self._state_op("Assign", "Assign", init).op
        self.initial_value = init  # as TensorFlow's: what the initializer assigns, to make another variable from
        self._value = self.op.outputs[0]
        self.trainable = bool(trainable)
        for key in collections or ([GLOBAL_VARIABLES] + ([TRAINABLE_VARIABLES] if trainable else [])):
            graph.add_to_collection(key, self)

    def _state_op(self, op_type, name, *values):
        inputs = [convert_to_tensor(v, dtype=self._dtype, graph=self.op.graph,
                                    what=f"{op_type} of variable {self.op.name}") for v in values]
        attrs = {"var": self.op.name, "dtype": self._dtype, "shape": self._shape}
        return self.op.graph.create_op(op_type, inputs, attrs, name=name).outputs[0]

    @property
    def name(self) -> str:
        return self.op.name + ":0"

    @property
    def dtype(self):
        return self._dtype

    @property
    def shape(self):
        return self._shape

    @property
    def graph(self):
        return self.op.graph

    def value(self):
        return self._value

    def read_value(self, name=None):
        """A snapshot of the value, read when this op runs (after the current control dependencies)."""
        return self._state_op("ReadVariable", name)

    def _as_tensor(self):
        return self._value

    def assign(self, value, name=None):
        """Op setting the variable to ``value`` (same shape and dtype); its output is the new value."""
        return self._state_op("Assign", name, value)

    def assign_add(self, delta, name=None):
        return self._state_op("AssignAdd", name, delta)

    def assign_sub(self, delta, name=None):
        return self._state_op("AssignSub", name, delta)

    def load(self, value, session):
        """Set the value directly in ``session`` (no graph op), checked against shape and dtype."""
        if self.graph is not session.graph:  # state is keyed by name: another graph's same-named variable
            raise ValueError(f"cannot load variable {self.op.name} into a session of another graph")
        arr = python_value_to_array(value, self._dtype, what=f"value for variable {self.op.name}")
        if arr.shape != self._shape:
            raise InvalidArgumentError(f"value of shape {arr.shape} cannot be loaded into variable {self.op.name} "
                                       f"of shape {self._shape}", self.op.name)
        session.state[self.op.name] = np.array(arr, copy=True, order="C")

    def __repr__(self) -> str:
        return f"<en.Variable '{self.name}' shape={self._shape} dtype={self._dtype.name}>"


def check_variables(values, what: str) -> None:
    """TypeError naming ``what`` unless every value is a Variable: updates, slots and checkpoints are keyed by
    variable (a tensor there failed as an AttributeError, 'assign_add', or was saved as 'uninitialized variable')."""
    for v in values:
        if not isinstance(v, Variable):
            raise TypeError(f"{what}: {v!r} is not a variable")


def global_variables(graph=None):
    return (graph or get_default_graph()).get_collection(GLOBAL_VARIABLES)


def trainable_variables(graph=None):
    return (graph or get_default_graph()).get_collection(TRAINABLE_VARIABLES)


def variables_initializer(var_list, name="init"):
    return group(*[v.initializer for v in var_list], name=name)


def global_variables_initializer():
    """One op that initializes every variable created so far in the default graph."""
    return variables_initializer(global_variables(), name="init")


def assign(ref, value, name=None):
    return ref.assign(value, name=name)


def assign_add(ref, value, name=None):
    return ref.assign_add(value, name=name)


def assign_sub(ref, value, name=None):
    return ref.assign_sub(value, name=name)


