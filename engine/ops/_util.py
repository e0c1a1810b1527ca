"""Helpers shared by the op families: argument conversion, inference checks, and ``elementwise``
(registers an op from its scalar function, NumPy reference and dtype kinds)."""

from __future__ import annotations

import re
from functools import reduce

import numpy as np

from engine import dtypes, shapes
from engine.graph import convert_to_tensor, get_default_graph, graph_of, is_tensor_like
from engine.kernels import elementwise as EW
from engine.registry import Example, get_op_def, register

NUMERIC = ("float", "int")
FLOAT = ("float",)
# NaN and infinities propagate as computed, without NumPy's RuntimeWarnings in users' logs (check_numerics catches
# them); a decorator of the NumPy kernels and references that meet them (thread-safe as one; never a `with`)
quiet = np.errstate(invalid="ignore", over="ignore")


def tensors_for_binary(x, y, graph=None, op="binary op", first=0):
    """Two tensors for a binary op; a Python/NumPy operand takes the tensor operand's dtype and graph. One that cannot
    (a float64 array beside a float32 tensor, 2**40 beside an int32 one) is an error naming ``op`` (``"Add op"``), the
    input (``x`` is input ``first``, ``y`` the next) and the tensor beside it: it was "constant Const: ...", naming
    neither."""
    graph = graph or graph_of(x, y)
    if is_tensor_like(y) and not is_tensor_like(x):
        y = convert_to_tensor(y)
        return convert_to_tensor(x, dtype=y.dtype, graph=graph, what=f"{op}: input {first} beside {y.name}"), y
    x = convert_to_tensor(x, graph=graph, what=f"{op}: input {first}")  # (a tensor-like x is itself, whatever graph
    return x, convert_to_tensor(y) if is_tensor_like(y) else convert_to_tensor(  # says)
        y, dtype=x.dtype, graph=graph, what=f"{op}: input {first + 1} beside {x.name}")


def op_description(op_type: str, name=None) -> str:
    """How an error names an op not yet created: ``"Add op"``, ``"Add op 'total'"`` (its name when given)."""
    return f"{op_type} op" + (f" {name!r}" if name else "")


def same_dtype(inputs, kinds=None):
    """The common dtype of ``inputs``; TypeError when they differ or have a forbidden kind."""
    d = inputs[0].dtype
    for t in inputs[1:]:
        if t.dtype != d:
            raise TypeError(f"dtypes differ ({d.name} vs {t.dtype.name}); cast one explicitly with en.cast")
    if kinds is not None and not (("float" in kinds and d.is_floating) or ("int" in kinds and d.is_integer)
                                  or ("bool" in kinds and d.is_bool)):
        raise TypeError(f"dtype {d.name} is not supported (needs {'/'.join(kinds)})")
    return d


def declared(inputs, attrs):
    """The one output its ``dtype`` and ``shape`` attributes declare (placeholders, variables)."""
    return [(attrs["dtype"], attrs["shape"])]


def create(op_type, inputs=(), attrs=None, name=None, control_inputs=()):
    """Create a single-output op in the inputs' graph (or the default graph) and return its tensor."""
    graph = inputs[0].graph if inputs else get_default_graph()
    op = graph.create_op(op_type, inputs, attrs, name=name, control_inputs=control_inputs)
    return op.outputs[0] if op.outputs else op


def constructor(op_type: str, python_name: str, doc: str = ""):
    """The function users call to add a registered op of one input, or an elementwise op: ``f(x, name=None)`` or
    ``f(x, y, name=None)`` by its scalar function's arity (a Python or NumPy operand of a binary op takes the tensor
    operand's dtype)."""
    scalar = get_op_def(op_type).scalar
    if scalar is None or EW.arity(scalar) == 1:
        def make(x, name=None):
            return create(op_type, [convert_to_tensor(x)], name=name)
    else:
        def make(x, y, name=None):
            return create(op_type, list(tensors_for_binary(x, y, op=op_description(op_type, name))), name=name)
    make.__name__ = make.__qualname__ = python_name
    make.__doc__ = doc or (f"The ``{op_type}`` op." if scalar is None else
                           f"The elementwise ``{op_type}`` op, NumPy broadcasting.")
    return make


def unbroadcast(grad, like):
    """Sum ``grad`` back to the shape of ``like`` (an input the forward op broadcast): nothing for equal, fully known
    shapes, else a ``SumToShape`` op that reduces at run time, so unknown (batch) dimensions work."""
    if grad is None:
        return None
    if grad.shape == like.shape and shapes.is_fully_defined(like.shape):
        return grad
    return create("SumToShape", [grad, like])


# --- example inputs for the registry-driven test ---------------------------------------------------

