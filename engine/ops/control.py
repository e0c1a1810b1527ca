"""Control ops: no_op, group (run several ops for their effects), check_numerics."""

from __future__ import annotations

from engine.errors import InvalidArgumentError
from engine.graph import convert_to_tensor, get_default_graph
from engine.kernels import math as K
from engine.ops._util import FLOAT, create, same_dtype
from engine.registry import register

register("NoOp", infer=lambda inputs, attrs: [], kernel=lambda op, ctx: (lambda *xs: None), differentiable=False)


def no_op(name=None):
    return get_default_graph().create_op("NoOp", name=name or "NoOp")


def group(*inputs, name=None):
    """An op that runs once all ``inputs`` (ops, tensors, or lists of them) have run."""
    flat = []
    for x in inputs:
        if isinstance(x, (list, tuple)):
            flat.extend(x)
        else:
            flat.append(x)
    graph = get_default_graph()
    return graph.create_op("NoOp", name=name or "group_deps", control_inputs=[x for x in flat if x is not None])


def _check_kernel(op, ctx):
    message = op.attrs["message"]

    def check(x):
        if not K.all_finite(x.reshape(-1)):
            kind = "NaN" if (x != x).any() else "Inf"
            raise InvalidArgumentError(f"{message} : Tensor had {kind} values (op '{op.name}')", op.name)
        return x

    return check


register("CheckNumerics", infer=lambda inputs, attrs: [(same_dtype(inputs, FLOAT), inputs[0].shape)],
         kernel=_check_kernel, grad=lambda op, g: [g])


def check_numerics(x, message, name=None):
    """``x``, or an InvalidArgumentError carrying ``message`` when it holds NaN or Inf."""
    return create("CheckNumerics", [convert_to_tensor(x)], {"message": str(message)}, name)
