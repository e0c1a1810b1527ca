"""The engine's main test: every registered op, driven by its OpDef, checked three independent ways.

For each op in ``registered_ops()`` and each of its ``examples`` (dtypes, broadcasting, empty
arrays, NaN), and each example derived from those (NaN, infinities and -0.0 in its floats, other
dtypes: ``_derived_examples``): the kernel against the plain-NumPy reference backend, both against the op's own
shape/dtype rule (the static dtype and every known dimension), passes on (fused, kept buffers)
against passes off bit for bit, the compiled plan (where the op compiles; once per distinct input
dtypes, shapes and attributes) against the reference, and its gradient (every finite float64 example, so
every broadcasting pattern) against central finite differences of the reference, each input's
gradient of that input's shape; an elementwise op's value summed over rows by each ``sums_broadcast`` op (a
bias gradient, which fusion computes inside the op's kernel) fused against unfused bit for bit. What an op says
of itself is checked too: a shape-only input fed other values changes nothing, an op's ``slices`` and ``narrow``
give the parts they say (narrowing), a ``sums_broadcast`` op is
fused into an elementwise producer and must agree, kernel and reference refuse for the same reason, the op
applied twice to constants and run twice, its state changed between runs, its variables read before and after it,
agrees passes on and off (an unflagged state read is folded, two unflagged updates merged, a read fused across an
unflagged write), and an op with a scalar function is elementwise. An
op registered without
a reference, examples, or a gradient (unless it says why none flows: ``not_differentiable``) fails here.
Hypothesis then builds random graphs of the registered elementwise ops and runs them all three
ways. Adding an op needs no edit of this file.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
import types
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import njit
from numba.core.dispatcher import Dispatcher

import engine as en
from engine import compiler, shapes
from engine.errors import OpError
from engine import registry
from engine.ops import _util
from engine.ops import math as M
from engine.registry import NUMPY_KERNEL, Example, get_op_def, registered_ops, simple_kernel

OPS = sorted(registered_ops())
REFERENCE = en.SessionConfig(optimize=False, backend="reference")
UNFUSED = en.SessionConfig(optimize=False, reuse_buffers=False)
OPTIMIZED = en.SessionConfig()
ROW_SUM_EXAMPLES = 2  # float examples of an elementwise op whose row sum is checked fused vs unfused
IN_CONTEXT_EXAMPLES = 2  # examples of each op that _check_in_context runs (the flags it checks are the op's)
# float64 central differences (eps 1e-6) are good to ~1e-9 here: every registered op passes at rtol 1e-7, atol 1e-8;
# at rtol 1e-4 a gradient off by a factor 1.00002 (a constant written to 5 digits) passed
GRADIENT_RTOL, GRADIENT_ATOL = 1e-6, 1e-7
ROW_SUM_PRODUCER = "Relu"  # the elementwise op a sums_broadcast op is checked after (its fused kernel sums rows)


class Built:
    """One op of one example in its own graph, fed by placeholders of the example's exact shapes."""

    def __init__(self, op_type, example):
        self.example = example
        self.static_error = None  # an example refused by shape inference is built again with shapes unknown,
        for shape_of in (np.shape, lambda a: (None,) * a.ndim, lambda a: None):  # and must fail at run time too
            self.graph = en.Graph()
            with self.graph.as_default():
                self.feeds = [en.placeholder(en.as_dtype(a.dtype), shape_of(a), name=f"in{k}")
                              for k, a in enumerate(example.inputs)]
                try:
                    self.op = self.graph.create_op(op_type, self.feeds, dict(example.attrs or {}), name="subject")
                    break
                except ValueError as e:
                    self.static_error = self.static_error or e
        self.fetch = list(self.op.outputs) or self.op

    def run(self, config, inputs=None, fetch=None):
        """(outputs, state after the run) in a fresh session holding the example's state; or the error."""
        sess = en.Session(self.graph, config)
        sess.state.update({k: np.array(v, copy=True) for k, v in (self.example.state or {}).items()})
        inputs = self.example.inputs if inputs is None else inputs
        before = [np.array(a, copy=True) for a in inputs]
        try:
            with warnings.catch_warnings():  # NaN and infinities propagate without a warning (ops._util.quiet)
                warnings.simplefilter("error", RuntimeWarning)
                out = sess.run(fetch if fetch is not None else self.fetch, dict(zip(self.feeds, inputs)))
        except (OpError, ValueError, TypeError, IndexError) as e:
            out = e
        assert not isinstance(getattr(out, "__cause__", None), RuntimeWarning), \
            f"{self.op.type}: the {config.backend} run warned (users' logs): {out.__cause__}"
        for k, (a, b) in enumerate(zip(inputs, before)):  # a feed is the caller's array: no kernel writes into it
            assert a.tobytes() == b.tobytes(), (f"{self.op.type}: the {config.backend} run wrote into input {k}, "
                                                "the caller's array (a kernel may return input 0, never write it)")
        return (out, None) if isinstance(out, Exception) else (out, sess.state)


def _brief(value):
    """An error as itself; a result by its type only, so the error beside it leads the message."""
    return repr(value) if isinstance(value, Exception) else f"a result ({type(value).__name__})"


def _close(got, want, what, exact=False):
    """Same type, dtype and shape; equal values (NaN == NaN), within float rounding unless ``exact``."""
    if isinstance(want, Exception) or isinstance(got, Exception):
        assert type(got) is type(want) or (isinstance(got, OpError) and isinstance(want, OpError)), \
            f"{what}: {_brief(got)} vs {_brief(want)}"
        # a run wraps a kernel's own exception (session.step_error): both sides must refuse for the same reason,
        # not, say, a kernel's IndexError where the reference raised a ValueError
        assert type(got.__cause__) is type(want.__cause__), \
            f"{what}: refused for different reasons: {got.__cause__!r} vs {want.__cause__!r}"
        return
    if want is None:
        assert got is None, what
        return
    if isinstance(want, (list, tuple, dict)):
        assert type(got) is type(want) and len(got) == len(want), f"{what}: {got!r} vs {want!r}"
        if isinstance(want, dict):
            assert sorted(got) == sorted(want), f"{what}: state {sorted(got)} vs {sorted(want)}"
        for k in sorted(want) if isinstance(want, dict) else range(len(want)):
            _close(got[k], want[k], f"{what}[{k}]", exact)
        return
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, \
        f"{what}: {got.dtype}{got.shape} vs {want.dtype}{want.shape}"
    if exact or want.dtype.kind not in "fc":
        np.testing.assert_array_equal(got, want, err_msg=what)
    else:
        tol = 1e-5 if want.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, equal_nan=True, err_msg=what)
    if want.dtype.kind == "f":  # assert_array_equal takes -0.0 for 0.0: the sign of a zero must agree too
        zeros = (got == 0) & (want == 0)
        np.testing.assert_array_equal(np.signbit(got[zeros]), np.signbit(want[zeros]), err_msg=f"{what}: sign of 0")


