"""Neural-network ops: activations (each next to its gradient op), softmax, dropout."""

from __future__ import annotations

import operator

import numpy as np

from engine import dtypes, shapes
from engine.graph import convert_to_tensor, is_tensor_like
from engine.kernels import nn as KN
from engine.ops import math as M
from engine.ops._util import FLOAT, create, op_description, quiet, same_dtype, sample, unbroadcast
from engine.ops._util import elementwise as _elementwise
from engine.ops.array import cast, where
from engine.ops.random import random_uniform_like
from engine.registry import Example, register


def _relu(x):
    return x if (x > 0 or x != x) else 0  # NaN propagates, as in torch and TensorFlow


def _relu_grad(g, y):
    return g if y > 0 else 0


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x)) if x >= 0 else np.exp(x) / (1.0 + np.exp(x))


def _sigmoid_grad(g, y):
    return g * y * (1 - y)


def _tanh_grad(g, y):
    return g * (1 - y * y)


def _softplus(x):
    return (x if x > 0 else 0) + np.log1p(np.exp(-abs(x)))


def _leaky_relu(x, alpha):
    return x if x > 0 else alpha * x


def _sigmoid_reference(x):
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


relu = _elementwise("Relu", _relu, lambda x: np.where((x > 0) | np.isnan(x), x, 0), FLOAT,
                    grad=lambda op, g: [create("ReluGrad", [g, op.outputs[0]])])
_elementwise("ReluGrad", _relu_grad, lambda g, y: np.where(y > 0, g, 0), FLOAT,
             grad=lambda op, g: [unbroadcast(create("ReluGrad", [g, op.inputs[1]]), op.inputs[0]), None])
sigmoid = _elementwise("Sigmoid", _sigmoid, _sigmoid_reference, FLOAT,
                       grad=lambda op, g: [create("SigmoidGrad", [g, op.outputs[0]])])
_elementwise("SigmoidGrad", _sigmoid_grad, lambda g, y: g * y * (1 - y), FLOAT,
             grad=lambda op, d: [unbroadcast(create("SigmoidGrad", [d, op.inputs[1]]), op.inputs[0]),
                                 unbroadcast(M.multiply(M.multiply(d, op.inputs[0]), M.subtract(1.0, M.multiply(
                                     op.inputs[1], 2.0))), op.inputs[1])])
tanh = _elementwise("Tanh", np.tanh, np.tanh, FLOAT, grad=lambda op, g: [create("TanhGrad", [g, op.outputs[0]])])
_elementwise("TanhGrad", _tanh_grad, lambda g, y: g * (1 - y * y), FLOAT,
             grad=lambda op, d: [unbroadcast(create("TanhGrad", [d, op.inputs[1]]), op.inputs[0]), unbroadcast(
                 M.multiply(M.multiply(d, op.inputs[0]), M.multiply(op.inputs[1], -2.0)), op.inputs[1])])
softplus = _elementwise("Softplus", _softplus, lambda x: np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x))), FLOAT,
                        grad=lambda op, g: [M.multiply(g, sigmoid(op.inputs[0]))],
                        doc="log(1 + exp(x)), computed without overflow.")
_elementwise("LeakyRelu", _leaky_relu, lambda x, alpha: np.where(x > 0, x, alpha * x), FLOAT,
             grad=lambda op, g: [unbroadcast(where(M.greater(op.inputs[0], 0), g, M.multiply(g, op.inputs[1])),
                                             op.inputs[0]),
                                 unbroadcast(M.multiply(g, M.minimum(op.inputs[0], 0)), op.inputs[1])])


def _softmax_infer(inputs, attrs):
    d = same_dtype(inputs, FLOAT)
    if inputs[0].shape is not None:
        shapes.normalize_axes(attrs["axis"], len(inputs[0].shape))  # (ValueError when out of range)
    return [(d, inputs[0].shape)]


def _softmax_grad(op, g):
    y = op.outputs[0]
    gy = M.multiply(g, y)
    return [M.subtract(gy, M.multiply(y, M.reduce_sum(gy, axis=op.attrs["axis"], keepdims=True)))]


def _softmax_reference(op, ctx):
    @quiet
    def softmax(x):
        if x.size == 0:  # an empty axis too (np.max has nothing to reduce): empty, as torch
            return np.empty_like(x)
        e = np.exp(x - np.max(x, axis=op.attrs["axis"], keepdims=True))
        return e / np.sum(e, axis=op.attrs["axis"], keepdims=True)

    return softmax


register("Softmax", infer=_softmax_infer, kernel=lambda op, ctx: (lambda x: KN.softmax(x, op.attrs["axis"])),
         reference=_softmax_reference, grad=_softmax_grad,
         examples=lambda rng: [Example((sample(rng, shape, t),), {"axis": axis}) for t in (np.float32, np.float64)
                               for shape, axis in (((3, 4), -1), ((3, 4), 0), ((2, 3, 4), 1), ((0, 4), -1),
                                                   ((3, 0), -1))])


def leaky_relu(x, alpha=0.2, name=None):
    """``x`` where positive, ``alpha * x`` elsewhere (``alpha``: a number or a scalar tensor)."""
    x = convert_to_tensor(x)
    alpha = convert_to_tensor(alpha, dtype=x.dtype, graph=x.graph,
                              what=f"{op_description('LeakyRelu', name)}: alpha beside {x.name}")
    return create("LeakyRelu", [x, alpha], name=name)


def softmax(logits, axis=-1, name=None):
    return create("Softmax", [convert_to_tensor(logits)], {"axis": operator.index(axis)}, name)


def dropout(x, rate, training=True, seed=None, name=None):
    """Zero each element with probability ``rate`` and scale the rest by 1/(1-rate) when ``training``: a Python bool
    (False: ``x`` itself, nothing random in the graph) or a bool tensor choosing at run time."""
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
