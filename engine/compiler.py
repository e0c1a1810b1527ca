"""Whole-plan compilation: a stateless inference plan becomes ONE Numba function (the serving path).

Why: a batch-1 prediction through the interpreted plan pays Python dispatch for every op
(tens of µs); the same work in one compiled function costs a few µs. The generated source
is a pure function of the graph (op types, attributes, static shapes and dtypes, wiring);
weights are *arguments*, never baked in. It is written once, atomically, to
``$NUMBA_CACHE_DIR/shelfcast_compiled/plan_<sha256 of the source>.py`` and imported from
there with ``@njit(cache=True)``, so a fresh process loads the machine code from Numba's
cache instead of compiling.

Semantics: element formulas are the fused-kernel templates (``engine/passes/codegen.py``),
which mirror ``engine/kernels/math.py``; gathers, concatenations and casts copy exactly.
Matrix products are plain loops (no BLAS), so they may differ from the interpreted plan in
the last bits: results agree within ``rtol=1e-5, atol=1e-6`` for float32 (exact for
everything else). Whenever a run-time check in the compiled code fails (a shape that static
inference allowed but the compiled code does not handle, an index out of range, a division
by zero) the call is re-run by the interpreted plan, which computes the result or raises
the engine's usual error: results never depend on the compiler. A graph with an op the
compiler does not know is refused with :class:`UnsupportedGraphError` naming the ops, and
:class:`SmallBatchCallable` then uses the interpreted plan for every batch.
"""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np

from engine import generated
from engine.errors import FailedPreconditionError
from engine.graph import IndexedSlices, Operation, Tensor, ops_needed

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = int(os.environ.get("SHELFCAST_COMPILED_MAX_ROWS", 16))
"""Batches of at most this many rows take the compiled function; larger ones the interpreted
plan (BLAS matmuls win there). Measured crossover of the reference MLP on 2 cores: see README."""

CACHE_SUBDIR = "shelfcast_compiled"
_PASS_THROUGH = {"Identity", "StopGradient"}
_UNARY = ("Neg", "Exp", "Log", "Log1p", "Expm1", "Sqrt", "Square", "Abs", "Relu", "Sigmoid", "Tanh", "Softplus")
_BINARY = ("Add", "Sub", "Mul", "RealDiv", "Maximum", "Minimum")
_NUMERIC = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
            "uint64"}


class UnsupportedGraphError(ValueError):
    """The plan has ops (or shapes) the compiler does not handle; the interpreted plan still runs it."""


# --- the plan: pruning ---------------------------------------------------------------------------


def _fetch_tensors(fetches) -> list:
    """The tensors of a flat fetch list; ops and IndexedSlices are refused (inference returns arrays)."""
    out = []
    for f in fetches:
        if hasattr(f, "_as_tensor"):
            f = f._as_tensor()
        if isinstance(f, (Operation, IndexedSlices)) or not isinstance(f, Tensor):
            raise UnsupportedGraphError(f"fetch {f!r} is not a tensor; compiled plans return arrays only")
        out.append(f)
    return out


def _needed_ops(fetch_tensors, feed_tensors) -> list:
    """Ops the fetches depend on (data and control edges), stopping at feeds; creation order."""
    needed = ops_needed(fetch_tensors, feed_tensors)
    return sorted(needed, key=lambda o: o.id)


# --- code generation -----------------------------------------------------------------------------


def _expressions() -> dict:
    from engine.passes.codegen import EXPRESSIONS  # the fused kernels' formulas: one definition of each op

    return EXPRESSIONS


def _static_kind(shape, out_shape):
    """How an elementwise operand relates to the output: 'full', 'row' (a known suffix) or 'scalar'."""
    if shape is None or out_shape is None:
        return None
    if len(shape) == len(out_shape) and all(a == b for a, b in zip(shape, out_shape)):
        return "full"
    if all(d is not None for d in shape) and int(np.prod(shape, dtype=np.int64)) == 1:
        return "scalar"
    core = tuple(shape)
    while core and core[0] == 1:
        core = core[1:]
    if (all(d is not None for d in core) and len(core) <= len(out_shape)
            and tuple(out_shape[len(out_shape) - len(core):]) == core):
        return "row"
    return None


class _Source:
    """Collects helper functions (each once) and the body of ``plan``."""

    def __init__(self):
        self.helpers: dict[str, str] = {}
        self.body: list[str] = []

    def helper(self, name: str, text: str) -> str:
        self.helpers.setdefault(name, text)
        return name


