"""Optimizers (TensorFlow 1.x ``tf.train`` names): each variable's step is one fused-kernel op.

Slots (accumulators, Adam's m and v) are non-trainable variables ``<variable>/<Optimizer>`` (``_1`` for a second):
``Saver`` checkpoints them, ``global_variables_initializer`` run after the optimizer is built initializes them. Sparse
gradients (``gather``'s) update only the gathered rows: lazy Adam (``tf.contrib.opt.LazyAdamOptimizer``) leaves other
rows' values, m and v as they are; the bias correction counts the optimizer's steps.
"""

from __future__ import annotations

import numpy as np

from engine.autodiff import gradients
from engine.graph import IndexedSlices, convert_to_tensor, get_default_graph, is_tensor_like
from engine.ops.array import cast
from engine.ops.control import group
from engine.ops.state import Variable, check_variables, trainable_variables
from engine.saver import Saver, export_inference_graph, import_inference_graph, InferenceModel  # noqa: F401  (tf.train names)

GLOBAL_STEP = "global_step"


def hyperparameter(name: str, value, upper: float = np.inf, upper_open: bool = False) -> float:
    """`value` as a float in [0, upper] (or [0, upper)): a negative or NaN learning rate trained silently to NaN."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if not (0.0 <= number <= upper) or (upper_open and number == upper) or not np.isfinite(number):
        bound = f"{upper:g})" if upper_open else ("inf)" if upper == np.inf else f"{upper:g}]")
        raise ValueError(f"{name}: expected a finite number in [0, {bound}, got {value!r}")
    return number


class Optimizer:
    """compute_gradients / apply_gradients / minimize, as in TensorFlow 1.x; a subclass gives its update ops' ``kind``
    (``Apply<kind>``/``SparseApply<kind>``, engine/ops/training.py), their slots and attributes."""

    def __init__(self, learning_rate, name, kind=""):
        if not is_tensor_like(learning_rate):
            learning_rate = hyperparameter("learning_rate", learning_rate)
        self._lr = learning_rate
        self._name = name
        self._kind = kind
        self._slot_inits: tuple = ()  # (the update's attribute naming a slot variable, its initial value)
        self._attrs: dict = {}  # the update's hyperparameters
        self._slots: dict[tuple[str, str], Variable] = {}

    def compute_gradients(self, loss, var_list=None):
        """[(gradient, variable)] for the trainable variables (gradient None when unconnected)."""
        loss = convert_to_tensor(loss)
        var_list = list(var_list) if var_list is not None else trainable_variables(loss.graph)
        if not var_list:
            raise ValueError("no variables to optimize")
        check_variables(var_list, "var_list")
        return list(zip(gradients(loss, [v._as_tensor() for v in var_list]), var_list))

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        """One op applying every (gradient, variable) update, then incrementing ``global_step``."""
        pairs = [(g, v) for g, v in grads_and_vars if g is not None]
        if not pairs:
            names = [v.name for _, v in grads_and_vars]
            raise ValueError(f"No gradients provided for any variable: {names}")
        check_variables([v for _, v in pairs] + ([] if global_step is None else [global_step]),
                        "grads_and_vars" if global_step is None else "grads_and_vars or global_step")
        graph = pairs[0][1].graph
        with graph.as_default():
            for _, v in pairs:
                self._create_slots(v)
            with graph.name_scope(name or self._name):
                rates: dict = {}
                updates = [self._apply(g, v, self._rate_for(v, rates)) for g, v in pairs]
                done = self._finish(updates)
                if global_step is None:
                    return done
                with graph.control_dependencies([done]):
                    return global_step.assign_add(np.ones((), global_step.dtype.np)).op

    def minimize(self, loss, var_list=None, global_step=None, name=None):
        """compute_gradients then apply_gradients: the training-step op."""
        return self.apply_gradients(self.compute_gradients(loss, var_list), global_step=global_step, name=name)

    def _rate_for(self, var, rates):
        """The learning rate as a scalar tensor of ``var``'s dtype (a tensor rate may be fed or scheduled)."""
        if var.dtype not in rates:
            if is_tensor_like(self._lr):
                t = convert_to_tensor(self._lr)
                rates[var.dtype] = t if t.dtype == var.dtype else cast(t, var.dtype)
            else:
                rates[var.dtype] = convert_to_tensor(float(self._lr), dtype=var.dtype, name="learning_rate")
        return rates[var.dtype]

    def _slot(self, var, slot: str, init: float) -> Variable:
        key = (var.op.name, slot)
        if key not in self._slots:
            with var.graph.name_scope(""):
                self._slots[key] = Variable(np.full(var.shape, init, dtype=var.dtype.np),
                                            name=f"{var.op.name}/{slot}", trainable=False)
        return self._slots[key]

    def get_slot(self, var, name):
        return self._slots.get((var.op.name, name))

    def get_slot_names(self):
        return sorted({s for _, s in self._slots})

    def _create_slots(self, var) -> dict:
        """The update's attributes naming ``var``'s slots, created on first use."""
        return {attr: self._slot(var, self._name + (f"_{k}" if k else ""), init).op.name
                for k, (attr, init) in enumerate(self._slot_inits)}

    def _finish(self, updates):
        return group(*updates, name="update")

    def _apply(self, grad, var, lr):
        attrs = {"var": var.op.name, "dtype": var.dtype, "shape": var.shape, **self._create_slots(var), **self._attrs}
        name = f"update_{var.op.name.replace('/', '_')}"
        if isinstance(grad, IndexedSlices):
            return var.graph.create_op(f"SparseApply{self._kind}", [grad.values, grad.indices, lr], attrs, name=name)
        return var.graph.create_op(f"Apply{self._kind}", [convert_to_tensor(grad), lr], attrs, name=name)


