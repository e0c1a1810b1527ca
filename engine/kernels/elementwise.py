"""Elementwise kernels generated from ONE scalar function per op (PyTensor's ScalarOp idea).

An elementwise op registers a plain Python function of scalars (``def relu(x): return x if x > 0 else 0``), or a
Python operator or NumPy ufunc that is one (``operator.add``: ``a + b``). Its source is copied into generated Numba
modules: the op's own kernel, the fused kernel of a chain of such ops and the compiled inference plan. One formula
defines all three, so fused and unfused results agree bit for bit (every step rounds to the output dtype, as an array
store does). Modules are named by their source's digest: an edited formula never runs a stale kernel.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import operator
import textwrap
from functools import lru_cache

import numpy as np

from engine import generated

_ALLOWED_GLOBALS = {"np", "math", "abs", "min", "max", "float", "int", "bool"}
# Every generated module starts so. Its njit computes as NumPy does (error_model="numpy"): x / 0 is inf or nan,
# not a ZeroDivisionError, in the kernels, the fused chains and the compiled plans alike, as in the reference.
HEADER = ["import math", "import numpy as np", "from numba import njit as _njit, prange", "", "",
          "def njit(*args, **options):", '    return _njit(*args, error_model="numpy", **options)', ""]
# Python operators an op may give as its scalar function: the expression each stands for
_OPERATORS = {operator.add: "a + b", operator.sub: "a - b", operator.mul: "a * b", operator.truediv: "a / b",
              operator.pow: "a ** b", operator.gt: "a > b", operator.ge: "a >= b", operator.lt: "a < b",
              operator.le: "a <= b", operator.eq: "a == b", operator.ne: "a != b", operator.neg: "-a"}


@lru_cache(maxsize=None)
def _source(fn) -> str:
    """The def of scalar function ``fn`` as text: its own source, or the one an operator or ufunc stands for. Read
    once, when the op registers: ``inspect.getsource`` reads the file as it is *now*, so a kernel generated after an
    upgrade under a running process got the lines now at the function's old line number, another formula."""
    if isinstance(fn, np.ufunc):
        args = ", ".join("ab"[:fn.nin])
        return f"def {fn.__name__}({args}):\n    return np.{fn.__name__}({args})"
    if fn in _OPERATORS:
        return f"def {fn.__name__}({'a, b' if ' b' in _OPERATORS[fn] else 'a'}):\n    return {_OPERATORS[fn]}"
    return textwrap.dedent(inspect.getsource(fn))


def _definition(fn) -> ast.FunctionDef:
    """A fresh AST of ``fn``'s def (callers may rename it)."""
    return ast.parse(_source(fn)).body[0]


def arity(fn) -> int:
    """The number of operands of scalar function ``fn``."""
    return len(_definition(fn).args.args)


def check_scalar(fn, op_name: str) -> int:
    """The number of operands of a scalar function; ValueError when it cannot be copied into a kernel."""
    if fn in _OPERATORS or (isinstance(fn, np.ufunc) and fn.nin <= 2 and fn.nout == 1):
        return arity(fn)
    if getattr(fn, "__module__", None) in ("operator", "_operator"):
        raise ValueError(f"op {op_name!r}: operator.{fn.__name__} is not one of the operators a scalar function may "
                         f"be ({', '.join('operator.' + f.__name__ for f in _OPERATORS)}): write it as a def")
    if not inspect.isfunction(fn) or fn.__name__ == "<lambda>" or fn.__closure__:
        raise ValueError(f"op {op_name!r}: the scalar function must be a plain module-level def (no lambda, "
                         "no closure): its source is copied into generated kernels")
    attributes = {node.attr for node in ast.walk(_definition(fn)) if isinstance(node, ast.Attribute)}
    unknown = set(fn.__code__.co_names) - _ALLOWED_GLOBALS - attributes
    if unknown:
        raise ValueError(f"op {op_name!r}: scalar function {fn.__name__} uses {sorted(unknown)}; only np, math "
                         "and operators are available inside generated kernels")
    return fn.__code__.co_argcount