def _matmul_helper(src: _Source, ta: bool, tb: bool, dtype: str) -> str:
    """Loops, not BLAS: at a few rows a call into BLAS costs more than the product.

    Without ``transpose_b`` the inner loop runs along a row of ``b`` (vectorized) and the sum
    over ``p`` is unrolled by four, each output element still adding its terms in order ``p =
    0, 1, 2 ...`` (the same rounding as the plain loop, a quarter of the loads and stores).
    """
    a_ik = "a[p, i]" if ta else "a[i, p]"
    name = f"_matmul_{'t' if ta else 'n'}{'t' if tb else 'n'}_{dtype}"
    m = "a.shape[1]" if ta else "a.shape[0]"
    k = "a.shape[0]" if ta else "a.shape[1]"
    n = "b.shape[0]" if tb else "b.shape[1]"
    head = [f"def {name}(a, b):", f"    m = {m}", f"    k = {k}", f"    n = {n}"]
    if not tb:
        x = [a_ik.replace("p", f"p + {u}") if u else a_ik for u in range(4)]
        loop = ["    out = np.zeros((m, n), a.dtype)", "    k4 = k - k % 4", "    for i in range(m):",
                "        for p in range(0, k4, 4):",
                *[f"            x{u} = {x[u]}" for u in range(4)],
                "            for j in range(n):", "                o = out[i, j]",
                *[f"                o += x{u} * b[p{' + ' + str(u) if u else ''}, j]" for u in range(4)],
                "                out[i, j] = o",
                "        for p in range(k4, k):", f"            x = {a_ik}", "            for j in range(n):",
                "                out[i, j] += x * b[p, j]"]
    else:  # b is (n, k): dot products of contiguous rows
        loop = ["    out = np.empty((m, n), a.dtype)", "    for i in range(m):", "        for j in range(n):",
                f"            acc = np.{dtype}(0)", "            for p in range(k):",
                f"                acc += {a_ik} * b[j, p]", "            out[i, j] = acc"]
    return src.helper(name, "\n".join([*head, *loop, "    return out"]))


def _unary_helper(src: _Source, op_type: str, dtype: str) -> str:
    expr = _expressions()[op_type].format(a="x", T=f"np.{dtype}")
    name = f"_unary_{op_type}_{dtype}"
    text = "\n".join([f"def {name}(a):", "    out = np.empty_like(a)", "    af = a.reshape(a.size)",
                      "    of = out.reshape(out.size)", "    for i in range(af.size):", "        x = af[i]",
                      f"        of[i] = np.{dtype}({expr})", "    return out"])
    return src.helper(name, text)


def _binary_helper(src: _Source, op_type: str, dtype: str, kinds) -> str:
    """``out`` takes the shape of the first 'full' operand; a 'row'/'scalar' operand repeats."""
    expr = _expressions()[op_type].format(a="x", b="y", T=f"np.{dtype}")
    full = "a" if kinds[0] == "full" else "b"
    name = f"_binary_{op_type}_{dtype}_{kinds[0]}_{kinds[1]}"
    load = {"full": "{v}f[i]", "row": "{v}f[i % n{v}]", "scalar": "{v}f[0]"}
    text = "\n".join([
        f"def {name}(a, b):", f"    out = np.empty_like({full})", "    af = a.reshape(a.size)",
        "    bf = b.reshape(b.size)", "    of = out.reshape(out.size)", "    na = af.size", "    nb = bf.size",
        "    for i in range(of.size):", f"        x = {load[kinds[0]].format(v='a')}",
        f"        y = {load[kinds[1]].format(v='b')}", f"        of[i] = np.{dtype}({expr})", "    return out"])
    return src.helper(name, text)


def _gather_helper(src: _Source) -> str:
    text = "\n".join([
        "def _gather_rows(params, idx):", "    rows = params.shape[0]",
        "    width = params.size // rows if rows else 0", "    p2 = params.reshape((rows, width))",
        "    ii = idx.reshape(idx.size)", "    out = np.empty((ii.size, width), params.dtype)",
        "    for r in range(ii.size):", "        j = ii[r]", "        if j < 0 or j >= rows:",
        "            raise ValueError('gather index out of range')", "        for c in range(width):",
        "            out[r, c] = p2[j, c]", "    return out"])
    return src.helper("_gather_rows", text)


