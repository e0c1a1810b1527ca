"""Shelfcast's dataflow tensor engine (TensorFlow 1.x style API): ``import engine as en``."""

from engine import config  # noqa: F401  (first: sets Numba/BLAS environment defaults)

from engine import data, errors, layers, train
from engine.autodiff import gradients
from engine.dtypes import DType, as_dtype, float32, float64, int32, int64
from engine.dtypes import bool_ as bool  # noqa: A004  (TensorFlow's name: en.bool)
from engine.graph import (Graph, IndexedSlices, Operation, Tensor, control_dependencies,
                          convert_to_tensor, get_default_graph, name_scope, reset_default_graph,
                          set_random_seed)
from engine.ops import nn
from engine.ops.array import (cast, concat, constant, expand_dims, gather, identity, ones,
                              ones_like, placeholder, placeholder_with_default, reshape, shape, squeeze,
                              stop_gradient, transpose, where, zeros, zeros_like)
from engine.ops.control import check_numerics, group, no_op
from engine.ops.math import abs, pow  # noqa: A004  (TensorFlow's names: en.abs, en.pow)
from engine.ops.math import (add, add_n, cos, divide, equal, exp, expm1, greater, greater_equal,
                             less, less_equal, log, log1p, matmul, maximum, minimum, multiply, negative,
                             not_equal, reduce_max, reduce_mean, reduce_sum, sign, sin, sqrt, square,
                             subtract)
from engine.ops.nn import dropout, leaky_relu, relu, sigmoid, softmax, softplus, tanh
from engine.ops.random import random_normal, random_uniform
from engine.ops.state import (Variable, assign, assign_add, assign_sub, global_variables,
                              global_variables_initializer, trainable_variables, variables_initializer)
from engine.session import Session, SessionConfig

__all__ = [
    "DType", "Graph", "IndexedSlices", "Operation", "Session", "SessionConfig", "Tensor", "Variable", "abs", "add",
    "add_n", "as_dtype", "assign", "assign_add", "assign_sub", "bool", "cast", "check_numerics", "concat",
    "constant", "control_dependencies", "convert_to_tensor", "cos", "data", "divide", "dropout", "equal", "errors",
    "exp", "expand_dims", "expm1", "float32", "float64", "gather", "get_default_graph",
    "global_variables", "global_variables_initializer", "gradients", "greater", "greater_equal", "group",
    "identity", "int32", "int64", "layers", "leaky_relu", "less", "less_equal", "log", "log1p", "matmul", "maximum",
    "minimum", "multiply", "name_scope", "negative", "nn", "no_op", "not_equal", "ones", "ones_like", "placeholder",
    "placeholder_with_default", "pow", "random_normal", "random_uniform", "reduce_max", "reduce_mean", "reduce_sum",
    "relu", "reset_default_graph", "reshape", "set_random_seed", "shape", "sigmoid", "sign", "sin", "softmax",
    "softplus", "sqrt", "square", "squeeze", "stop_gradient", "subtract", "tanh", "train", "trainable_variables",
    "transpose", "variables_initializer", "where", "zeros", "zeros_like",
]

# Serving and observability tools (issue 3): whole-plan compilation, per-op profiles, Graphviz export.
from engine import compiler, graphviz, profiler

__all__ += ["compiler", "graphviz", "profiler"]
