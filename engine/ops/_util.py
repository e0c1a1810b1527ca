"""Small helpers shared by the op families: argument conversion and inference checks."""

from __future__ import annotations

from engine import shapes
from engine.graph import convert_to_tensor, get_default_graph, is_tensor_like


def tensors_for_binary(x, y):
    """Two tensors for a binary op; a Python/NumPy operand takes the tensor operand's dtype."""
    if is_tensor_like(x):
        x = convert_to_tensor(x)
        y = convert_to_tensor(y, dtype=x.dtype) if not is_tensor_like(y) else convert_to_tensor(y)
    elif is_tensor_like(y):
        y = convert_to_tensor(y)
        x = convert_to_tensor(x, dtype=y.dtype)
    else:
        x = convert_to_tensor(x)
        y = convert_to_tensor(y, dtype=x.dtype)
    return x, y


def same_dtype(inputs, kinds=None):
    """The common dtype of ``inputs``; TypeError when they differ or have a forbidden kind."""
    d = inputs[0].dtype
    for t in inputs[1:]:
        if t.dtype != d:
            raise TypeError(f"dtypes differ ({d.name} vs {t.dtype.name}); cast one explicitly with en.cast")
    check_kind(d, kinds)
    return d


def check_kind(d, kinds):
    if kinds is None:
        return
    ok = (("float" in kinds and d.is_floating) or ("int" in kinds and d.is_integer)
          or ("bool" in kinds and d.is_bool))
    if not ok:
        raise TypeError(f"dtype {d.name} is not supported (needs {'/'.join(kinds)})")


def broadcast_all(inputs):
    shape = inputs[0].shape
    for t in inputs[1:]:
        shape = shapes.broadcast(shape, t.shape)
    return shape


def create(op_type, inputs=(), attrs=None, name=None, control_inputs=()):
    """Create a single-output op in the inputs' graph (or the default graph) and return its tensor."""
    graph = inputs[0].graph if inputs else get_default_graph()
    op = graph.create_op(op_type, inputs, attrs, name=name, control_inputs=control_inputs)
    return op.outputs[0] if op.outputs else op


NUMERIC = ("float", "int")
FLOAT = ("float",)