def _shape_expr(parts) -> str:
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def _emit(src: _Source, op: Operation, ins: list, out: str) -> None:
    """Append the lines computing ``op`` into variable ``out`` (``ins``: its inputs' variables)."""
    t = op.outputs[0]
    dtype = t.dtype.name
    where = f"{op.type} op {op.name!r}"
    if op.type in _UNARY and dtype in _NUMERIC and op.type in _expressions():
        src.body.append(f"{out} = {_unary_helper(src, op.type, dtype)}({ins[0]})")
    elif op.type in _BINARY and dtype in _NUMERIC:
        kinds = tuple(_static_kind(x.shape, t.shape) for x in op.inputs)
        if None in kinds or "full" not in kinds:
            raise UnsupportedGraphError(f"{where}: broadcasting {[x.shape for x in op.inputs]} -> {t.shape} "
                                        "is not a same-shape, row or scalar pattern")
        if kinds == ("full", "full"):
            src.body += [f"if {ins[0]}.shape != {ins[1]}.shape:", f"    raise ValueError({where + ': shapes'!r})"]
        else:
            full = ins[kinds.index("full")]
            other = ins[1 - kinds.index("full")]
            src.body += [f"if {other}.size == 0 or {full}.size % {other}.size != 0:",
                         f"    raise ValueError({where + ': broadcast'!r})"]
        src.body.append(f"{out} = {_binary_helper(src, op.type, dtype, kinds)}({ins[0]}, {ins[1]})")
    elif op.type == "MatMul":
        a, b = op.inputs
        if a.ndim != 2 or b.ndim != 2 or dtype not in _NUMERIC:
            raise UnsupportedGraphError(f"{where}: only rank-2 numeric products are compiled")
        ta, tb = bool(op.attrs["transpose_a"]), bool(op.attrs["transpose_b"])
        ka = f"{ins[0]}.shape[{0 if ta else 1}]"
        kb = f"{ins[1]}.shape[{1 if tb else 0}]"
        src.body += [f"if {ka} != {kb}:", f"    raise ValueError({where + ': inner dimensions'!r})",
                     f"{out} = {_matmul_helper(src, ta, tb, dtype)}({ins[0]}, {ins[1]})"]
    elif op.type == "GatherV2":
        params, idx = op.inputs
        if params.ndim is None or idx.ndim is None or params.ndim < 1:
            raise UnsupportedGraphError(f"{where}: params and indices need a known rank")
        shape = [f"{ins[1]}.shape[{d}]" for d in range(idx.ndim)] + \
                [f"{ins[0]}.shape[{d}]" for d in range(1, params.ndim)]
        src.body += [f"if {ins[0]}.shape[0] == 0:", f"    raise ValueError({where + ': empty params'!r})",
                     f"{out} = {_gather_helper(src)}({ins[0]}, {ins[1]}).reshape({_shape_expr(shape)})"]
    elif op.type == "ConcatV2":
        rank = t.ndim
        if rank is None or any(x.ndim != rank for x in op.inputs):
            raise UnsupportedGraphError(f"{where}: inputs need one known rank")
        axis = op.attrs["axis"] % rank
        src.body.append(f"{out} = np.concatenate({_shape_expr(ins)}, axis={axis})")
    elif op.type == "Cast" and dtype in _NUMERIC | {"bool"}:
        src.body.append(f"{out} = {ins[0]}.astype(np.{dtype})")
    elif op.type == "Reshape" and op.inputs[0].ndim is not None:
        target = tuple(op.attrs["shape"])
        src.body.append(f"{out} = np.ascontiguousarray({ins[0]}).reshape({_shape_expr([str(d) for d in target])})")
    else:
        raise UnsupportedGraphError(f"{where}: op type not supported by the compiler")


