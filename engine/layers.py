"""Layers built from ops: Dense and Embedding, with seeded initializers (Keras defaults)."""

from __future__ import annotations

import math

from engine import dtypes
from engine.graph import convert_to_tensor, graph_of
from engine.ops import array as A
from engine.ops import math as M
from engine.ops import nn as N
from engine.ops.random import random_uniform
from engine.ops.state import Variable
from engine.shapes import whole_number

_ACTIVATIONS = {None: None, "linear": None, "relu": N.relu, "sigmoid": N.sigmoid, "tanh": N.tanh,
                "softplus": N.softplus}


def glorot_uniform(shape, dtype=dtypes.float32, seed=None):
    """U(-l, l), l = sqrt(6 / (fan_in + fan_out)): keeps activations' variance steady across layers."""
    fan_in, fan_out = shape[0], shape[-1]
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return random_uniform(shape, -limit, limit, dtype=dtype, seed=seed)


class Dense:
    """``activation(x @ kernel + bias)``; variables are created on the first call."""

    def __init__(self, units, activation=None, use_bias=True, seed=None, dtype=dtypes.float32, name="dense",
                 kernel_initializer=glorot_uniform):
        if isinstance(activation, str) or activation is None:
            if activation not in _ACTIVATIONS:
                known = sorted(k for k in _ACTIVATIONS if k)
                raise ValueError(f"unknown activation {activation!r}; use one of {known}")
            activation = _ACTIVATIONS[activation]
        self.units = whole_number(units, f"Dense {name}: units")
        self.activation = activation
        self.use_bias = use_bias
        self.seed = seed
        self.dtype = dtypes.as_dtype(dtype)
        self.name = name
        self.kernel_initializer = kernel_initializer  # (shape, dtype, seed) -> the kernel's initial value
        self.kernel = None
        self.bias = None
        self._scope = None

    @property
    def variables(self):
        return [v for v in (self.kernel, self.bias) if v is not None]

    def __call__(self, x):
        x = convert_to_tensor(x)
        if x.shape is None or len(x.shape) != 2 or x.shape[1] is None:
            raise ValueError(f"Dense {self.name}: input {x.name} needs shape (batch, features), got {x.shape}")
        graph = x.graph  # its variables and ops join the input's graph, default or not
        if self.kernel is None:
            with graph.as_default(), graph.name_scope(self.name) as scope:
                self._scope = scope
                # initial values made by the Variable (a callable), outside any control_dependencies block the
                # layer is first called in: global_variables_initializer() ran that block's ops
                shape = (x.shape[1], self.units)
                self.kernel = Variable(lambda: self.kernel_initializer(shape, self.dtype, self.seed), name="kernel")
                if self.use_bias:
                    self.bias = Variable(lambda: A.zeros((self.units,), self.dtype), name="bias")
        elif self.kernel.shape[0] != x.shape[1]:
            raise ValueError(f"Dense {self.name}: built for {self.kernel.shape[0]} features, got {x.shape[1]}")
        with graph.name_scope(self._scope):
            y = M.matmul(x, self.kernel)
            if self.bias is not None:
                y = M.add(y, self.bias)
            return self.activation(y) if self.activation else y


class Embedding:
    """Rows of a ``(input_dim, output_dim)`` table looked up by integer ids (sparse gradient)."""

    def __init__(self, input_dim, output_dim, seed=None, dtype=dtypes.float32, name="embedding"):
        self.input_dim = whole_number(input_dim, f"Embedding {name}: input_dim")
        self.output_dim = whole_number(output_dim, f"Embedding {name}: output_dim")
        self.seed = seed
        self.dtype = dtypes.as_dtype(dtype)
        self.name = name
        self.embeddings = None
        self._scope = None

    @property
    def variables(self):
        return [self.embeddings] if self.embeddings is not None else []

    def __call__(self, ids):
        graph = graph_of(ids)
        if self.embeddings is None:
            with graph.as_default(), graph.name_scope(self.name) as scope:
                self._scope = scope
                self.embeddings = Variable(lambda: random_uniform((self.input_dim, self.output_dim), -0.05, 0.05,
                                                                  dtype=self.dtype, seed=self.seed), name="embeddings")
        with graph.name_scope(self._scope):
            return A.gather(self.embeddings, ids)
