"""Whole-plan compilation: a stateless inference plan becomes ONE Numba function (the serving path), as a batch-1
prediction through the interpreted plan pays Python dispatch for every op (tens of µs), the compiled one a few µs.
Its source is a pure function of the graph, weights are arguments: written once to
``$NUMBA_CACHE_DIR/shelfcast_compiled/plan_<sha256 of the source>.py``, a fresh process loads its machine code.

Every op is emitted from its OpDef: an elementwise op from its scalar function, any other by its ``emit``. Matrix
products are plain loops (no BLAS): float32 results agree with the interpreted plan within ``rtol=1e-5, atol=1e-6``,
all else exactly. When a run-time check in the compiled code fails (a shape, an index, a division by zero) the
interpreted plan runs the call: results never depend on the compiler. A graph with an op it does not know is refused
(:class:`UnsupportedGraphError`) and :class:`SmallBatchCallable` runs it interpreted.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
from numba.core.errors import NumbaError

from engine import config, generated
from engine.errors import uninitialized
from engine.graph import Operation, Tensor, may_alias_storage, ops_needed
from engine.kernels import elementwise as EW
from engine.session import exact_feeds
from engine.shapes import whole_number

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = config.env_int("SHELFCAST_COMPILED_MAX_ROWS", 16)
"""Batches of at most this many rows take the compiled function, larger ones the interpreted plan (BLAS matmuls
win there): the reference MLP's crossover on 2 cores, README."""

CACHE_SUBDIR = "shelfcast_compiled"


class UnsupportedGraphError(ValueError):
    """The plan has ops (or shapes) the compiler does not handle; the interpreted plan still runs it."""


class Emitter:
    """What an ``OpDef.emit(c, op, ins) -> expression`` writes through (``ins``: its inputs' variables); returning one
    of ``ins`` (or a parameter) makes the op an alias of it, ``None`` means it computes nothing."""

    def __init__(self):
        self.helpers: dict[str, str] = {}
        self.body: list[str] = []
        self.consts: list = []
        self.variables: list = []
        self.where = ""

    def helper(self, name: str, text: str) -> None:
        """Add a ``@njit`` helper function once (by name)."""
        self.helpers.setdefault(name, text)

    def check(self, condition: str, what: str) -> None:
        """A run-time check: when ``condition`` holds the compiled call fails and the interpreted plan runs."""
        self.body += [f"if {condition}:", f"    raise ValueError({self.where + ': ' + what!r})"]

    def unsupported(self, why: str):
        raise UnsupportedGraphError(f"{self.where}: {why}")

    @staticmethod
    def tuple_of(items) -> str:
        """The source of a tuple of the expressions ``items``: ``()``, ``(a,)`` or ``(a, b)``. Every shape or operand
        tuple an emitter writes is written by it: a gather's 0-d output of a vector wrote ``reshape((,))``, a
        SyntaxError that escaped the serving callable (its interpreted plan ran it)."""
        items = [str(item) for item in items]
        return f"({', '.join(items)}{',' if len(items) == 1 else ''})"

    def storage(self) -> list:
        """The parameters' names after the feeds: the Consts' values, then the variables'."""
        return [f"c{i}" for i in range(len(self.consts))] + [f"w{i}" for i in range(len(self.variables))]

    def param_const(self, value) -> str:
        self.consts.append(np.asarray(value, order="C"))  # a 0-d value stays 0-d (ascontiguousarray makes it 1-d)
        return f"c{len(self.consts) - 1}"

    def param_variable(self, name: str) -> str:
        self.variables.append(name)
        return f"w{len(self.variables) - 1}"


def _emit_elementwise(c: Emitter, op: Operation, ins: list) -> str:
    """Any elementwise op, from its OpDef's scalar function: operands full, row (a suffix) or scalar."""
    out = op.outputs[0]
    kinds = tuple(EW.operand_kind(x.shape, out.shape)[0] for x in op.inputs)
    if None in kinds or "full" not in kinds:
        c.unsupported(f"broadcasting {[x.shape for x in op.inputs]} -> {out.shape} is not a same-shape, row or "
                      "scalar pattern")
    full = kinds.index("full")
    for k, kind in enumerate(kinds):
        if kind == "full" and k != full:
            c.check(f"{ins[k]}.shape != {ins[full]}.shape", "shapes")
        elif kind != "full":
            c.check(f"{ins[k]}.size == 0 or {ins[full]}.size % {ins[k]}.size != 0", "broadcast")
    name = f"_ew_{op.type}_{out.dtype.name}_{'_'.join(kinds)}"
    load = {"full": "x{k}f[i]", "row": "x{k}f[i % n{k}]", "scalar": "x{k}f[0]"}
    operands = ", ".join(load[kind].format(k=k) for k, kind in enumerate(kinds))
    args = ", ".join(f"x{k}" for k in range(len(kinds)))
    c.helper(f"_scalar_{op.type}", EW.scalar_definition(op.op_def.scalar, f"_scalar_{op.type}").split("\n", 1)[1])
    c.helper(name, "\n".join([
        f"def {name}({args}):", f"    out = np.empty(x{full}.shape, np.{out.dtype.name})",
        "    of = out.reshape(out.size)",
        *[f"    x{k}f = x{k}.reshape(x{k}.size)\n    n{k} = x{k}f.size" for k in range(len(kinds))],
        "    for i in range(of.size):", f"        of[i] = _scalar_{op.type}({operands})", "    return out"]))
    return f"{name}({', '.join(ins)})"


