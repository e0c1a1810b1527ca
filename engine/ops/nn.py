"""Neural-network ops: activations, softmax, dropout."""

from __future__ import annotations

from engine import dtypes
from engine.graph import convert_to_tensor, is_tensor_like
from engine.kernels import math as K
from engine.kernels import nn as KN
from engine.ops import math as M
from engine.ops._util import FLOAT, create, same_dtype
from engine.registry import register


def _float_like(inputs, attrs):
    return [(same_dtype(inputs, FLOAT), inputs[0].shape)]


def _unary(kern):
    return lambda op, ctx: (lambda x: K.unary(kern, x))


register("Relu", infer=_float_like, kernel=_unary(K.relu),
         grad=lambda op, g: [create("ReluGrad", [g, op.outputs[0]])])
register("Sigmoid", infer=_float_like, kernel=_unary(K.sigmoid),
         grad=lambda op, g: [create("SigmoidGrad", [g, op.outputs[0]])])
register("Tanh", infer=_float_like, kernel=_unary(K.tanh),
         grad=lambda op, g: [create("TanhGrad", [g, op.outputs[0]])])
register("Softplus", infer=_float_like, kernel=_unary(K.softplus),
         grad=lambda op, g: [M.multiply(g, sigmoid(op.inputs[0]))])


def _softmax_infer(inputs, attrs):
    (d, s), = _float_like(inputs, attrs)
    if s is not None and not -len(s) <= attrs["axis"] < len(s):
        raise ValueError(f"axis {attrs['axis']} out of range for rank {len(s)}")
    return [(d, s)]


def _softmax_grad(op, g):
    y = op.outputs[0]
    axis = op.attrs["axis"]
    gy = M.multiply(g, y)
    return [M.subtract(gy, M.multiply(y, M.reduce_sum(gy, axis=axis, keepdims=True)))]


register("Softmax", infer=_softmax_infer, kernel=lambda op, ctx: (lambda x: KN.softmax(x, op.attrs["axis"])),
         grad=_softmax_grad)


def relu(x, name=None):
    return create("Relu", [convert_to_tensor(x)], name=name)


def sigmoid(x, name=None):
    return create("Sigmoid", [convert_to_tensor(x)], name=name)


def tanh(x, name=None):
    return create("Tanh", [convert_to_tensor(x)], name=name)


def softplus(x, name=None):
    """log(1 + exp(x)), computed without overflow."""
    return create("Softplus", [convert_to_tensor(x)], name=name)


def softmax(logits, axis=-1, name=None):
    return create("Softmax", [convert_to_tensor(logits)], {"axis": int(axis)}, name)


def dropout(x, rate, training=True, seed=None, name=None):
    """Zero each element with probability ``rate`` and scale the rest by 1/(1-rate) when training.

    ``training`` is a Python bool (False: ``x`` itself, nothing random in the graph) or a bool
    tensor (e.g. ``en.placeholder_with_default(False, ())``) choosing at run time.
    """
    from engine.ops.array import cast, where
    from engine.ops.random import random_uniform_like

    x = convert_to_tensor(x)
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    if not x.dtype.is_floating:
        raise TypeError(f"dropout of {x.name}: dtype {x.dtype.name} is not float")
    if training is False or rate == 0.0:
        return x
    keep = M.greater_equal(random_uniform_like(x, seed=seed), rate)
    dropped = M.multiply(M.multiply(x, cast(keep, x.dtype)), 1.0 / (1.0 - rate), name=name)
    if training is True:
        return dropped
    if not is_tensor_like(training):
        raise TypeError(f"dropout: training must be a bool or a bool tensor, got {training!r}")
    return where(convert_to_tensor(training, dtypes.bool_), dropped, x)
