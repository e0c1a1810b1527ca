"""Optimizer update ops: each updates one variable (and its slots, named by attribute as ``Assign``'s) in place with
ONE fused kernel. Inputs: the gradient (dense, or an IndexedSlices' ``values``/``indices`` for ``Sparse*``) and the
learning rate (a scalar tensor: schedules can feed it). Sparse forms merge duplicate indices first and touch only
those rows of the variable and its slots ("lazy" updates).
"""

from __future__ import annotations

import math
import threading
from functools import partial

import numpy as np

from engine import dtypes, shapes
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
    if not sparse and not shapes.compatible(grad.shape, var_shape):
        raise ValueError(f"gradient shape {grad.shape} differs from variable {attrs['var']} shape {var_shape}")
    if sparse and not inputs[1].dtype.is_integer:
        raise TypeError("sparse update indices must be integers")
    if not shapes.compatible(inputs[-1].shape, ()):  # the kernels take float(lr); the references broadcast it
        raise ValueError(f"learning rate {inputs[-1].name} must be a scalar, got shape {inputs[-1].shape}")
    return []


def _check_runtime(op, var_shape, grad, indices=None):
    """The gradient's run-time shape against the variable's (dense), or indices' shape + a row (sparse):
    kernels read flat buffers, so a mismatch would read or write past them."""
    want = tuple(var_shape) if indices is None else np.shape(indices) + tuple(var_shape[1:])
    if np.shape(grad) != want:
        raise ValueError(f"gradient shape {np.shape(grad)} does not match {want} (variable {op.attrs['var']!r} "
                         f"shape {tuple(var_shape)}" + ("" if indices is None else f", indices {np.shape(indices)}")
                         + ")")


def _adam_scalars(op, ctx, lr, dtype):
    """(lr_t, beta1, 1 - beta1, beta2, 1 - beta2, epsilon) in the variable's dtype (bias-corrected rate)."""
    t = int(read_state(ctx, op.attrs["step"])) + 1
    b1, b2 = op.attrs["beta1"], op.attrs["beta2"]
    cast = dtype.type
    lr_t = float(lr) * math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
    return cast(lr_t), cast(b1), cast(1.0 - b1), cast(b2), cast(1.0 - b2), cast(op.attrs["epsilon"])


def _update_kernel(kernel, slot_names, scalars, sparse):
    """Kernel factory: the variable and its slots from session state, then ONE Numba ``kernel`` call on flat views
    (dense) or on row views and the distinct rows with their summed gradients (sparse: a lazy update)."""
    def make(op, ctx):
        names = [op.attrs["var"]] + [op.attrs[s] for s in slot_names]
        scratch, busy = {}, threading.Lock()  # the sparse merge's buffers, reused by one run at a time

        def apply(*args):
            arrays = [read_state(ctx, n) for n in names]
            _check_runtime(op, arrays[0].shape, args[0], args[1] if sparse else None)
            extra = scalars(op, ctx, args[-1], arrays[0].dtype)
            if sparse:
                mine = busy.acquire(False)
                try:
                    idx, vals = KA.merge_sparse_rows(args[0], args[1], arrays[0].shape[0], scratch if mine else None)
                    kernel(*[a.reshape(a.shape[0], -1) for a in arrays], vals, idx, *extra)
                finally:
                    if mine:
                        busy.release()
            else:
                chosen = kernel if hasattr(kernel, "py_func") else kernel(arrays[0].size)  # Adam: by size
                chosen(*[a.reshape(-1) for a in arrays], np.ascontiguousarray(args[0]).reshape(-1), *extra)

        return apply

    return make


def _lr(op, ctx, lr, dtype):
    return (float(lr),)


def _momentum_scalars(op, ctx, lr, dtype):
    return float(lr), op.attrs["momentum"], op.attrs["nesterov"]