def generate(fetch_tensors, feed_tensors):
    """``(source, consts, variables, aliased)`` of ``plan(feeds..., consts..., variables...)``: the Const arrays and
    variable names the caller passes after the feeds, and the output positions that are a parameter or may be a view
    of one (the wrapper copies those: a reshaped variable is a view of it, a Const's view would come back writable)."""
    fed = list(feed_tensors)
    names: dict[Tensor, str] = {t: f"f{i}" for i, t in enumerate(fed)}
    c, problems = Emitter(), []
    in_storage: set = set()  # tensors whose compiled value is, or may be a view of, a Const or variable
    needed = sorted(ops_needed(fetch_tensors, fed), key=lambda o: o.id)  # what the fetches need, creation order
    for op in needed:
        if op.outputs and op.outputs[0] in names:
            continue
        c.where = f"{op.type} op {op.name!r}"
        if len(op.outputs) > 1:
            problems.append(f"{c.where}: ops with {len(op.outputs)} outputs are not compiled")
            continue
        ins = [names.get(x) for x in op.inputs]
        try:
            if None in ins:
                c.unsupported("an input could not be compiled")
            if op.op_def.scalar is not None:
                expr = _emit_elementwise(c, op, ins)
            elif op.op_def.emit is not None:
                expr = op.op_def.emit(c, op, ins)
            else:
                c.unsupported("stateful or random: not compiled" if op.op_def.stateful else
                              "op type not supported by the compiler")
        except UnsupportedGraphError as e:
            problems.append(str(e))
            continue
        if expr is None or not op.outputs:
            continue
        storage = set(c.storage())
        known = set(names.values()) | storage
        out = op.outputs[0]
        if expr in known:
            names[out] = expr
        else:
            names[out] = f"v{op.id}"
            c.body.append(f"v{op.id} = {expr}")
        # What the compiled code makes of storage, whatever the OpDef says of the interpreted kernel (a
        # ReadVariable's kernel copies, its emitter hands over the variable itself): a parameter, an input
        # that is storage here handed on, or a view ("input" aliasing) of one.
        if expr in storage or any(expr == names[x] for x in op.inputs if x in in_storage) or (
                op.op_def.output_aliases == "input" and op.inputs and op.inputs[0] in in_storage):
            in_storage.add(out)
    if problems:
        raise UnsupportedGraphError("cannot compile the plan: " + "; ".join(problems))
    results = [names[t] for t in fetch_tensors]
    args = [names[t] for t in fed] + c.storage()
    aliased = [k for k, (t, r) in enumerate(zip(fetch_tensors, results))
               if r in args or t in in_storage or may_alias_storage(t, fed)]
    header = ["graph (op type, static shape, dtype) in plan order:"]
    header += [f"  {op.type} {op.name} -> {op.outputs[0].shape if op.outputs else ()} "
               f"{op.outputs[0].dtype.name if op.outputs else ''}" for op in needed]
    header += [f"  feed {t.name} {t.shape} {t.dtype.name}" for t in fed]
    lines = ['"""Generated by engine/compiler.py from an inference plan. Do not edit.', "",
             *map(_docstring_text, header), '"""', "", *EW.HEADER, ""]
    for name, text in c.helpers.items():
        decorator = "@njit" if name.startswith("_scalar_") else "@njit(cache=True)"
        lines += ["", decorator, text, ""]
    lines += ["", "@njit(cache=True)", f"def plan({', '.join(args)}):"]
    lines += [f"    {b}" for b in c.body] or ["    pass"]
    lines.append(f"    return ({', '.join(results)}{',' if len(results) == 1 else ''})")
    return "\n".join(lines) + "\n", c.consts, c.variables, aliased


def _docstring_text(text: str) -> str:
    """``text`` with backslashes, quotes and control characters escaped, so no op name or shape of an imported graph
    can end the module's docstring and run as code (graphs the engine builds have none: the cache keys stand)."""
    return text.encode("unicode_escape").decode("ascii").replace('"', '\\"')