@pytest.mark.parametrize("op_type", OPS)
def test_op(op_type):
    op_def = get_op_def(op_type)
    assert op_def.reference is NUMPY_KERNEL or callable(op_def.reference), f"{op_type}: register a NumPy reference"
    if op_def.reference is NUMPY_KERNEL:  # else 'kernel vs reference' would compare a Numba kernel with itself
        compiled = _kernel_modules(op_def.kernel)
        assert not compiled, (f"{op_type}: says its kernel is plain NumPy (reference=NUMPY_KERNEL) but it calls "
                              f"{sorted(compiled)}: register a NumPy reference of its own")
    assert op_def.grad is not None or not op_def.differentiable, \
        f"{op_type}: register a gradient, or say why no gradient flows: not_differentiable='why'"
    examples = op_def.examples(np.random.default_rng(zlib.crc32(op_type.encode())))
    assert examples, f"{op_type}: register examples"
    for k, example in enumerate(examples):  # a NumPy scalar (np.float64(2), a 0-d comparison) fed to a compiled
        for j, a in enumerate(example.inputs):  # plan was a Numba TypingError out of this test, naming neither
            assert isinstance(a, np.ndarray), (f"{op_type} example {k}: input {j} is a {type(a).__name__}, not an "
                                               "array: give np.asarray(value) (a 0-d array for a scalar)")
    own = len(examples)
    examples = examples + _derived_examples(op_def, examples)
    compiled, gradient_checks, outputs = set(), 0, False  # compiled: the input shapes and attributes compiled so far
    in_context = 0  # examples run by _check_in_context
    for k, example in enumerate(examples):
        what = (f"{op_type} {'example' if k < own else 'derived example'} {k} "
                f"({[f'{a.dtype}{a.shape}' for a in example.inputs]}, {example.attrs})")
        try:
            built = Built(op_type, example)
        except TypeError:
            if k < own:
                raise
            continue  # a dtype the op's rule refuses
        outputs = outputs or bool(built.op.outputs)
        want = built.run(REFERENCE)
        unfused = built.run(UNFUSED)
        if built.static_error is not None:
            assert isinstance(want[0], OpError) and isinstance(unfused[0], OpError), \
                f"{what}: refused statically ({built.static_error}) but not at run time: {want[0]!r} {unfused[0]!r}"
        _close(unfused, want, f"{what}: kernel vs reference")
        _check_rule(built, want, f"{what}: reference")
        _check_rule(built, unfused, f"{what}: kernel")
        _check_declared_view(op_def, unfused[0], example.inputs, what)
        _check_shape_only(built, op_def, unfused, what)
        _check_parts(built, op_def, unfused, what)
        if op_def.variable_read is not None and not isinstance(want[0], Exception):  # what export freezes
            stored = (built.example.state or {}).get(op_def.variable_read(built.op))
            assert stored is not None, f"{what}: variable_read names {op_def.variable_read(built.op)!r}, not its state"
            _close(want[0], [stored], f"{what}: the output vs the stored value variable_read names", exact=True)
        _close(built.run(OPTIMIZED), unfused, f"{what}: passes on (fused) vs off", exact=not op_def.random)
        if not isinstance(want[0], Exception) and in_context < IN_CONTEXT_EXAMPLES:
            in_context += 1
            _check_in_context(op_type, example, what)
        if op_def.fusible and built.static_error is None:  # fusion computes it from its scalar, element by element
            assert not example.attrs and all(t.shape == np.broadcast_shapes(*(a.shape for a in example.inputs))
                                             for t in built.op.outputs), \
                f"{what}: says it is elementwise (a scalar function) but has attributes or its output is not its " \
                "inputs broadcast: fusion would compute it element by element; register it without scalar="
        signature = _signature(example)
        if not isinstance(want[0], Exception) and not op_def.writes_state and signature not in compiled:
            if _check_compiled(built, want[0], what):
                compiled.add(signature)
        if op_def.grad is not None and _gradient_checkable(built, want):
            _check_gradient(built, what)
            gradient_checks += 1
    if op_def.grad is not None:
        assert gradient_checks, f"{op_type}: no finite float64 example to check its gradient with" + (
            " (an elementwise op defined on part of the line, as Log, draws its examples there: "
            "elementwise(..., domain=(lo, hi)))" if op_def.fusible else "")
    if op_def.emit is not None and outputs and not op_def.must_feed:  # NoOp (no outputs), Placeholder: by design
        assert compiled, (f"{op_type}: registers an emitter (emit) but none of its examples compiled: "
                          "the compiled path never ran it")
    if op_def.fusible:
        for summer in _row_summers():
            fused = []  # the first two examples that can show it (each builds new kernels: a cold cache compiles them)
            for example in examples:
                if len(fused) < ROW_SUM_EXAMPLES and (f := _check_row_sum(op_type, example, summer)) is not None:
                    fused.append(f)
            assert all(fused), f"{op_type}: its row sum ({summer}) was not fused into its kernel"
    if op_def.sums_broadcast:  # what fusion does with the flag: the sum computed inside an elementwise producer
        producer = get_op_def(ROW_SUM_PRODUCER).examples(np.random.default_rng(0))
        fused = [f for e in producer if (f := _check_row_sum(ROW_SUM_PRODUCER, e, op_type)) is not None]
        assert fused[:ROW_SUM_EXAMPLES] and all(fused), \
            f"{op_type}: says sums_broadcast but fusion did not compute it inside {ROW_SUM_PRODUCER}'s kernel"


DERIVED_DTYPES = (np.float32, np.float64, np.int32)  # every example of an op's first float dtype is cast to those
# of these none of its examples feeds
SPECIAL_VALUES = ((np.nan,), (np.inf, -np.inf, -0.0))  # each example again with these written into its floats


