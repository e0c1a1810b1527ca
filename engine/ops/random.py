"""Seeded random ops: an op's stream is fixed by (graph seed, op seed), TensorFlow 1.x's seeding, the op seed being
its creation index when not given. Unlike TensorFlow's, a graph without a seed is deterministic too (graph seed 0):
every run of the project is reproducible. Each run draws the next values; a new Session starts the streams again,
and a checkpoint restored into it (``en.train.Saver``) moves them to where the saved session's stood.
"""

from __future__ import annotations

import numpy as np

from engine import dtypes, shapes
from engine.graph import convert_to_tensor, get_default_graph
from engine.ops._util import create
from engine.registry import NUMPY_KERNEL, Example, register


def op_seeds(graph, seed):
    """(graph seed, op seed) for a random op created now in ``graph``."""
    graph_seed = 0 if graph.seed is None else int(graph.seed)
    op_seed = len(graph._ops) if seed is None else int(seed)
    return graph_seed, op_seed


def _random_infer(inputs, attrs):
    shape = inputs[0].shape if inputs else attrs["shape"]
    return [(attrs["dtype"], shape)]


def _normal_kernel(op, ctx):
    rng = ctx.rng(op)
    dtype, mean, stddev = op.attrs["dtype"].np, op.attrs["mean"], op.attrs["stddev"]
    static = op.attrs["shape"]

    def draw(*like):
        shape = like[0].shape if like else static
        out = rng.standard_normal(shape, dtype=dtype)
        if stddev != 1.0:
            out *= dtype.type(stddev)
        if mean != 0.0:
            out += dtype.type(mean)
        return out

    return draw


def _uniform_kernel(op, ctx):
    rng = ctx.rng(op)
    dtype, lo, hi = op.attrs["dtype"], op.attrs["minval"], op.attrs["maxval"]
    static = op.attrs["shape"]

    def draw(*like):
        shape = like[0].shape if like else static
        if dtype.is_integer:
            return rng.integers(int(lo), int(hi), size=shape, dtype=dtype.np)
        out = rng.random(shape, dtype=dtype.np)
        if (lo, hi) != (0.0, 1.0):
            out *= dtype.np.type(hi - lo)
            out += dtype.np.type(lo)
        return out

    return draw


def _random_examples(rng):
    attrs = {"shape": (2, 3), "dtype": dtypes.float32, "seed": (1, 2), "mean": 0.5, "stddev": 2.0, "minval": -1.0,
             "maxval": 3.0}
    return [Example((), attrs), Example((), {**attrs, "dtype": dtypes.int32}),
            Example((np.zeros((4, 1)),), {**attrs, "shape": (4, 1), "dtype": dtypes.float64})]


def _normal_examples(rng):
    return [e for e in _random_examples(rng) if e.attrs["dtype"].is_floating]


# The streams are NumPy's own Generator: the kernels are the reference.
for _name, _kernel, _examples in (("RandomNormal", _normal_kernel, _normal_examples),
                                  ("RandomUniform", _uniform_kernel, _random_examples)):
    register(_name, infer=_random_infer, kernel=_kernel, reference=NUMPY_KERNEL, examples=_examples, random=True,
             stateful=True, shape_only_inputs=(0,),
             not_differentiable="random draws: reads only its input's value as a shape")


def _static_shape(shape):
    s = shapes.as_shape(tuple(shape))
    if not shapes.is_fully_defined(s):
        raise ValueError(f"random op shape must be fully defined, got {shape}")
    return s


def random_normal(shape, mean=0.0, stddev=1.0, dtype=dtypes.float32, seed=None, name=None):
    dtype = dtypes.as_dtype(dtype)
    if not dtype.is_floating:
        raise TypeError(f"random_normal dtype must be float, got {dtype.name}")
    return create("RandomNormal", (), {"shape": _static_shape(shape), "dtype": dtype, "mean": float(mean),
                                       "stddev": float(stddev), "seed": op_seeds(get_default_graph(), seed)}, name)


def random_uniform(shape, minval=0.0, maxval=None, dtype=dtypes.float32, seed=None, name=None):
    """Uniform in [minval, maxval) (maxval 1 for floats); an integer dtype needs whole bounds and a maxval:
    [0.5, 2.5) drew from [0, 2), and [0, 1) only zeros (TensorFlow's rule)."""
    dtype = dtypes.as_dtype(dtype)
    if dtype.is_bool:
        raise TypeError("random_uniform cannot produce bool")
    if dtype.is_integer and (maxval is None or any(float(b) != int(b) for b in (minval, maxval))):
        raise ValueError(f"random_uniform of {dtype.name} needs whole bounds minval and maxval, got [{minval}, "
                         f"{maxval})")
    maxval = 1.0 if maxval is None else maxval
    if not maxval > minval:
        raise ValueError(f"random_uniform needs maxval > minval, got [{minval}, {maxval})")
    return create("RandomUniform", (), {"shape": _static_shape(shape), "dtype": dtype, "minval": float(minval),
                                        "maxval": float(maxval), "seed": op_seeds(get_default_graph(), seed)}, name)


def random_uniform_like(x, seed=None, name=None):
    """Uniform [0, 1) values with the run-time shape of ``x`` (dropout's mask source)."""
    x = convert_to_tensor(x)
    return create("RandomUniform", [x], {"shape": x.shape, "dtype": x.dtype, "minval": 0.0, "maxval": 1.0,
                                         "seed": op_seeds(x.graph, seed)}, name)