def cache_key(source: str) -> str:
    """The module's stable name: sha256 of its source (ops, attrs, shapes, dtypes; never weights)."""
    return hashlib.sha256(source.encode()).hexdigest()[:24]


def load_plan_function(source: str):
    """``plan`` of ``source``: written once under the cache directory, imported, memoized per process."""
    key = cache_key(source)
    module = generated.import_generated(source, key, CACHE_SUBDIR, "plan", "shelfcast_compiled_plan_")
    return module.plan, generated.module_path(CACHE_SUBDIR, "plan", key)


class CompiledPlan:
    """One Numba function: ``__call__(*feed_values)`` returns the flat fetches' arrays, reading the parameters at each
    call. Feeds must be C-contiguous arrays of their dtypes; :class:`CompiledCheckFailed` when a run-time check in
    the compiled code fails (callers then run the interpreted plan)."""

    def __init__(self, session, fetch_tensors, feed_tensors):
        for f in fetch_tensors:  # no op or IndexedSlices: inference returns arrays
            if not isinstance(f, Tensor):
                raise UnsupportedGraphError(f"fetch {f!r} is not a tensor; compiled plans return arrays only")
        if session.config.backend == "reference":  # else compile_callable ran small batches of such a session in Numba
            raise UnsupportedGraphError("the session's backend is 'reference' (every op by its NumPy reference): "
                                        "its plans are never compiled")
        self.session = session
        self.feed_tensors = list(feed_tensors)
        self.source, consts, self.variables, aliased = generate(fetch_tensors, self.feed_tensors)
        self.function, self.path = load_plan_function(self.source)
        self._call = self._make_call(tuple(consts), tuple(aliased))

    def __call__(self, *feed_values):
        return self._call(*feed_values)

    def _make_call(self, consts: tuple, aliased: tuple):
        """The per-call path with nothing left to decide: a few µs of Python at most."""
        function, variables, session, state = self.function, tuple(self.variables), self.session, self.session.state
        checked = (ValueError, IndexError, ZeroDivisionError)

        def call(*feed_values):
            if session.closed:  # as Plan.execute: a closed session's state is gone, whatever path a batch takes
                raise RuntimeError("Attempted to use a closed Session")
            try:
                weights = [state[name] for name in variables] if variables else ()
            except KeyError as e:
                raise uninitialized(e.args[0]) from None
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
    """``session.make_callable`` with a compiled fast path for batches of at most ``max_rows`` rows, built on the first
    small call (or :meth:`warm_up`). A plan that cannot be compiled or whose source the cache directory cannot hold
    (``compile_error``, logged once) and feeds that are not exact arrays run interpreted: it converts them or refuses
    them with its clear errors."""

    def __init__(self, session, fetches, feed_list, max_rows: int | None = None):
        self.session = session
        self.interpreted = session.make_callable(fetches, feed_list)
        self._plan = session.plan(fetches, feed_list or [])
        self._build = self._plan.structure
        self._feeds = self._plan.feed_tensors
        self._batch_feed = next((k for k, t in enumerate(self._feeds) if t.shape and t.shape[0] is None), None)
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
        self._max_rows = whole_number(value, "max_rows", minimum=0)
        self._small = _small_batch_test(self._feeds, self._batch_feed, self._max_rows)

    def warm_up(self) -> bool:
        """Build (load or compile the source of) the compiled function now; True when it is usable."""
        if not self._tried:
            self._tried = True
            try:
                self.compiled = CompiledPlan(self.session, self._plan.fetches, self._feeds)
            except UnsupportedGraphError as e:
                self.compile_error = str(e)
                log.info("compiled fast path off, the interpreted plan runs every batch: %s", e)
            except OSError as e:  # the plan's source cannot be written (a full disk, a read-only or damaged cache):
                self.compile_error = f"cannot write the compiled plan under {config.CACHE_DIR}: {e}"  # as fusion's
                log.warning("compiled fast path off, the interpreted plan runs every batch: %s", self.compile_error)
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
                if not isinstance(e, NumbaError):
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
    specs = exact_feeds(feeds)
    n = len(specs)
    ndarray = np.ndarray

    def small(values) -> bool:
        if len(values) != n:
            return False
        for v, (dtype, rank, known) in zip(values, specs):
            if (v.__class__ is not ndarray or v.dtype is not dtype and v.dtype != dtype or v.ndim != rank
                    or not v.flags.c_contiguous):
                return False
            shape = v.shape
            for i, d in known:
                if shape[i] != d:
                    return False
        return batch_feed is None or values[batch_feed].shape[0] <= max_rows

    return small


def compile_callable(session, fetches, feed_list, max_rows: int | None = None) -> SmallBatchCallable:
    """A serving callable: compiled for batches up to ``max_rows`` rows, interpreted above."""
    return SmallBatchCallable(session, fetches, feed_list, max_rows)
