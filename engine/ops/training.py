"""Optimizer update ops: each updates one variable (and its slots) in place with ONE fused kernel.

Variables and slots are named by attribute (like ``Assign``); inputs are the gradient (dense,
or the ``values``/``indices`` of an IndexedSlices for the ``Sparse*`` forms) and the learning
rate (a scalar tensor, so schedules can feed it). Sparse forms merge duplicate indices first
and touch only those rows of the variable and of its slots ("lazy" updates).
"""

from __future__ import annotations

import math

import numpy as np

from engine import dtypes
from engine.config import PARALLEL_MIN_ELEMENTS
from engine.kernels import array as KA
from engine.kernels import train as KT
from engine.ops.state import read_state
from engine.registry import Example, register


def _check(inputs, attrs, sparse):
    var_shape, dtype = attrs["shape"], attrs["dtype"]
    grad = inputs[0]
    if grad.dtype != dtype:
        raise TypeError(f"gradient dtype {grad.dtype.name} differs from variable {attrs['var']} ({dtype.name})")
    if not sparse and grad.shape is not None and (
            len(grad.shape) != len(var_shape) or any(a is not None and a != b for a, b in zip(grad.shape, var_shape))):
        raise ValueError(f"gradient shape {grad.shape} differs from variable {attrs['var']} shape {var_shape}")
    if sparse and not inputs[1].dtype.is_integer:
        raise TypeError("sparse update indices must be integers")
    return []


def _dense_infer(inputs, attrs):
    return _check(inputs, attrs, sparse=False)


def _sparse_infer(inputs, attrs):
    return _check(inputs, attrs, sparse=True)


def _rows(var):
    return var.reshape(var.shape[0], -1)


def _flat(x):
    return np.ascontiguousarray(x).reshape(-1)


def _sparse_grad(values, indices, var):
    """Distinct rows and their summed gradients (duplicates merged in one pass, no sort)."""
    return KA.merge_sparse_rows(values, indices, var.shape[0])


# --- gradient descent ------------------------------------------------------------------------


def _sgd(op, ctx):
    name = op.attrs["var"]

    def apply(grad, lr):
        var = read_state(ctx, name)
        KT.sgd_dense(var.reshape(-1), _flat(grad), float(lr))

    return apply


def _sgd_sparse(op, ctx):
    name = op.attrs["var"]

    def apply(values, indices, lr):
        var = read_state(ctx, name)
        idx, vals = _sparse_grad(values, indices, var)
        KT.sgd_sparse(_rows(var), vals, idx, float(lr))

    return apply


# --- momentum ---------------------------------------------------------------------------------


def _momentum(op, ctx):
    name, accum, mom, nesterov = op.attrs["var"], op.attrs["accum"], op.attrs["momentum"], op.attrs["nesterov"]

    def apply(grad, lr):
        var, acc = read_state(ctx, name), read_state(ctx, accum)
        KT.momentum_dense(var.reshape(-1), acc.reshape(-1), _flat(grad), float(lr), mom, nesterov)

    return apply


def _momentum_sparse(op, ctx):
    name, accum, mom, nesterov = op.attrs["var"], op.attrs["accum"], op.attrs["momentum"], op.attrs["nesterov"]

    def apply(values, indices, lr):
        var, acc = read_state(ctx, name), read_state(ctx, accum)
        idx, vals = _sparse_grad(values, indices, var)
        KT.momentum_sparse(_rows(var), _rows(acc), vals, idx, float(lr), mom, nesterov)

    return apply


# --- Adam -----------------------------------------------------------------------------------------


def _adam_lr(op, ctx, lr):
    t = int(read_state(ctx, op.attrs["step"])) + 1
    b1, b2 = op.attrs["beta1"], op.attrs["beta2"]
    return float(lr) * math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)


def _adam_scalars(op, ctx, lr, dtype):
    """(lr_t, beta1, 1 - beta1, beta2, 1 - beta2, epsilon) in the variable's dtype."""
    b1, b2 = op.attrs["beta1"], op.attrs["beta2"]
    cast = dtype.type
    return (cast(_adam_lr(op, ctx, lr)), cast(b1), cast(1.0 - b1), cast(b2), cast(1.0 - b2),
            cast(op.attrs["epsilon"]))


def _adam(op, ctx):
    a = op.attrs

    def apply(grad, lr):
        var, m, v = read_state(ctx, a["var"]), read_state(ctx, a["m"]), read_state(ctx, a["v"])
        kernel = KT.adam_dense_parallel if var.size >= PARALLEL_MIN_ELEMENTS else KT.adam_dense
        kernel(var.reshape(-1), m.reshape(-1), v.reshape(-1), _flat(grad), *_adam_scalars(op, ctx, lr, var.dtype))

    return apply


def _adam_sparse(op, ctx):
    a = op.attrs

    def apply(values, indices, lr):
        var, m, v = read_state(ctx, a["var"]), read_state(ctx, a["m"]), read_state(ctx, a["v"])
        idx, vals = _sparse_grad(values, indices, var)
        KT.adam_sparse(_rows(var), _rows(m), _rows(v), vals, idx, *_adam_scalars(op, ctx, lr, var.dtype))

    return apply