def generate(fetch_tensors, feed_tensors):
    """Source of ``plan(feeds..., consts..., variables...)`` and where each parameter comes from.

    Returns ``(source, consts, variables, aliased)``: ``consts`` the Const arrays and
    ``variables`` the variable names the caller passes after the feeds, ``aliased`` the output
    positions that are a parameter itself (the wrapper copies those so no caller aliases state).
    """
    fed = list(feed_tensors)
    names: dict[Tensor, str] = {t: f"f{i}" for i, t in enumerate(fed)}
    consts, variables, src, problems = [], [], _Source(), []
    params: set[str] = set(names.values())
    for op in _needed_ops(fetch_tensors, fed):
        if op.type == "NoOp" or (op.outputs and op.outputs[0] in names):
            continue
        if op.type == "Placeholder":
            problems.append(f"placeholder {op.name!r} is needed but not fed")
            continue
        if len(op.outputs) != 1:
            problems.append(f"{op.type} op {op.name!r}: ops with {len(op.outputs)} outputs are not compiled")
            continue
        t = op.outputs[0]
        ins = [names.get(x) for x in op.inputs]
        if op.type == "Const":
            names[t] = f"c{len(consts)}"
            consts.append(np.ascontiguousarray(op.attrs["value"]))
            params.add(names[t])
        elif op.type in ("VariableV2", "ReadVariable"):
            names[t] = f"w{len(variables)}"
            variables.append(op.name if op.type == "VariableV2" else op.attrs["var"])
            params.add(names[t])
        elif op.type in _PASS_THROUGH or (op.type == "PlaceholderWithDefault"):
            names[t] = ins[0]
        elif op.op_def.stateful or op.op_def.random:
            problems.append(f"{op.type} op {op.name!r} is stateful or random")
        else:
            names[t] = f"v{op.id}"
            try:
                if None in ins:
                    raise UnsupportedGraphError(f"{op.type} op {op.name!r}: an input could not be compiled")
                _emit(src, op, ins, names[t])
            except UnsupportedGraphError as e:
                problems.append(str(e))
                names.pop(t, None)
    if problems:
        raise UnsupportedGraphError("cannot compile the plan: " + "; ".join(problems))
    results = [names[t] for t in fetch_tensors]
    aliased = [k for k, r in enumerate(results) if r in params]
    args = [names[t] for t in fed] + [f"c{i}" for i in range(len(consts))] + [f"w{i}" for i in range(len(variables))]
    header = ["graph (op type, static shape, dtype) in plan order:"]
    header += [f"  {op.type} {op.name} -> {op.outputs[0].shape if op.outputs else ()} "
               f"{op.outputs[0].dtype.name if op.outputs else ''}" for op in _needed_ops(fetch_tensors, fed)]
    header += [f"  feed {t.name} {t.shape} {t.dtype.name}" for t in fed]
    lines = ['"""Generated by engine/compiler.py from an inference plan. Do not edit.', "", *header, '"""', "",
             "import numpy as np", "from numba import njit", ""]
    for text in src.helpers.values():
        lines += ["", "@njit(cache=True)", text, ""]
    lines += ["", "@njit(cache=True)", f"def plan({', '.join(args)}):"]
    lines += [f"    {b}" for b in src.body] or ["    pass"]
    lines.append(f"    return {_shape_expr(results)}")
    return "\n".join(lines) + "\n", consts, variables, aliased


# --- loading through the on-disk cache -------------------------------------------------------------

def cache_key(source: str) -> str:
    """The module's stable name: sha256 of its source (ops, attrs, shapes, dtypes; never weights)."""
    return hashlib.sha256(source.encode()).hexdigest()[:24]


def load_plan_function(source: str):
    """``plan`` of ``source``: written once under the cache directory, imported, memoized per process."""
    key = cache_key(source)
    module = generated.import_generated(source, key, CACHE_SUBDIR, "plan", "shelfcast_compiled_plan_")
    return module.plan, generated.module_path(CACHE_SUBDIR, "plan", key)


# --- the compiled plan and the small-batch dispatcher ----------------------------------------------


class CompiledPlan:
    """One Numba function computing flat fetches from feeds; parameters are read at each call.

    ``__call__(*feed_values)`` returns the fetches' arrays in order. It raises
    :class:`CompiledCheckFailed` when a run-time check inside the compiled code fails; callers
    then run the interpreted plan. Feeds must already be C-contiguous arrays of the feeds' dtypes.
    """

    def __init__(self, session, fetch_tensors, feed_tensors):
        self.session = session
        self.feed_tensors = list(feed_tensors)
        self.source, consts, self.variables, aliased = generate(fetch_tensors, self.feed_tensors)
        self.function, self.path = load_plan_function(self.source)
        self.key = cache_key(self.source)
        self._consts = tuple(consts)
        self._aliased = tuple(aliased)
        self._call = self._make_call()

    def __call__(self, *feed_values):
        return self._call(*feed_values)

    def _make_call(self):
        """The per-call path with nothing left to decide: a few µs of Python at most."""
        function, consts, variables, aliased, state = (self.function, self._consts, tuple(self.variables),
                                                         self._aliased, self.session.state)
        checked = (ValueError, IndexError, ZeroDivisionError)

        def call(*feed_values):
            try:
                weights = [state[name] for name in variables] if variables else ()
            except KeyError as e:
                raise FailedPreconditionError(f"Attempting to use uninitialized value {e.args[0]}",
                                              e.args[0]) from None
            try:
                results = function(*feed_values, *consts, *weights)
            except checked as e:
                raise CompiledCheckFailed(str(e)) from e
            if aliased:
                results = list(results)
                for k in aliased:
                    results[k] = np.array(results[k], copy=True)
            return results

        return call