def _derived_examples(op_def, examples) -> list:
    """What every op that is not elementwise is run on besides its own examples (an elementwise op's are generated
    with these already, ``_util.elementwise_examples``), so no op is checked only where its author looked: each
    example with NaN, and with infinities and -0.0, written into its float data inputs; and the examples of its
    first float dtype cast to each of ``DERIVED_DTYPES`` none of its examples feeds (a dtype its rule refuses is
    skipped). Found by a probe: a Max or Softmax kernel blind to NaN, and a kernel wrong for ints whose examples
    were all float, passed."""
    if op_def.fusible:
        return []
    out = []
    for example in examples:
        data = [k for k in op_def.data_inputs(len(example.inputs))
                if example.inputs[k].dtype.kind == "f" and example.inputs[k].size]
        for specials in SPECIAL_VALUES if data else ():
            changed = [np.array(a, copy=True) for a in example.inputs]
            for k in data:  # spread out: a NaN in one row of a reduction, each infinity in a row of its own
                flat = changed[k].reshape(-1)
                for j, v in enumerate(specials):
                    flat[min(j * max(1, flat.size // len(specials)), flat.size - 1)] = v
            out.append(dataclasses.replace(example, inputs=tuple(changed)))
    floats = [[k for k in op_def.data_inputs(len(e.inputs)) if e.inputs[k].dtype.kind == "f"] for e in examples]
    first = next((e.inputs[ks[0]].dtype for e, ks in zip(examples, floats) if ks), None)
    fed = {e.inputs[k].dtype for e, ks in zip(examples, floats) for k in ks}
    for dtype in [np.dtype(d) for d in DERIVED_DTYPES if np.dtype(d) not in fed]:
        for example, ks in zip(examples, floats):
            if ks and all(example.inputs[k].dtype == first and np.isfinite(example.inputs[k]).all()
                          and np.all(np.abs(example.inputs[k]) < 2 ** 31) for k in ks):  # int32's range
                out.append(dataclasses.replace(example, inputs=tuple(
                    a.astype(dtype) if k in ks else a for k, a in enumerate(example.inputs))))
    return out


def _kernel_modules(factory, seen=None) -> set:
    """The engine.kernels modules (Numba kernels) a kernel factory reaches through the names its code uses and
    its closures, followed through plain functions and wrappers such as lru_cache, and every Numba function it
    reaches wherever it is defined (``module.name``: an ``@njit`` beside the op, in engine/ops, was unseen)."""
    seen = set() if seen is None else seen
    if not isinstance(factory, types.FunctionType) or id(factory) in seen:
        return set()
    seen.add(id(factory))

    def names(code):
        return set(code.co_names).union(*(names(c) for c in code.co_consts if isinstance(c, types.CodeType)))

    values = [factory.__globals__[n] for n in names(factory.__code__) if n in factory.__globals__]
    values += [cell.cell_contents for cell in factory.__closure__ or () if cell.cell_contents is not None]
    found = set()
    for value in values:
        if isinstance(value, Dispatcher):  # before unwrapping: its __wrapped__ is the plain Python function
            found.add(f"{value.py_func.__module__}.{value.py_func.__name__}")
            continue
        value = getattr(value, "__wrapped__", value)
        module = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
        if isinstance(module, str) and module.startswith("engine.kernels"):
            found.add(module)
        else:
            found |= _kernel_modules(value, seen)
    return found


def _check_rule(built, result, what):
    """What ran has the dtype and shape the op's rule (``OpDef.infer``) gave its outputs when the graph was
    built: the same dtype, and the same size wherever the rule knows a dimension. Every op after it (shape
    inference, buffer planning, fusion, the compiler) trusts that rule."""
    outputs = result[0]
    if not isinstance(outputs, list):  # an error, or an op without outputs
        return
    assert len(outputs) == len(built.op.outputs), f"{what}: {len(outputs)} outputs; the rule: {len(built.op.outputs)}"
    for k, (t, value) in enumerate(zip(built.op.outputs, outputs)):
        value = np.asarray(value)
        assert value.dtype == t.dtype.np, \
            f"{what}: output {k} is {value.dtype}; its shape/dtype rule says {t.dtype.name}"
        assert shapes.compatible(t.shape, value.shape), \
            f"{what}: output {k} has shape {value.shape}; its shape/dtype rule says {t.shape}"


def _check_in_context(op_type, example, what):
    """The op as a model's graph holds it, where passes act on what it says of itself: its inputs constants
    (constant folding), applied twice to them (CSE), each variable of its state negated before it and again after
    it (fusion), run twice in one session with its state changed in between. Passes on must agree with passes off:
    an op that reads or writes state without saying so (``stateful``, ``writes_state``) was computed once at plan
    time, merged with its twin, or had a read fused across its write, and passed."""
    graph = en.Graph()
    with graph.as_default():  # each variable of its state read by a pure op before it, negated again after it:
        reads = [M.negative(graph.create_op("VariableV2", [], {"dtype": en.as_dtype(v.dtype), "shape": v.shape},
                                            name=k).outputs[0])  # fusion may not join the two across a state write
                 for k, v in (example.state or {}).items() if k != "subject"]
        inputs = [en.constant(a) for a in example.inputs]
        ops = [graph.create_op(op_type, inputs, dict(example.attrs or {}), name=n) for n in ("subject", "twin")]
        with en.control_dependencies(ops):
            fetch = [en.identity(M.negative(r)) for r in reads]
        fetch += [[en.identity(t) for t in op.outputs] or op for op in ops]  # CSE leaves a fetched value alone
    state = dict(example.state or {})
    state.update({"twin": state["subject"]} if "subject" in state else {})  # a variable's state: by its op's name
    runs = {}
    for config in (UNFUSED, OPTIMIZED):
        sess = en.Session(graph, config)
        sess.state.update({k: np.array(v, copy=True) for k, v in state.items()})
        runs[config] = []
        for _ in range(2):
            try:
                with np.errstate(all="ignore"):
                    out = sess.run(fetch)
            except (OpError, ValueError, TypeError, IndexError) as e:
                out = e
            runs[config].append(out if isinstance(out, Exception) else
                                [[np.array(v, copy=True) for v in o] if isinstance(o, list) else o for o in out])
            sess.state.update({k: (v + 1).astype(v.dtype) for k, v in sess.state.items()})
    _close(runs[OPTIMIZED], runs[UNFUSED], f"{what}: twice on constants, run twice, its state changed in between: "
           "passes on vs off (stateful or writes_state unflagged? folded, merged, or fused across a write)",
           exact=not get_op_def(op_type).random)


def _signature(example):
    """What the compiled code of an example's plan depends on: input dtypes (an emitter writes them into its
    source, MatMul's, and Numba types each anew: without them an emitter wrong for int32 alone passed, its int32
    examples, derived from the float ones, of shapes compiled already) and shapes, attributes; and whether its
    values are all finite (a derived example's NaN and infinities are compiled too)."""
    def key(v):
        return ("array", v.dtype.str, v.shape) if isinstance(v, np.ndarray) else repr(v)
    return (tuple((a.dtype.str, a.shape) for a in example.inputs),
            tuple(sorted((k, key(v)) for k, v in (example.attrs or {}).items())),
            all(np.isfinite(a).all() for a in example.inputs if a.dtype.kind == "f"))


def _check_declared_view(op_def, outputs, inputs, what):
    """An op whose kernel may hand back (a view of) an input must say so (``output_aliases``): buffer
    reuse, in-place kernels and the copy a caller gets of a variable's view all rely on it."""
    if not isinstance(outputs, list) or op_def.output_aliases:  # an error, or an op without outputs
        return
    for k, out in enumerate(outputs):
        assert not any(isinstance(out, np.ndarray) and np.shares_memory(out, a) for a in inputs), \
            f"{what}: output {k} is a view of an input; register it with output_aliases='input'"


def _row_summers() -> list:
    """The ops fusion may compute inside an elementwise producer's kernel (``sums_broadcast``: SumToShape)."""
    return sorted(n for n, d in registered_ops().items() if d.sums_broadcast)


def _check_shape_only(built, op_def, result, what):
    """An input the op says it reads only the shape of (``shape_only_inputs``: liveness frees its value, the
    gradient check skips it) must not change the result when its values do."""
    if isinstance(result[0], Exception):
        return
    for k in set(range(len(built.example.inputs))) - set(op_def.data_inputs(len(built.example.inputs))):
        original = built.example.inputs[k]
        other = (~original if original.dtype == bool else np.full_like(original, 7)) if original.size else original
        inputs = [other if j == k else a for j, a in enumerate(built.example.inputs)]
        _close(built.run(UNFUSED, inputs), result, f"{what}: input {k} is said to be shape-only (shape_only_inputs) "
               "but its values change the result", exact=not op_def.random)


def _check_parts(built, op_def, result, what):
    """What narrowing (passes/narrowing.py) relies on: an op that says its output is a part of input 0 (``slices``)
    outputs that part, and one that computes a part of its output (``narrow``) computes it as the whole's part."""
    if isinstance(result[0], Exception):
        return
    inputs = built.example.inputs
    if op_def.slices is not None and (span := op_def.slices(built.op)) is not None:
        axis, start, stop = span
        part = (slice(None),) * axis + (slice(start, stop),)
        _close(result[0][0], inputs[0][part], f"{what}: says its output is input 0's {span} (slices)", exact=True)
    if op_def.narrow is not None:
        whole = result[0][0]
        for axis in range(whole.ndim):
            start, stop = min(1, whole.shape[axis]), whole.shape[axis]
            part = (slice(None),) * axis + (slice(start, stop),)
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)
                got = op_def.narrow(built.op, axis, start, stop)(None, *inputs)
            _close(got, whole[part], f"{what}: its narrowed output ({axis}, {start}, {stop}) is not that part "
                   "of its output (narrow)")


def _check_row_sum(op_type, example, summer="SumToShape"):
    """An elementwise op's value summed over rows (a bias gradient: ``summer``, an op flagged sums_broadcast),
    which fusion computes inside the op's own kernel: fused vs unfused bit for bit, and vs the reference.
    Returns whether it was fused; None when the example cannot show it (not a float matrix, operands of
    another dtype)."""
    shape = np.broadcast_shapes(*(a.shape for a in example.inputs))
    dtype = example.inputs[0].dtype
    if (dtype.kind != "f" or len(shape) < 2 or 0 in shape or example.attrs
            or any(a.dtype != dtype for a in example.inputs)):
        return None
    graph = en.Graph()
    with graph.as_default():  # the bias (shape only) exists before the op, as a layer's does
        bias = en.constant(np.zeros(shape[1:], dtype))
        feeds = [en.placeholder(en.as_dtype(a.dtype), a.shape) for a in example.inputs]
        out = graph.create_op(op_type, feeds).outputs[0]
        if out.dtype.np != dtype:
            return None
        try:
            fetch = [out, graph.create_op(summer, [out, bias]).outputs[0]]
        except (KeyError, TypeError, ValueError) as e:  # not the KeyError of its missing attributes
            raise AssertionError(f"{summer} says sums_broadcast (its output: input 0 summed back to input 1's shape, "
                                 f"as SumToShape) but cannot take (value, like): {e!r}") from e
    what = f"{op_type} {[f'{a.dtype}{a.shape}' for a in example.inputs]} summed over rows by {summer}"
    runs = {config: en.Session(graph, config).run(fetch, dict(zip(feeds, example.inputs)))
            for config in (REFERENCE, UNFUSED, OPTIMIZED)}
    _close(runs[UNFUSED], runs[REFERENCE], f"{what}: kernel vs reference")
    _close(runs[OPTIMIZED], runs[UNFUSED], f"{what}: fused vs unfused", exact=True)
    return any(step.also for step in en.Session(graph).plan(fetch, feeds).steps)


def _check_compiled(built, want, what) -> int:
    """The compiled plan (where the op compiles: an emitter or a scalar function) against the reference."""
    op_def = built.op.op_def
    if (op_def.scalar is None and op_def.emit is None) or not built.op.outputs:
        return 0
    sess = en.Session(built.graph)
    sess.state.update({k: np.array(v, copy=True) for k, v in (built.example.state or {}).items()})
    try:
        plan = compiler.CompiledPlan(sess, list(built.op.outputs), built.feeds)
    except compiler.UnsupportedGraphError:
        return 0
    try:
        got = plan(*built.example.inputs)
    except compiler.CompiledCheckFailed:
        return 0
    _close(list(got), want, f"{what}: compiled vs reference")
    return 1


def _gradient_checkable(built, want):
    """Float64 finite inputs and float outputs (no gradient flows through an int one: top_k's indices), float64
    and finite."""
    floats = [a for a in built.example.inputs if a.dtype.kind == "f"]
    outputs = [np.asarray(o) for o in want[0] if np.asarray(o).dtype.kind == "f"] if isinstance(want[0], list) else []
    return (floats and all(a.dtype == np.float64 and a.size and np.isfinite(a).all() for a in floats)
            and outputs and all(o.dtype == np.float64 and np.isfinite(o).all() for o in outputs))


def _check_gradient(built, what, eps=1e-6):
    """``en.gradients`` of the sum of each float output * r (every one: an op of two outputs had the second's
    gradient unchecked) against central differences computed by the reference backend."""
    inputs = list(built.example.inputs)
    positions = [k for k in built.op.op_def.data_inputs(len(inputs)) if inputs[k].dtype == np.float64]
    rng = np.random.default_rng(1)
    with built.graph.as_default():
        loss = en.add_n([en.reduce_sum(en.multiply(out, en.constant(rng.uniform(0.5, 1.5, size=np.shape(value)))))
                         for out, value in zip(built.op.outputs, built.run(REFERENCE)[0]) if out.dtype.is_floating])
        try:  # en.gradients refuses a gradient whose static shape or dtype is not its input's
            grads = en.gradients(loss, [built.feeds[k] for k in positions])
        except (ValueError, TypeError) as e:
            raise AssertionError(f"{what}: {e}") from e
    got = built.run(OPTIMIZED, fetch=[g if g is not None else loss for g in grads])[0]
    reference = en.Session(built.graph, REFERENCE)  # one session (its plan made once) for every shifted run
    for k, g, value in zip(positions, grads, got):
        if g is not None:  # a gradient that forgets to sum a broadcast input back has the output's shape
            assert np.shape(value) == inputs[k].shape, \
                f"{what}: gradient of input {k} has shape {np.shape(value)}, the input {inputs[k].shape}"
        numeric = np.zeros(inputs[k].size)
        for j in range(inputs[k].size):
            shifted = []
            for sign in (1, -1):
                x = inputs[k].copy()
                x.reshape(-1)[j] += sign * eps
                reference.state.update({n: np.array(v, copy=True) for n, v in (built.example.state or {}).items()})
                shifted.append(reference.run(loss, dict(zip(built.feeds, inputs[:k] + [x] + inputs[k + 1:]))))
            numeric[j] = (shifted[0] - shifted[1]) / (2 * eps)
        symbolic = np.zeros(inputs[k].shape) if g is None else value
        np.testing.assert_allclose(np.reshape(symbolic, -1), numeric, rtol=GRADIENT_RTOL, atol=GRADIENT_ATOL,
                                   err_msg=f"{what}: gradient of input {k}")


def test_every_op_module_is_imported_by_import_engine():
    """The ops this test runs are those ``import engine`` registers (``OPS``). A family module added under
    engine/ops (a new ``linalg`` family of ops) that engine/ops/__init__.py does not import registers
    nothing then: its ops were in no ``test_op[...]``, silently, or ran there only when another test module
    happened to import it before this one was collected. Checked in a fresh interpreter, where no test imported it."""
    code = ("import pkgutil, sys, engine, engine.ops; print(' '.join(sorted(m.name for m in "
            "pkgutil.iter_modules(engine.ops.__path__) if 'engine.ops.' + m.name not in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=str(Path(en.__file__).resolve().parents[1]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [], (f"engine/ops module(s) {done.stdout.split()} are not imported by `import "
                                       "engine`: add them to engine/ops/__init__.py, or their ops are never registered "
                                       "(nor run by this test)")


# --- random graphs of elementwise ops, run three ways --------------------------------------------------

ELEMENTWISE = sorted(n for n, d in registered_ops().items() if d.fusible)


FUZZ_SPECIALS = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e30, -1e30, 3e38])  # large: float32 overflows


