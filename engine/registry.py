"""The op table: one definition per op type (shape/dtype rule, CPU kernel, gradient, flags).

Each ``engine/ops/*.py`` module registers its ops with :func:`register` next to the
constructor users call; ``engine/kernels/*.py`` hold the Numba code those definitions use.

Kernel convention: ``kernel(op, ctx)`` is a *factory* called once when a Session builds an
execution plan; it returns a callable ``f(*input_arrays) -> array`` (or ``None`` for ops
with no outputs) that the plan calls on every run. Attributes are read, and stateful ops
find their session state, at factory time, so the per-run loop does no lookups
(``ctx`` is the Session: ``ctx.state`` holds variables, ``ctx.rng(op)`` random streams).

Gradient convention: ``grad(op, grad_of_output) -> [grad_of_input_i or None, ...]``,
built from ops (so gradients are graph extensions, whitepaper section 4.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

_REGISTRY: dict[str, "OpDef"] = {}


@dataclass(frozen=True)
class OpDef:
    """How one op type is inferred, computed and differentiated."""

    name: str
    infer: Callable  # (inputs: list[Tensor], attrs: dict) -> list[(DType, shape)]
    kernel: Callable  # (op, ctx) -> callable(*arrays)
    grad: Optional[Callable] = None  # (op, dy) -> list of input grads (None allowed)
    differentiable: bool = True  # False: no gradient flows through (comparisons, casts to int ...)
    stateful: bool = False  # reads/writes session state: never merged, never constant-folded
    random: bool = False  # draws random numbers: never merged, never constant-folded
    default_name: str = ""
    attr_defaults: dict = field(default_factory=dict)


def register(name: str, *, infer, kernel, grad=None, differentiable=True, stateful=False, random=False,
             default_name=None) -> OpDef:
    """Add an op type to the table; a second definition of the same name is a programming error."""
    if name in _REGISTRY:
        raise ValueError(f"op {name!r} is already registered")
    # differentiable=True without a gradient means "not defined": gradients() raises for it;
    # differentiable=False means "no gradient flows" (comparisons, shapes, integer outputs).
    op_def = OpDef(name=name, infer=infer, kernel=kernel, grad=grad, differentiable=differentiable,
                   stateful=stateful, random=random, default_name=default_name or name)
    _REGISTRY[name] = op_def
    return op_def


def get_op_def(name: str) -> OpDef:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown op type {name!r}") from None


def registered_ops() -> dict[str, OpDef]:
    _ensure_loaded()
    return dict(_REGISTRY)


def _ensure_loaded() -> None:
    import engine.ops  # noqa: F401  (registers every op family)


def simple_kernel(fn):
    """Kernel factory for ops whose kernel needs neither attributes nor state."""
    return lambda op, ctx: fn


def unbroadcast(grad, like):
    """Sum ``grad`` back to the shape of ``like`` (an input that was broadcast in the forward op).

    Statically equal, fully known shapes need nothing; otherwise a ``SumToShape`` op reduces at
    run time, so unknown (batch) dimensions work.
    """
    from engine import shapes
    from engine.ops.array import sum_to_shape

    if grad is None:
        return None
    if grad.shape == like.shape and shapes.is_fully_defined(like.shape):
        return grad
    return sum_to_shape(grad, like)