_KIND_DTYPES = {"float": (np.float32, np.float64), "int": (np.int32, np.int64), "bool": (np.bool_,)}
_SHAPES = {1: [((3, 4),), ((0, 4),), ((),)],
           2: [((3, 4), (3, 4)), ((3, 4), (4,)), ((4,), (3, 4)), ((3, 4), ()), ((3, 1), (1, 4)), ((0, 4), (4,))],
           3: [((3, 4),) * 3, ((3, 4), (4,), ()), ((3, 1), (1, 4), (3, 4))]}


_SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, 1.0, np.nan])


def sample(rng, shape, dtype, domain=(-3.0, 3.0)):
    """Random values of ``dtype`` in ``domain`` (integers: the whole numbers in it), always an array: a 0-d one too."""
    dtype = np.dtype(dtype)
    lo, hi = domain
    if dtype.kind == "b":  # (a comparison of a 0-d array is a NumPy scalar, which a compiled plan cannot be fed)
        return np.asarray(rng.random(shape) < 0.5)
    if dtype.kind in "iu":
        return rng.integers(int(np.ceil(lo)), int(np.floor(hi)) + 1, size=shape).astype(dtype)
    return rng.uniform(lo, hi, size=shape).astype(dtype)


def elementwise_examples(arity, kinds, domain=(-3.0, 3.0), operand_dtypes=None):
    """Every dtype of ``kinds`` x same-shape, row, scalar, general-broadcast and empty operands, plus NaNs."""
    def examples(rng):
        out = []
        for kind in kinds:
            for dtype in _KIND_DTYPES[kind]:
                types = operand_dtypes(dtype) if operand_dtypes else (dtype,) * arity
                for shape_set in _SHAPES[arity]:
                    out.append(Example(tuple(sample(rng, s, t, domain) for s, t in zip(shape_set, types))))
                if np.dtype(dtype).kind == "f":
                    xs = [sample(rng, (2, 3), t, domain) for t in types]
                    k = next(k for k, t in enumerate(types) if np.dtype(t).kind == "f")
                    xs[k][0, 0] = np.nan
                    out.append(Example(tuple(xs)))
                    # zeros, signed zeros, infinities and NaN against each other in every pairing (x / 0,
                    # log(0), inf - inf): operand k varies along axis k
                    special = [_SPECIAL.reshape([-1 if a == k else 1 for a in range(arity)]) for k in range(arity)]
                    out.append(Example(tuple(v.astype(t) if np.dtype(t).kind == "f"
                                             else sample(rng, v.shape, t, domain) for v, t in zip(special, types))))
        return out

    return examples


# --- elementwise ops ---------------------------------------------------------------------------------


def elementwise(name, scalar, reference, kinds, *, grad=None, out_dtype=None, not_differentiable="", infer=None,
                domain=(-3.0, 3.0), operand_dtypes=None, examples=None, python_name=None, doc="", **fields):
    """Register an elementwise op (dtypes of ``kinds``, NumPy broadcasting) from its scalar function, which its
    kernel, fused kernels and compiled plans are generated from, and its NumPy reference (``np.sin``). The registry
    test runs ``examples`` besides the generated ones (every dtype, broadcasting, empty, NaN, special values; each
    operand's dtype by ``operand_dtypes``: Select's bool condition); ``fields``: any other of ``register``'s. Returns
    the op's :func:`constructor` (``python_name``: the op's name in snake case), so one statement defines the op and
    the function users call: ``sin = elementwise("Sin", np.sin, ...)``."""
    if not callable(reference):
        raise TypeError(f"op {name!r}: register a NumPy reference (a function of arrays, e.g. np.sin), "
                        f"not {reference!r}: the registry test and the reference backend run it")
    arity = EW.check_scalar(scalar, name)

    def default_infer(inputs, attrs):
        d = same_dtype(inputs, kinds)
        return [(out_dtype or d, reduce(shapes.broadcast, [t.shape for t in inputs]))]

    def kernel(op, ctx):
        return EW.op_kernel(scalar, arity, op.outputs[0].dtype.np)  # the rule's dtype: out_dtype when given

    def reference_kernel(op, ctx):
        npd = op.outputs[0].dtype.np

        def run(*xs):
            with np.errstate(all="ignore"):
                out = np.asarray(reference(*xs))
            if out.dtype != npd:  # never cast: a cast hid a wrong rule, computed the same wrong way by the kernel
                raise TypeError(f"op {name!r}: its NumPy reference gives {out.dtype}, its dtype rule "
                                f"{npd} (a comparison needs out_dtype=BOOL; a float formula, kinds=FLOAT)")
            return out

        return run

    generated = elementwise_examples(arity, kinds, domain, operand_dtypes)
    every = generated if examples is None else (lambda rng: generated(rng) + list(examples(rng)))
    register(name, infer=infer or default_infer, kernel=kernel, reference=reference_kernel, examples=every, grad=grad,
             not_differentiable=not_differentiable, scalar=scalar, **fields)
    return constructor(name, python_name or re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower(), doc)


BOOL = dtypes.bool_