def _fuzz_values(rng, shape, dtype, special):
    """Values of ``dtype``; with ``special``, a third of them NaN, infinities, signed zeros or large magnitudes
    (floats) or the whole int32 range (ints: overflow wraps, in NumPy and in the kernels alike)."""
    if np.dtype(dtype).kind == "i":
        lo, hi = (-2 ** 31, 2 ** 31) if special else (-5, 6)
        return rng.integers(lo, hi, size=shape).astype(dtype)
    v = rng.uniform(-2, 2, shape)
    if special:
        v = np.where(rng.random(shape) < 1 / 3, rng.choice(FUZZ_SPECIALS, size=shape), v)
    with np.errstate(over="ignore"):
        return v.astype(dtype)


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(ELEMENTWISE), st.integers(0, 1 << 16)), min_size=1, max_size=6),
       st.integers(0, 2 ** 32 - 1), st.booleans(), st.sampled_from(["float64", "float32", "int32"]),
       st.sampled_from([3, 1, 0]), st.booleans())
def test_random_graphs_agree_compiled_interpreted_and_reference(steps, seed, with_matmul, dtype, rows, special):
    """Random DAGs over a (batch, 4) input of float64, float32 or int32, batches of 3, 1 or 0 rows, values with
    NaN, infinities, signed zeros and large magnitudes or not: fusion may group any of their ops; all three ways
    agree.

    Derandomized: the same graphs every run, so their generated kernels come from Numba's disk cache.
    """
    rng = np.random.default_rng(seed)
    dt = en.as_dtype(dtype)
    graph = en.Graph()
    with graph.as_default():
        x = en.placeholder(dt, (None, 4), name="x")
        values = [x, en.constant(_fuzz_values(rng, 4, dt.np, special)),
                  en.constant(_fuzz_values(rng, (), dt.np, special))]
        if with_matmul:
            values.append(en.matmul(x, en.constant(_fuzz_values(rng, (4, 4), dt.np, False))))
        conditions = []  # the bool values so far: Select's first operand
        for op_type, pick in steps:
            arity = len(get_op_def(op_type).examples(rng)[0].inputs)
            operands = [values[(pick >> (3 * k)) % len(values)] for k in range(arity)]
            if conditions and get_op_def(op_type).examples(rng)[0].inputs[0].dtype == bool:
                operands[0] = conditions[pick % len(conditions)]
            try:
                y = graph.create_op(op_type, operands).outputs[0]
            except TypeError:  # a float-only op on ints, Select without a bool condition
                continue
            if y.dtype == en.bool:
                conditions.append(y)
            values.append(y if y.dtype == dt else en.cast(y, dt))
        fetches = [v for v in values[3:] if v.shape is not None and len(v.shape) == 2] or [x]
        # and half the time the last value summed over rows, as a bias gradient (fusion joins it to its producer)
        summed = [graph.create_op("SumToShape", [fetches[-1], values[1]]).outputs[0]] if seed % 2 else []
    feed = {x: _fuzz_values(rng, (rows, 4), dt.np, special)}
    fed = feed[x].tobytes()
    with np.errstate(all="ignore"):
        want = en.Session(graph, REFERENCE).run(fetches + summed, feed)
        unfused = en.Session(graph, UNFUSED).run(fetches + summed, feed)
        fused = en.Session(graph, OPTIMIZED).run(fetches + summed, feed)
    assert feed[x].tobytes() == fed, "a run wrote into the caller's feed (an in-place kernel reused its buffer)"
    _close(unfused, want, "interpreted vs reference")
    _close(fused, unfused, "fused vs unfused", exact=True)
    want = want[:len(fetches)]
    try:
        plan = compiler.CompiledPlan(en.Session(graph), fetches, [x])
    except compiler.UnsupportedGraphError:
        return
    with np.errstate(all="ignore"):
        got = list(plan(*feed.values()))
    _close(got, want, "compiled vs reference")