# --- Adagrad ----------------------------------------------------------------------------------------


def _adagrad(op, ctx):
    name, accum = op.attrs["var"], op.attrs["accum"]

    def apply(grad, lr):
        var, acc = read_state(ctx, name), read_state(ctx, accum)
        KT.adagrad_dense(var.reshape(-1), acc.reshape(-1), _flat(grad), float(lr))

    return apply


def _adagrad_sparse(op, ctx):
    name, accum = op.attrs["var"], op.attrs["accum"]

    def apply(values, indices, lr):
        var, acc = read_state(ctx, name), read_state(ctx, accum)
        idx, vals = _sparse_grad(values, indices, var)
        KT.adagrad_sparse(_rows(var), _rows(acc), vals, idx, float(lr))

    return apply


# --- NumPy references: one update rule per optimizer, on dense arrays; sparse = the same on touched rows -----


def _sgd_rule(op, slots, g, lr, t):
    slots["var"] -= lr * g


def _momentum_rule(op, slots, g, lr, t):
    mom = op.attrs["momentum"]
    slots["accum"][...] = slots["accum"] * mom + g
    slots["var"] -= lr * (g + mom * slots["accum"]) if op.attrs["nesterov"] else lr * slots["accum"]


def _adam_rule(op, slots, g, lr, t):
    b1, b2 = op.attrs["beta1"], op.attrs["beta2"]
    lr_t = lr * np.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
    slots["m"][...] = b1 * slots["m"] + (1 - b1) * g
    slots["v"][...] = b2 * slots["v"] + (1 - b2) * g * g
    slots["var"] -= lr_t * slots["m"] / (np.sqrt(slots["v"]) + op.attrs["epsilon"])


def _adagrad_rule(op, slots, g, lr, t):
    slots["accum"] += g * g
    slots["var"] -= lr * g / np.sqrt(slots["accum"])


def _reference(rule, slot_names, sparse):
    def make(op, ctx):
        def apply(*args):
            names = {"var": op.attrs["var"], **{s: op.attrs[s] for s in slot_names}}
            arrays = {k: read_state(ctx, n) for k, n in names.items()}
            step = int(read_state(ctx, op.attrs["step"])) + 1 if "step" in op.attrs else 0
            if not sparse:
                grad, lr = args
                work = {k: a.astype(np.float64) for k, a in arrays.items()}
                rule(op, work, grad.astype(np.float64), float(lr), step)
                rows = slice(None)
            else:
                values, indices, lr = args
                rows, inverse = np.unique(indices.reshape(-1), return_inverse=True)
                merged = np.zeros((rows.size,) + arrays["var"].shape[1:])
                np.add.at(merged, inverse.reshape(-1), values.reshape((indices.size,) + arrays["var"].shape[1:]))
                work = {k: a[rows].astype(np.float64) for k, a in arrays.items()}
                rule(op, work, merged, float(lr), step)
            for k, a in arrays.items():
                a[rows] = work[k]

        return apply

    return make


def _examples(slot_names, sparse):
    def examples(rng):
        out = []
        for dtype in (np.float32, np.float64):
            attrs = {"var": "w", "dtype": dtypes.as_dtype(dtype), "shape": (4, 3), "momentum": 0.9, "nesterov": False,
                     "beta1": 0.9, "beta2": 0.999,
                     "epsilon": 1e-7, "step": "t", **{s: s for s in slot_names}}
            state = {"w": rng.standard_normal((4, 3)).astype(dtype), "t": np.array(2, np.int64),
                     **{s: rng.uniform(0.1, 1.0, (4, 3)).astype(dtype) for s in slot_names}}
            lr = np.array(0.1, dtype)
            if sparse:
                inputs = (rng.standard_normal((3, 3)).astype(dtype), np.array([2, 0, 2]), lr)
            else:
                inputs = (rng.standard_normal((4, 3)).astype(dtype), lr)
            out.append(Example(inputs, attrs, state))
            out.append(Example(inputs, {**attrs, "nesterov": True}, state))
        return out

    return examples


_OPTIMIZERS = (("GradientDescent", _sgd, _sgd_sparse, _sgd_rule, ()),
               ("Momentum", _momentum, _momentum_sparse, _momentum_rule, ("accum",)),
               ("Adam", _adam, _adam_sparse, _adam_rule, ("m", "v")),
               ("Adagrad", _adagrad, _adagrad_sparse, _adagrad_rule, ("accum",)))
for _name, _dense, _sparse, _rule, _slots in _OPTIMIZERS:
    register(f"Apply{_name}", infer=_dense_infer, kernel=_dense, reference=_reference(_rule, _slots, False),
             examples=_examples(_slots, False), stateful=True, writes_state=True, differentiable=False)
    register(f"SparseApply{_name}", infer=_sparse_infer, kernel=_sparse, reference=_reference(_rule, _slots, True),
             examples=_examples(_slots, True), stateful=True, writes_state=True, differentiable=False)