def scalar_definition(fn, name: str) -> str:
    """``fn``'s source as a Numba function called ``name`` (its decorators dropped)."""
    func = _definition(fn)
    func.name = name
    func.decorator_list = []
    return "@njit\n" + ast.unparse(func)


def load(source: str):
    """The module holding ``source``, written to and imported from the cache directory once."""
    digest = hashlib.sha1(source.encode()).hexdigest()[:20]
    return generated.import_generated(source, digest, "shelfcast_fused", "fused", "shelfcast_fused_")


def core(shape) -> tuple:
    """``shape`` without its leading 1s: the part a row operand repeats along the output."""
    k = 0
    while k < len(shape) and shape[k] == 1:
        k += 1
    return tuple(shape[k:])


def operand_kind(shape, out_shape):
    """How an operand of static ``shape`` repeats over the output: ("full", 0), ("scalar", 0),
    ("row", n) for a fully known suffix of n elements, or (None, 0) when it is none of these."""
    if shape is None or out_shape is None:
        return None, 0
    if tuple(shape) == tuple(out_shape):
        return "full", 0
    if all(d is not None for d in shape) and int(np.prod(shape, dtype=np.int64)) == 1:
        return "scalar", 0
    row = core(shape)
    if (all(d is not None for d in row) and len(shape) <= len(out_shape)
            and tuple(out_shape[len(out_shape) - len(row):]) == row and 0 not in row):  # rows of 0: no rows
        return "row", int(np.prod(row, dtype=np.int64))
    return None, 0


def op_kernel_source(fn, arity: int) -> str:
    """``kernel(out, x0, x1, ...)`` on flat arrays: equal sizes, or operands repeated modulo their size."""
    xs = [f"x{k}" for k in range(arity)]
    lines = [*HEADER, "", scalar_definition(fn, "f"), "", "", "@njit(cache=True)", f"def kernel(out, {', '.join(xs)}):",
             "    n = out.size"]
    if arity == 1:
        lines += ["    for i in range(n):", "        out[i] = f(x0[i])"]
    else:
        lines += [f"    n{k} = x{k}.size" for k in range(arity)]
        same = " and ".join(f"n{k} == n" for k in range(arity))
        lines += [f"    if {same}:", "        for i in range(n):",
                  f"            out[i] = f({', '.join(x + '[i]' for x in xs)})",
                  "    else:", "        for i in range(n):",
                  f"            out[i] = f({', '.join(f'x{k}[i % n{k}]' for k in range(arity))})"]
    return "\n".join(lines) + "\n"


def _flat_operand(x: np.ndarray, out_shape: tuple) -> np.ndarray:
    """``x`` flattened: as is when its shape is the output's or a suffix of it (read modulo its size), or broadcast."""
    if x.shape != out_shape:
        row = core(x.shape)
        if row != out_shape[len(out_shape) - len(row):]:
            x = np.broadcast_to(x, out_shape)
    return np.ascontiguousarray(x).reshape(-1)


@lru_cache(maxsize=None)
def op_kernel(fn, arity: int, out_dtype=None):
    """``f(*arrays) -> array``: the op with NumPy broadcasting (``out_dtype`` None: input 0's), built once."""
    kernel = load(op_kernel_source(fn, arity)).kernel
    npd = None if out_dtype is None else np.dtype(out_dtype)

    def run(*xs):
        shape = xs[0].shape
        for x in xs[1:]:
            if x.shape != shape:
                shape = np.broadcast_shapes(*(x.shape for x in xs))
                break
        out = np.empty(shape, dtype=npd or xs[0].dtype)
        if out.size:
            kernel(out.reshape(-1), *[_flat_operand(x, shape) for x in xs])
        return out

    return run