# --- the test above fails for an op registered without what it checks ---------------------------------


def _fake(monkeypatch, base, **changes):
    """``base``'s definition under the name 'Fake<base>', with ``changes``, registered for this test only."""
    fake = dataclasses.replace(get_op_def(base), name=f"Fake{base}", **changes)
    monkeypatch.setitem(registry._REGISTRY, fake.name, fake)
    return fake.name


def _fake_relu(monkeypatch, **changes):
    _fake(monkeypatch, "Relu", **changes)


@pytest.fixture
def scratch_registry(monkeypatch):
    """register() writes to a copy of the table, dropped after the test."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_an_op_without_reference_or_examples_cannot_be_registered(scratch_registry):
    for missing in ("reference", "examples"):
        kwargs = {"infer": None, "kernel": None, "reference": NUMPY_KERNEL, "examples": lambda rng: [], missing: None}
        with pytest.raises(TypeError, match="reference and examples are required"):
            registry.register("Unchecked", **kwargs)
    assert "Unchecked" not in registered_ops()


@pytest.mark.parametrize("changes,message", [
    ({"grad": None}, "register a gradient"),
    ({"examples": lambda rng: []}, "register examples"),
    ({"kernel": lambda op, ctx: (lambda x: np.maximum(x, 0) + x.dtype.type(1e-3))}, "kernel vs reference"),
    ({"grad": lambda op, g: [g]}, "gradient of input 0"),
    ({"grad": lambda op, g: [M.multiply(get_op_def("Relu").grad(op, g)[0], 1.00002)]}, "gradient of input 0"),
    ({"reference": NUMPY_KERNEL}, r"calls \['engine.kernels.elementwise'\]: register a NumPy reference"),
], ids=["no gradient", "no examples", "wrong kernel", "wrong gradient", "gradient off by a factor 1.00002",
        "Numba kernel checked against itself"])
def test_the_registry_test_fails_for_an_unchecked_or_wrong_op(monkeypatch, changes, message):
    _fake_relu(monkeypatch, **changes)
    with pytest.raises(AssertionError, match=message):
        test_op("FakeRelu")


def _row_sum(rule):
    """A non-elementwise op whose kernel and reference agree (row sums of a float matrix), with shape/dtype
    ``rule(x) -> (dtype, shape)``: the rule is all that may be wrong."""
    return dict(infer=lambda inputs, attrs: [rule(inputs[0])], kernel=simple_kernel(lambda x: x.sum(axis=1)),
                reference=lambda op, ctx: (lambda x: np.sum(x, axis=1)), scalar=None, emit=None, grad=None,
                not_differentiable="a test op", examples=lambda rng: [
                    Example((_util.sample(rng, (3, 4), t),)) for t in (np.float32, np.float64)])


def _transpose_a_negated(c, op, ins):
    """MatMul's emitter, wrong (negated) only when ``transpose_a``: what compiling one example cannot see."""
    expr = get_op_def("MatMul").emit(c, op, ins)
    return f"(-{expr})" if op.attrs["transpose_a"] else expr