def _adam_dense(size):
    return KT.adam_dense_parallel if size >= PARALLEL_MIN_ELEMENTS else KT.adam_dense


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
            _check_runtime(op, arrays["var"].shape, args[0], args[1] if sparse else None)
            dtype = arrays["var"].dtype  # the variable's precision, as the kernels compute (a float32 g * g
            if not sparse:                 # can overflow to inf, and the step is then 0 in both)
                grad, lr = args
                grad, rows = grad.astype(dtype), slice(None)
            else:
                values, indices, lr = args
                rows, inverse = np.unique(KA.check_rows(indices, arrays["var"].shape[0], "sparse gradient index"),
                                          return_inverse=True)
                grad = np.zeros((rows.size,) + arrays["var"].shape[1:], dtype)
                np.add.at(grad, inverse.reshape(-1), values.reshape((indices.size,) + arrays["var"].shape[1:]))
            work = {k: np.array(a[rows]) for k, a in arrays.items()}  # a copy, written back when the rule is done
            with np.errstate(over="ignore", invalid="ignore"):
                rule(op, work, grad, dtype.type(lr), step)
            for k, a in arrays.items():
                a[rows] = work[k]

        return apply

    return make


def _examples(slot_names, sparse):
    def examples(rng):
        out = []
        for dtype in (np.float32, np.float64):
            attrs = {"var": "w", "dtype": dtypes.as_dtype(dtype), "shape": (4, 3), "momentum": 0.9, "nesterov": False,
                     "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-7, "step": "t", **{s: s for s in slot_names}}
            state = {"w": rng.standard_normal((4, 3)).astype(dtype), "t": np.array(2, np.int64),
                     **{s: rng.uniform(0.1, 1.0, (4, 3)).astype(dtype) for s in slot_names}}
            lr = np.array(0.1, dtype)
            if sparse:
                inputs = (rng.standard_normal((3, 3)).astype(dtype), np.array([2, 0, 2]), lr)
                edges = [(np.zeros((0, 3), dtype), np.array([], np.int64), lr),  # an empty batch
                         (np.ones((1, 3), dtype), np.array([-1]), lr),  # an index out of range
                         (np.ones((2, 5), dtype), np.array([0, 1]), lr)]  # rows of the wrong width
            else:
                inputs = (rng.standard_normal((4, 3)).astype(dtype), lr)
                edges = [(np.ones(shape, dtype), lr) for shape in ((4, 1), (2, 3))]  # broadcastable, or smaller
            huge = (np.full_like(inputs[0], 1e30),) + inputs[1:]  # g * g overflows float32
            out += [Example(inputs, attrs, state), Example(inputs, {**attrs, "nesterov": True}, state)]
            out += [Example(edge, attrs, state) for edge in [huge] + edges]
        return out

    return examples


_OPTIMIZERS = (  # name, dense kernel, sparse kernel, their extra scalars, NumPy rule, slot attributes
    ("GradientDescent", KT.sgd_dense, KT.sgd_sparse, _lr, _sgd_rule, ()),
    ("Momentum", KT.momentum_dense, KT.momentum_sparse, _momentum_scalars, _momentum_rule, ("accum",)),
    ("Adam", _adam_dense, KT.adam_sparse, _adam_scalars, _adam_rule, ("m", "v")),
    ("Adagrad", KT.adagrad_dense, KT.adagrad_sparse, _lr, _adagrad_rule, ("accum",)))
for _name, _dense, _sparse, _scalars, _rule, _slots in _OPTIMIZERS:
    for _prefix, _kernel, _is_sparse in (("Apply", _dense, False), ("SparseApply", _sparse, True)):
        register(_prefix + _name, infer=partial(_check, sparse=_is_sparse),
                 kernel=_update_kernel(_kernel, _slots, _scalars, _is_sparse),
                 reference=_reference(_rule, _slots, _is_sparse), examples=_examples(_slots, _is_sparse),
                 stateful=True, writes_state=True,
                 not_differentiable="an optimizer's update of state: no gradient flows through it")