def chain_source(steps, leaf_kinds, dtype: str, inner: int, row_sum: bool = False) -> str:
    """Source of ``serial(out, x0, x1, ...)`` and ``parallel(...)`` computing one chain of elementwise ops.

    ``steps``: [(scalar function, [operand refs])], a ref being ("leaf", k) or ("step", j); ``leaf_kinds``: "full"
    (the output's shape), "row" (a suffix of ``inner`` elements, repeated per row) or "scalar". The output is the last
    step's value. ``row_sum`` adds ``serial_sum(out, sums, x0, ...)``, which also sums the output's rows into ``sums``
    (a bias gradient), in order and in float64 as ``kernels/reduce.py`` does. Each function also comes as
    ``<name>_io<k>`` per full leaf k, writing the output over operand k (liveness's buffer reuse): handed one array as
    both ``out`` and ``x<k>``, LLVM runs its scalar fallback (2-3x slower on bias+ReLU). Unused variants cost nothing:
    Numba compiles a function on its first call."""
    names: dict = {}
    defs = []
    for fn, _ in steps:
        if fn not in names:
            names[fn] = f"f{len(names)}"
            defs += [scalar_definition(fn, names[fn]), ""]
    body = [f"s{k} = x{k}[0]" for k, kind in enumerate(leaf_kinds) if kind == "scalar"]
    inner_body = []
    loaded = {}
    for k, kind in enumerate(leaf_kinds):
        loaded[("leaf", k)] = f"s{k}" if kind == "scalar" else f"v{k}"
        if kind != "scalar":
            inner_body.append(f"v{k} = x{k}[{'i' if kind == 'full' else 'j'}]")
    for j, (fn, refs) in enumerate(steps):
        operands = ", ".join(loaded.get(tuple(r), f"t{r[1]}") for r in refs)
        inner_body.append(f"t{j} = np.{dtype}({names[fn]}({operands}))")
    inner_body.append(f"out[i] = t{len(steps) - 1}")

    def function(name, loop, sums=False, io=None):
        params = ", ".join(f"x{k}" for k in range(len(leaf_kinds)) if k != io)
        params = ", ".join(p for p in ("out", "sums" if sums else "", params) if p)
        lines = [f"def {name}{'' if io is None else f'_io{io}'}({params}):"]
        lines += [f"    x{io} = out"] if io is not None else []
        lines += [f"    {b}" for b in body]
        if inner > 1 or sums:
            summed = [f"acc[j] += t{len(steps) - 1}"] if sums else []  # in float64 (int64), as reduce.py
            zero = "np.float64(0)" if dtype.startswith("float") else "np.int64(0)"
            lines += [f"    acc = np.full({inner}, {zero})"] if sums else []
            lines += [f"    rows = out.size // {inner}", f"    for r in {loop}(rows):", f"        base = r * {inner}",
                      f"        for j in range({inner}):", "            i = base + j"]
            lines += [f"            {b}" for b in inner_body + summed]
            lines += [f"    for j in range({inner}):", "        sums[j] = acc[j]"] if sums else []
        else:
            lines += [f"    for i in {loop}(out.size):", "        j = 0"] + [f"        {b}" for b in inner_body]
        return "\n".join(lines)

    functions = []
    for io in [None] + [k for k, kind in enumerate(leaf_kinds) if kind == "full"]:
        functions += ["", "", "@njit(cache=True)", function("serial", "range", io=io),
                      "", "", "@njit(cache=True, parallel=True)", function("parallel", "prange", io=io)]
        if row_sum:
            functions += ["", "", "@njit(cache=True)", function("serial_sum", "range", sums=True, io=io)]
    return "\n".join([
        '"""Generated by engine/kernels/elementwise.py: one fused elementwise chain. Do not edit."""', *HEADER,
        "", *defs, *functions, "",
    ])


def chain_kernels(source: str):
    """The module of a :func:`chain_source`: ``serial``, ``parallel`` (``serial_sum``), each with its ``_io<k>``."""
    return load(source)
