"""The op table: every fact about an op type in ONE definition (an :class:`OpDef`), registered next to the constructor
users call (``engine/ops``). Sessions, passes, the compiler, autodiff and the registry test
(``tests/engine/test_op_registry.py``) read its fields and flags; none of them names an op type.

``kernel(op, ctx)`` is a factory called once when a Session builds a plan (``ctx`` is the Session: ``ctx.state``,
``ctx.rng(op)``), so attributes and state are looked up then, not per run. It returns ``f(*input_arrays) -> array``
(``None`` for ops without outputs, a tuple for several), which never keeps an input after the call (state ops copy
what they store). ``reference`` computes the same with plain NumPy (``SessionConfig(backend="reference")``, the tests'
independent check), or is ``NUMPY_KERNEL`` where the kernel already is plain NumPy. ``grad(op, grad_of_output) ->
[grad_of_input_i or None, ...]`` (several outputs: a list of their gradients, None where none flows) builds ops:
gradients extend the graph (whitepaper section 4.1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

_REGISTRY: dict[str, "OpDef"] = {}
_OP_NAME = re.compile(r"[A-Z][A-Za-z0-9_]*")

NUMPY_KERNEL = "the kernel is plain NumPy"
"""``reference=`` value of ops whose kernel is itself written with NumPy calls only."""


@dataclass(frozen=True)
class Example:
    """One case of an op for the registry test: its inputs, attrs and session state (variable name -> array)."""

    inputs: tuple = ()
    attrs: Optional[dict] = None
    state: Optional[dict] = None


@dataclass(frozen=True)
class OpDef:
    """How one op type is inferred, computed (fast and by reference), differentiated and treated by passes."""

    name: str
    infer: Callable  # (inputs: list[Tensor], attrs: dict) -> list[(DType, shape)]
    kernel: Callable  # (op, ctx) -> callable(*arrays)
    reference: object  # (op, ctx) -> callable(*arrays) in plain NumPy, or NUMPY_KERNEL
    examples: Callable  # (rng) -> list[Example]: the cases the registry-driven test runs
    grad: Optional[Callable] = None  # (op, dy) -> list of input grads (None allowed)
    not_differentiable: str = ""  # why no gradient flows through it (comparisons, shapes, ...); "" = differentiable
    sparse_grad: bool = False  # grad takes an IndexedSlices dy as it is (Identity); others get it densified
    stateful: bool = False  # reads/writes session state: never merged, never constant-folded
    writes_state: bool = False  # changes session state: passes never move pure work across it
    random: bool = False  # draws random numbers: never merged, never constant-folded
    output_aliases: str = ""  # "input": output may be input 0 itself (a view); "storage": session/const storage
    shape_only_inputs: tuple = ()  # input positions whose kernel reads only the array's shape
    sums_broadcast: bool = False  # output = input 0 summed back to the output's shape (a bias gradient): fusible
    out_kernel: Optional[Callable] = None  # (op, ctx) -> f(out_or_None, *arrays): may write a kept buffer
    narrow: Optional[Callable] = None  # (op, axis, start, stop) -> f(out_or_None, *arrays): that part of its output
    slices: Optional[Callable] = None  # (op) -> (axis, start, stop): its output is that part of input 0 (None: unknown)
    emit: Optional[Callable] = None  # compiler emitter (engine/compiler.py's Emitter protocol)
    scalar: Optional[Callable] = None  # elementwise ops: the ONE scalar function every kernel is built from
    variable_read: Optional[Callable] = None  # (op) -> the variable whose stored value it outputs: export freezes it
    must_feed: bool = False  # its value comes from a feed only (Placeholder): an export that needs it unfed refuses

    @property
    def differentiable(self) -> bool:
        """Gradients flow through it (its ``grad``, or ``gradients()`` raises "no gradient defined")."""
        return not self.not_differentiable

    @property
    def fusible(self) -> bool:
        """Elementwise: its kernel, fused kernels and compiled plans come from ``scalar``."""
        return self.scalar is not None

    def reference_kernel(self, op, ctx):
        """The reference backend's callable for ``op`` (the kernel itself for NumPy kernels)."""
        return (self.kernel if self.reference is NUMPY_KERNEL else self.reference)(op, ctx)

    def data_inputs(self, n_inputs: int) -> list:
        """Positions of the inputs whose *values* the kernel reads (not just their shapes)."""
        shape_only = self.shape_only_inputs
        if isinstance(shape_only, slice):
            shape_only = range(n_inputs)[shape_only]
        return [k for k in range(n_inputs) if k not in shape_only]


def register(name: str, **fields) -> OpDef:
    """Add an op type (``fields``: :class:`OpDef`'s) once, its CamelCase name a Python identifier (the compiler names
    functions after it). Without a ``grad``, ``not_differentiable="why"`` says why no gradient flows: no op skips the
    registry test's gradient check silently (with neither, ``gradients()`` and the registry test fail it)."""
    if not isinstance(name, str) or not _OP_NAME.fullmatch(name):
        raise ValueError(f"op name {name!r}: must be CamelCase: a capital letter, then letters, digits or _ "
                         "(a Python identifier, as TensorFlow's op names are)")
    if name in _REGISTRY:
        raise ValueError(f"op {name!r} is already registered")
    if fields.get("reference") is None or fields.get("examples") is None:
        raise TypeError(f"op {name!r}: a NumPy reference and examples are required (the registry test runs them): "
                        "register a NumPy reference (or reference=NUMPY_KERNEL) and examples")
    if "differentiable" in fields:
        raise TypeError(f"op {name!r}: instead of differentiable=..., give a grad or say why no gradient flows "
                        "with not_differentiable='why'")
    reason = fields.get("not_differentiable", "")
    if not isinstance(reason, str) or (reason and not reason.strip()):
        raise TypeError(f"op {name!r}: not_differentiable must be a reason (a non-empty string)")
    if reason and fields.get("grad") is not None:
        raise ValueError(f"op {name!r}: has a grad and says it is not differentiable ({reason!r})")
    if fields.get("output_aliases", "") not in ("", "input", "storage"):
        raise ValueError(f"op {name!r}: output_aliases must be '', 'input' or 'storage'")
    op_def = _REGISTRY[name] = OpDef(name=name, **fields)
    return op_def


def get_op_def(name: str) -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown op type {name!r}") from None


def registered_ops() -> dict[str, OpDef]:
    """Every op type (``import engine`` registers them all)."""
    return dict(_REGISTRY)


def simple_kernel(fn):
    """Kernel factory for ops whose kernel needs neither attributes nor state."""
    return lambda op, ctx: fn