def _negated_for_ints(c, op, ins):
    """MatMul's emitter, wrong (negated) for integer products only: its float examples' shapes compile right."""
    expr = get_op_def("MatMul").emit(c, op, ins)
    return f"(-{expr})" if op.outputs[0].dtype.is_integer else expr


def _mul_grad_wrong_for_a_scalar(op, g):
    """Mul's gradient, halved for operand 1 when that is a 0-d scalar (a broadcast example only shows it)."""
    gx, gy = get_op_def("Mul").grad(op, g)
    return [gx, M.multiply(gy, 0.5) if op.inputs[1].shape == () else gy]


@pytest.mark.parametrize("base,changes,message", [
    ("Relu", _row_sum(lambda x: (en.int32, (3,))), r"output 0 is float\d+; its shape/dtype rule says int32"),
    ("Relu", _row_sum(lambda x: (x.dtype, (4,))), r"output 0 has shape \(3,\); its shape/dtype rule says \(4,\)"),
    ("Mul", {"infer": lambda inputs, attrs: [(inputs[0].dtype, inputs[0].shape)]},
     r"\(4,\).*output 0 has shape \(3, 4\); its shape/dtype rule says \(4,\)"),
    ("Mul", {"grad": lambda op, g: [M.multiply(g, op.inputs[1]),  # forgets to sum input 0 back: (4,) x (3, 4)
                                    _util.unbroadcast(M.multiply(g, op.inputs[0]), op.inputs[1])]},
     r"gradient of FakeMul op 'subject' for input 0 has shape \(3, 4\)"),
    ("Mul", {"grad": _mul_grad_wrong_for_a_scalar}, r"float64\(3, 4\)', 'float64\(\)'.*gradient of input 1"),
    ("MatMul", {"emit": _transpose_a_negated}, r"'transpose_a': True.*compiled vs reference"),
    ("MatMul", {"emit": _negated_for_ints}, r"derived example \d+ \(\['int32\(3, 4\)'.*compiled vs reference"),
    ("Greater", {"infer": lambda inputs, attrs: [(inputs[0].dtype, shapes.broadcast(*(t.shape for t in inputs)))]},
     r"float32\(3, 4\).*its NumPy reference gives bool, its dtype rule float32 \(a comparison needs out_dtype=BOOL"),
    ("Abs", {"infer": lambda inputs, attrs: [(en.float32, inputs[0].shape)]},
     r"float64\(3, 4\).*its NumPy reference gives float64, its dtype rule float32"),
], ids=["rule's dtype", "rule's shape", "rule ignores broadcasting", "gradient not summed back to a broadcast input",
        "gradient wrong for a scalar operand only", "compiled code wrong for one attribute only",
        "compiled code wrong for one dtype only",
        "elementwise rule's dtype: a comparison's", "elementwise rule's dtype: float64 narrowed"])
def test_the_registry_test_checks_every_example(monkeypatch, base, changes, message):
    """Each of these ops is right on its first examples and wrong on a later one (or where nothing ran the
    rule against the kernel): the registry test must find it. Found by a probe: an elementwise op's reference was
    cast to its rule's dtype, which its kernel writes too, so a comparison registered without out_dtype=BOOL passed
    (0.0/1.0 floats both ways) and a rule that narrowed float64 failed only as "no finite float64 example"."""
    name = _fake(monkeypatch, base, **changes)
    with pytest.raises(AssertionError, match=message):
        test_op(name)


def _matmul_part(op, axis, start, stop):
    """MatMul's narrow for the part [start, stop): asked for another part, it gives the wrong one."""
    return get_op_def("MatMul").narrow(op, axis, start, stop)