class CompiledCheckFailed(RuntimeError):
    """A run-time check inside a compiled plan failed; the interpreted plan decides the outcome."""


class SmallBatchCallable:
    """``session.make_callable`` with a compiled fast path for batches of at most ``max_rows`` rows.

    The compiled function is built on the first small call (or by :meth:`warm_up`). When the
    plan cannot be compiled, the reason is logged once and kept in ``compile_error``, and every
    call runs the interpreted plan. Feeds that are not already exact arrays (wrong dtype, a
    list, non-contiguous, a known dimension that differs) go the interpreted way too, which
    converts them or raises its clear errors.
    """

    def __init__(self, session, fetches, feed_list, max_rows: int | None = None):
        from engine.session import _flatten

        self.session = session
        self.interpreted = session.make_callable(fetches, feed_list)
        leaves: list = []
        self._build = _flatten(fetches, leaves)
        self._leaves = leaves
        self._feeds = [session._feed_key(k) for k in (feed_list or [])]
        batch = [k for k, t in enumerate(self._feeds) if t.shape and t.shape[0] is None]
        self._batch_feed = batch[0] if batch else None
        self.compiled: CompiledPlan | None = None
        self.compile_error: str | None = None
        self._tried = False
        self.max_rows = DEFAULT_MAX_ROWS if max_rows is None else max_rows

    @property
    def max_rows(self) -> int:
        """Largest batch the compiled function takes (0: never compiled)."""
        return self._max_rows

    @max_rows.setter
    def max_rows(self, value) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"max_rows must be an integer >= 0, got {value!r}")
        self._max_rows = int(value)
        self._small = _small_batch_test(self._feeds, self._batch_feed, self._max_rows)

    def warm_up(self) -> bool:
        """Build (load or compile the source of) the compiled function now; True when it is usable."""
        if not self._tried:
            self._tried = True
            try:
                tensors = [self.session._resolve_leaf(x) for x in self._leaves]
                self.compiled = CompiledPlan(self.session, _fetch_tensors(tensors), self._feeds)
            except UnsupportedGraphError as e:
                self.compile_error = str(e)
                log.info("compiled fast path off, the interpreted plan runs every batch: %s", e)
        return self.compiled is not None

    def __call__(self, *values):
        compiled = self.compiled
        if compiled is None and not self._tried and self._small(values):
            self.warm_up()
            compiled = self.compiled
        if compiled is not None and self._small(values):
            try:
                return self._build(compiled._call(*values))
            except CompiledCheckFailed:
                pass  # the interpreted plan computes the result or raises the engine's own error
            except Exception as e:  # noqa: BLE001  a Numba typing/lowering failure for new argument types
                if not _is_numba_error(e):
                    raise
                self.compile_error = f"compiling for these argument types failed: {e}"
                log.warning("compiled fast path off after a compile failure: %s", e)
                self.compiled = None
        return self.interpreted(*values)

    @property
    def uses_compiled(self) -> bool:
        return self.compiled is not None


def _small_batch_test(feeds, batch_feed, max_rows):
    """A predicate on the feed values: exact arrays (dtype, rank, layout, known dims) and few rows."""
    specs = []
    for t in feeds:
        rank = -1 if t.shape is None else len(t.shape)
        known = tuple((i, d) for i, d in enumerate(t.shape or ()) if d is not None)
        specs.append((np.dtype(t.dtype.np), rank, known))
    n = len(specs)
    ndarray = np.ndarray

    def small(values) -> bool:
        if len(values) != n:
            return False
        for v, (dtype, rank, known) in zip(values, specs):
            if v.__class__ is not ndarray or v.dtype is not dtype and v.dtype != dtype or v.ndim != rank:
                return False
            if not v.flags.c_contiguous:
                return False
            shape = v.shape
            for i, d in known:
                if shape[i] != d:
                    return False
        return batch_feed is None or values[batch_feed].shape[0] <= max_rows

    return small


def _is_numba_error(e: Exception) -> bool:
    from numba.core.errors import NumbaError

    return isinstance(e, NumbaError)


def compile_callable(session, fetches, feed_list, max_rows: int | None = None) -> SmallBatchCallable:
    """A serving callable: compiled for batches up to ``max_rows`` rows, interpreted above."""
    return SmallBatchCallable(session, fetches, feed_list, max_rows)