class GradientDescentOptimizer(Optimizer):
    """var -= lr * grad."""

    def __init__(self, learning_rate, name="GradientDescent"):
        super().__init__(learning_rate, name, "GradientDescent")


class MomentumOptimizer(Optimizer):
    """accum = momentum * accum + grad; var -= lr * accum (Nesterov: lr * (grad + momentum * accum))."""

    def __init__(self, learning_rate, momentum, use_nesterov=False, name="Momentum"):
        super().__init__(learning_rate, name, "Momentum")
        self._attrs = {"momentum": hyperparameter("momentum", momentum), "nesterov": bool(use_nesterov)}
        self._slot_inits = (("accum", 0.0),)


class AdagradOptimizer(Optimizer):
    """accum += grad^2; var -= lr * grad / sqrt(accum)."""

    def __init__(self, learning_rate, initial_accumulator_value=0.1, name="Adagrad"):
        super().__init__(learning_rate, name, "Adagrad")
        init = hyperparameter("initial_accumulator_value", initial_accumulator_value)
        if init == 0:
            raise ValueError("initial_accumulator_value must be positive")
        self._slot_inits = (("accum", init),)


class AdamOptimizer(Optimizer):
    """Adam (Kingma & Ba) with TensorFlow's epsilon placement; lazy on sparse gradients."""

    def __init__(self, learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8, name="Adam"):
        super().__init__(learning_rate, name, "Adam")
        self._attrs = {"beta1": hyperparameter("beta1", beta1, upper=1.0, upper_open=True),
                       "beta2": hyperparameter("beta2", beta2, upper=1.0, upper_open=True),
                       "epsilon": hyperparameter("epsilon", epsilon)}
        self._slot_inits = (("m", 0.0), ("v", 0.0))
        self._step = None

    def _create_slots(self, var) -> dict:
        slots = super()._create_slots(var)
        if self._step is None:
            with var.graph.name_scope(""):
                self._step = Variable(np.zeros((), np.int64), name=f"{self._name}_step", trainable=False)
        return {**slots, "step": self._step.op.name}

    def _finish(self, updates):
        with self._step.graph.control_dependencies(updates):
            return self._step.assign_add(np.ones((), np.int64), name="update_step").op


def create_global_step(graph=None):
    """The int64 step counter ``minimize(..., global_step=)`` increments."""
    graph = graph or get_default_graph()
    if graph.get_collection(GLOBAL_STEP):
        raise ValueError("global step already exists")
    with graph.as_default(), graph.name_scope(""):
        step = Variable(np.zeros((), np.int64), name="global_step", trainable=False)
    graph.add_to_collection(GLOBAL_STEP, step)
    return step


def get_global_step(graph=None):
    found = (graph or get_default_graph()).get_collection(GLOBAL_STEP)
    return found[0] if found else None


def get_or_create_global_step(graph=None):
    return get_global_step(graph) or create_global_step(graph)