def _mean_to_shape(op, ctx):
    """SumToShape divided by the rows summed: a mean, whose kernel and reference agree; only the flag
    sums_broadcast (kept from SumToShape) is wrong: fusion would compute a sum in its producer's kernel."""
    reduce = get_op_def("SumToShape").reference(op, ctx)
    return lambda g, like: (reduce(g, like) / (g.size // max(like.size, 1))).astype(g.dtype)


def _negate_in_place(x):
    """Neg written into its input, returned as its output (declared: output_aliases='input')."""
    return np.negative(x, out=x)


def _refuses_empty(error):
    def make(op, ctx):
        def run(x):
            if x.size == 0:
                raise error("empty")
            return np.maximum(x, 0).astype(x.dtype)
        return run
    return make


@pytest.mark.parametrize("base,changes,message", [
    ("SumToShape", {"kernel": _mean_to_shape, "reference": _mean_to_shape, "grad": None,
                    "not_differentiable": "a test op"}, r"FakeSumToShape.*fused vs unfused"),
    ("Mul", {"shape_only_inputs": (1,)}, r"input 1 is said to be shape-only"),
    ("Relu", {"kernel": _refuses_empty(ValueError), "reference": _refuses_empty(IndexError), "scalar": None,
              "emit": None}, r"refused for different reasons: ValueError\('empty'\) vs IndexError\('empty'\)"),
    ("Neg", {"kernel": simple_kernel(_negate_in_place), "scalar": None, "output_aliases": "input"},
     r"FakeNeg: the \w+ run wrote into input 0, the caller's array"),
    ("Sum", {"sums_broadcast": True}, r"FakeSum says sums_broadcast .*cannot take \(value, like\): KeyError\('axis'\)"),
    ("ReadVariable", {"stateful": False}, r"FakeReadVariable .*twice on constants, run twice, its state changed"),
    ("AssignAdd", {"stateful": False, "writes_state": False}, r"FakeAssignAdd .*twice on constants.*passes on vs off"),
    ("ApplyAdam", {"writes_state": False}, r"FakeApplyAdam .*twice on constants.*passes on vs off"),
    ("Sum", {"scalar": get_op_def("Relu").scalar}, r"FakeSum .*says it is elementwise \(a scalar function\) but"),
    ("Log", {"examples": _util.elementwise_examples(1, _util.FLOAT, domain=(-3.0, -0.5))},
     r"FakeLog: no finite float64 example .*elementwise\(\.\.\., domain=\(lo, hi\)\)"),
    ("ConcatSlice", {"slices": lambda op: (0, 0, 1)}, r"FakeConcatSlice .*says its output is input 0's \(0, 0, 1\)"),
    ("MatMul", {"narrow": lambda op, axis, start, stop: _matmul_part(op, axis, 0, stop - start)},
     r"FakeMatMul .*its narrowed output \(0, 1, \d+\) is not that part"),
], ids=["sums_broadcast on an op that does not sum", "shape_only_inputs on an input whose values count",
        "kernel and reference refuse for different reasons", "output_aliases='input' on a kernel that writes input 0",
        "sums_broadcast on a reduction of other inputs", "a state read not flagged stateful",
        "a state update not flagged stateful", "an update not flagged writes_state",
        "a reduction given a scalar function (fusible)",
        "examples outside an elementwise op's domain", "slices naming another part",
        "narrow computing another part"])
def test_the_registry_test_checks_what_an_op_says_of_itself(monkeypatch, base, changes, message):
    """Found by a probe: each of these passed the registry test before. A wrong sums_broadcast gave wrong fused
    results (24 where 8 was right) only inside a graph; a wrong shape_only_inputs turned off that input's
    gradient check; any two errors counted as agreement; a kernel that wrote into its input (the caller's feed)
    and returned it agreed with itself: the runs after it compared their outputs with that same array. A reduction
    flagged sums_broadcast failed every elementwise op's test with a bare KeyError. A state read or update not
    flagged stateful ran right where every input was fed, yet constant folding computed it once at plan time (a
    read went stale) and CSE merged two updates into one; an optimizer's update not flagged writes_state let fusion
    compute a read of its variable made before it after it; a reduction given a scalar function is fusible, which
    fusion computes element by element. An elementwise op registered without the domain it is defined on (arctanh
    on the default -3..3) failed as "no finite float64 example", naming nothing to give."""
    name = _fake(monkeypatch, base, **changes)
    with pytest.raises(AssertionError, match=message):
        test_op(name)


def _nan_blind(base, fill):
    """``base``'s reference as a kernel that reads NaN as ``fill``: right wherever an example has no NaN."""
    def make(op, ctx):
        reference = get_op_def(base).reference(op, ctx)
        return lambda x: reference(np.where(np.isnan(x), fill, x) if x.dtype.kind == "f" else x)
    return make


def _wrong_for_ints(op, ctx):
    """Max's reference as a kernel, one too high for ints."""
    reference = get_op_def("Max").reference(op, ctx)
    return lambda x: reference(x) if x.dtype.kind == "f" else reference(x) + x.dtype.type(1)


def _nan_blind_emit(c, op, ins):
    """MatMul's emitter with NaN replaced by 0 in the compiled code: right wherever the inputs are finite."""
    return f"np.nan_to_num({get_op_def('MatMul').emit(c, op, ins)})"


def _float_examples_of(base):
    return lambda rng: [e for e in get_op_def(base).examples(rng) if e.inputs[0].dtype.kind == "f"]


@pytest.mark.parametrize("base,changes,message", [
    ("Max", {"kernel": _nan_blind("Max", -np.inf)}, r"derived example .*kernel vs reference"),
    ("Softmax", {"kernel": _nan_blind("Softmax", 0.0)}, r"derived example .*kernel vs reference"),
    ("Max", {"kernel": _wrong_for_ints, "examples": _float_examples_of("Max")},
     r"derived example .*int32.*kernel vs reference"),
    ("MatMul", {"emit": _nan_blind_emit}, r"derived example .*compiled vs reference"),
], ids=["reduction that skips NaN", "softmax that reads NaN as 0", "wrong for ints, float examples only",
        "compiled code that skips NaN"])
def test_the_registry_test_runs_every_op_on_nan_and_on_every_dtype(monkeypatch, base, changes, message):
    """Found by a probe: an op that is not elementwise was checked only on its own examples, and none of Max's or
    Softmax's has a NaN: each of these kernels passed. Each example is now also run with NaN, with infinities and
    -0.0, and cast to the dtypes none of them feeds."""
    name = _fake(monkeypatch, base, **changes)
    with pytest.raises(AssertionError, match=message):
        test_op(name)


def test_an_elementwise_ops_own_examples_come_beside_the_generated_ones(scratch_registry):
    """An elementwise op's ``examples`` add cases; they no longer replace the dtypes, broadcasting, empty, NaN and
    special values every elementwise op is run on."""
    extra = Example((np.array([[1.0, -2.0]]),))
    _util.elementwise("SinTwice", np.sin, np.sin, _util.FLOAT, grad=get_op_def("Sin").grad,
                      examples=lambda rng: [extra])
    rng = np.random.default_rng(0)
    examples = get_op_def("SinTwice").examples(rng)
    generated = _util.elementwise_examples(1, _util.FLOAT)(np.random.default_rng(0))
    assert len(examples) == len(generated) + 1 and examples[-1] is extra
    assert any(a.size == 0 for e in examples for a in e.inputs) and any(np.isnan(a).any() for e in examples
                                                                        for a in e.inputs)


def test_an_op_says_why_no_gradient_flows_through_it(scratch_registry):
    """``differentiable=False`` would let an op with float outputs skip the gradient check unexplained."""
    fields = {"infer": None, "kernel": None, "reference": NUMPY_KERNEL, "examples": lambda rng: []}
    with pytest.raises(TypeError, match="not_differentiable='why'"):
        registry.register("Unexplained", differentiable=False, **fields)
    with pytest.raises(TypeError, match="not_differentiable='why'"):
        _util.elementwise("Unexplained", np.sin, np.sin, _util.FLOAT, differentiable=False)
    with pytest.raises(TypeError, match="must be a reason"):
        registry.register("Unexplained", not_differentiable=" ", **fields)
    with pytest.raises(ValueError, match="has a grad and says it is not differentiable"):
        registry.register("Unexplained", not_differentiable="why", grad=lambda op, g: [g], **fields)
    assert "Unexplained" not in registered_ops()
    assert not registry.register("Explained", not_differentiable="a test op", **fields).differentiable
    assert all(d.grad is not None or d.not_differentiable.strip() for d in registered_ops().values())


@pytest.mark.parametrize("name", ["Tan-v2", "my.Tan", "tan", "Tan v2", "2Tan", ""])
def test_an_op_name_is_a_camel_case_identifier(scratch_registry, name):
    """The compiler names generated functions after op types: 'Tan-v2' would compile to a SyntaxError."""
    with pytest.raises(ValueError, match="CamelCase"):
        registry.register(name, infer=None, kernel=None, reference=NUMPY_KERNEL, examples=lambda rng: [])
    with pytest.raises(ValueError, match="CamelCase"):
        _util.elementwise(name, np.sin, np.sin, _util.FLOAT, grad=get_op_def("Sin").grad)
    assert name not in registered_ops()
    assert all(registry._OP_NAME.fullmatch(n) and n.isidentifier() for n in registered_ops())


def test_an_elementwise_op_without_a_reference_cannot_be_registered(scratch_registry):
    with pytest.raises(TypeError, match="register a NumPy reference"):
        _util.elementwise("Unchecked", np.sin, None, _util.FLOAT, grad=get_op_def("Sin").grad)
    assert "Unchecked" not in registered_ops()


def test_an_elementwise_op_keeps_the_formula_it_registered_with_when_its_file_changes(scratch_registry, tmp_path):
    """Found by a probe: kernels are generated from the scalar function's source, read when a kernel was first
    built; a module edited on disk after the import (an upgrade under a running process) gave the op the lines
    now at the function's line number: 'a * 2' registered, 'a * 3' computed, silently. The source is read once,
    when the op registers."""
    path = tmp_path / "probe_scalars.py"
    path.write_text("def twice(a):\n    return a * 2\n")
    spec = importlib.util.spec_from_file_location("probe_scalars", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _util.elementwise("ProbeTwice", module.twice, lambda a: a * 2, _util.FLOAT, not_differentiable="a test op")
    path.write_text("def thrice(a):\n    return a * 3  # the file as edited after the import\n")
    x = en.placeholder(en.float64, (None,))
    y = en.get_default_graph().create_op("ProbeTwice", [x]).outputs[0]
    for config in (UNFUSED, OPTIMIZED):
        np.testing.assert_array_equal(en.Session(config=config).run(y, {x: [1.0, 2.0]}), [2.0, 4.0])
    np.testing.assert_array_equal(compiler.CompiledPlan(en.Session(), [y], [x])(np.array([1.0, 2.0]))[0], [2.0, 4.0])


def test_an_op_of_two_outputs_is_checked_by_the_registry_test_output_by_output(moments_op, monkeypatch):
    """Found by a probe: an op registered with two outputs (nn.moments' mean and variance) failed every session run
    with a KeyError (plans gave each op one slot), and once it ran, the gradient check weighted output 0 only: a
    variance gradient off by a factor of 2 passed. It now runs like any op, and each output's gradient is checked."""
    test_op("TestMoments")
    right = get_op_def("TestMoments").grad
    wrong = dataclasses.replace(get_op_def("TestMoments"), grad=lambda op, dys: right(op, [dys[0], dys[1] * 0.5]))
    monkeypatch.setitem(registry._REGISTRY, "TestMoments", wrong)
    with pytest.raises(AssertionError, match="gradient of input 0"):
        test_op("TestMoments")


def _top1(x):
    """Each row's largest value and its position: an op of a float and an int output (as nn.top_k)."""
    i = np.argmax(x, axis=-1)
    return np.take_along_axis(x, i[..., None], -1)[..., 0], i.astype(np.int64)


def _top1_grad(scale):
    def grad(op, dys):
        x, (top, _) = op.inputs[0], op.outputs
        return [M.multiply(en.cast(en.equal(x, en.expand_dims(top, -1)), x.dtype), en.expand_dims(dys[0], -1) * scale)]
    return grad


@pytest.mark.parametrize("scale,fails", [(1.0, False), (0.5, True)], ids=["right gradient", "wrong gradient"])
def test_an_op_with_an_int_output_beside_a_float_one_has_its_gradient_checked(scratch_registry, scale, fails):
    """Found by a probe: the gradient check wanted every output float64, so an op with an int output (top_k's
    indices) had no example to check its gradient with and could not pass, whatever its gradient."""
    registry.register("Top1", infer=lambda inputs, attrs: [(inputs[0].dtype, inputs[0].shape[:-1]),
                                                          (en.int64, inputs[0].shape[:-1])],
                      kernel=simple_kernel(_top1), grad=_top1_grad(scale),
                      reference=simple_kernel(lambda x: (np.max(x, axis=-1), np.argmax(x, axis=-1).astype(np.int64))),
                      examples=lambda rng: [Example((_util.sample(rng, (3, 4), t),)) for t in (np.float32, np.float64)])
    if fails:
        with pytest.raises(AssertionError, match="gradient of input 0"):
            test_op("Top1")
    else:
        test_op("Top1")


def _logical_not(a):
    return not a


def test_an_elementwise_op_of_bool_operands_passes_the_registry_test(scratch_registry):
    """Found by a probe: a contributor's LogicalNot (kinds ("bool",)) failed the registry test with a Numba
    TypingError ("Unknown attribute 'size' of type bool") from the test itself: its generated 0-d example was
    ``rng.random(()) < 0.5``, a NumPy bool scalar, not an array, and the compiled plan was fed it as it is (Equal's
    bool examples hid it: a float example of the same shapes had been compiled first)."""
    _util.elementwise("ProbeLogicalNot", _logical_not, np.logical_not, ("bool",), not_differentiable="bool output")
    test_op("ProbeLogicalNot")
    _util.elementwise("ProbeScalarExample", _logical_not, np.logical_not, ("bool",), not_differentiable="bool output",
                      examples=lambda rng: [Example((np.bool_(True),))])  # an author's own example: said so, by name
    with pytest.raises(AssertionError, match=r"ProbeScalarExample example \d+: input 0 is a bool_?, not an array"):
        test_op("ProbeScalarExample")


@njit(cache=False)
def _twice_in_numba(x):
    return x * 2


def test_a_numba_kernel_beside_its_op_is_no_reference_of_itself(scratch_registry):
    """Found by a probe: an op whose kernel is an ``@njit`` function defined beside it (in its ops module, not
    engine.kernels) registered reference=NUMPY_KERNEL and passed: the check looked for engine.kernels modules only,
    and a Numba function's ``__wrapped__`` led it to the plain Python function, so "kernel vs reference" compared
    the Numba kernel with itself (a kernel off by one passed as well as this right one)."""
    registry.register("ProbeTwice", infer=lambda inputs, attrs: [(inputs[0].dtype, inputs[0].shape)],
                      kernel=simple_kernel(_twice_in_numba), reference=NUMPY_KERNEL, not_differentiable="a test op",
                      examples=lambda rng: [Example((_util.sample(rng, (3, 4), t),)) for t in (np.float32, np.float64)])
    with pytest.raises(AssertionError, match=r"ProbeTwice: says its kernel is plain NumPy .* calls "
                                             r"\['[\w.]+\._twice_in_numba'\]: register a NumPy reference"):
        test_op("ProbeTwice")
