"""Control ops: no_op, group (run several ops for their effects), check_numerics."""

from __future__ import annotations

import numpy as np

from engine.errors import InvalidArgumentError
from engine.graph import convert_to_tensor, get_default_graph
from engine.kernels import reduce as R
from engine.ops._util import FLOAT, create, same_dtype, sample
from engine.registry import NUMPY_KERNEL, Example, register

register("NoOp", infer=lambda inputs, attrs: [], kernel=lambda op, ctx: (lambda *xs: None), reference=NUMPY_KERNEL,
         examples=lambda rng: [Example()], not_differentiable="no inputs, no outputs",
         emit=lambda c, op, ins: None)


def no_op(name=None):
    return get_default_graph().create_op("NoOp", name=name or "NoOp")


def group(*inputs, name=None):
    """An op that runs once all ``inputs`` (ops, tensors, or lists of them) have run, in their graph."""
    flat = [x for item in inputs for x in (item if isinstance(item, (list, tuple)) else [item]) if x is not None]
    return (flat[0].graph if flat else get_default_graph()).create_op("NoOp", name=name or "group_deps",
                                                                       control_inputs=flat)


def _check_kernel(all_finite):
    def make(op, ctx):
        message = op.attrs["message"]

        def check(x):
            if not all_finite(x):
                kind = "NaN" if (x != x).any() else "Inf"
                raise InvalidArgumentError(f"{message} : Tensor had {kind} values (op '{op.name}')", op.name)
            return x

        return check

    return make


def _check_examples(rng):
    bad = sample(rng, (2, 3), np.float64)
    bad[1, 1] = np.inf
    return [Example((sample(rng, (2, 3), t),), {"message": "x"}) for t in (np.float32, np.float64)] + [
        Example((bad,), {"message": "x"})]


register("CheckNumerics", infer=lambda inputs, attrs: [(same_dtype(inputs, FLOAT), inputs[0].shape)],
         kernel=_check_kernel(lambda x: R.all_finite(x.reshape(-1))),
         reference=_check_kernel(lambda x: bool(np.isfinite(x).all())), examples=_check_examples,
         grad=lambda op, g: [g], output_aliases="input")


def check_numerics(x, message, name=None):
    """``x``, or an InvalidArgumentError carrying ``message`` when it holds NaN or Inf."""
    return create("CheckNumerics", [convert_to_tensor(x)], {"message": str(message)}, name)
