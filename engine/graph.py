"""Graph, Operation and Tensor: the dataflow graph a Session runs (whitepaper section 2). Every input and control
input of an op exists before the op, so the creation order a Graph keeps is a topological order: executors and
``gradients`` rely on it (no sorting, deterministic).
"""

from __future__ import annotations

import contextlib
import re
import threading

import numpy as np

from engine import dtypes as _dt
from engine import shapes as _sh
from engine.errors import NotFoundError
from engine.registry import get_op_def

GLOBAL_VARIABLES = "variables"
TRAINABLE_VARIABLES = "trainable_variables"

_VALID_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-/]*$")


class _OperatorsMixin:
    """Python operators for Tensor and Variable, building graph ops (NumPy broadcasting). ``==`` and ``!=`` keep
    Python identity (as in TensorFlow 1.x), so tensors can be dict keys; ``en.equal`` compares elementwise."""

    __array_priority__ = 100  # numpy defers to our operators: ndarray + tensor -> tensor

    def __getitem__(self, key):
        raise TypeError("tensor slicing is not supported; use en.gather or en.reshape")

    def __bool__(self):
        raise TypeError("a symbolic tensor has no truth value; run it in a Session or use en.where")

    def __iter__(self):
        raise TypeError("a symbolic tensor is not iterable")

    __hash__ = object.__hash__


_OPERATORS: dict = {}  # name -> constructor; filled by engine/ops/math.py, which builds on this module


def set_operators(**constructors) -> None:
    """Install the op constructors behind Python's operators (graph.py cannot import ops: ops import it)."""
    _OPERATORS.update(constructors)


def _operator(name, reflected=False, unary=False):
    if unary:
        return lambda self: _OPERATORS[name](self)
    if reflected:
        return lambda self, other: _OPERATORS[name](other, self)
    return lambda self, other: _OPERATORS[name](self, other)


for _dunder, _name in (("add", "add"), ("sub", "subtract"), ("mul", "multiply"), ("truediv", "divide"),
                       ("matmul", "matmul"), ("pow", "pow")):
    setattr(_OperatorsMixin, f"__{_dunder}__", _operator(_name))
    setattr(_OperatorsMixin, f"__r{_dunder}__", _operator(_name, reflected=True))
for _dunder, _name in (("gt", "greater"), ("lt", "less"), ("ge", "greater_equal"), ("le", "less_equal")):
    setattr(_OperatorsMixin, f"__{_dunder}__", _operator(_name))
_OperatorsMixin.__neg__ = _operator("negative", unary=True)
_OperatorsMixin.__abs__ = _operator("abs", unary=True)


class Tensor(_OperatorsMixin):
    """One output of an operation: a symbolic handle with dtype and static shape."""

    __slots__ = ("op", "value_index", "dtype", "shape")

    def __init__(self, op: "Operation", value_index: int, dtype: _dt.DType, shape: _sh.Shape):
        self.op = op
        self.value_index = value_index
        self.dtype = dtype
        self.shape = shape

    @property
    def name(self) -> str:
        return f"{self.op.name}:{self.value_index}"

    @property
    def graph(self) -> "Graph":
        return self.op.graph

    @property
    def ndim(self):
        return None if self.shape is None else len(self.shape)

    def __repr__(self) -> str:
        return f"<en.Tensor '{self.name}' shape={self.shape} dtype={self.dtype.name}>"


class Operation:
    """A node: a type from the registry, named inputs/outputs, attributes and control inputs."""

    def __init__(self, graph, op_type, name, inputs, control_inputs, attrs, op_def, output_specs):
        self.graph = graph
        self.type = op_type
        self.name = name
        self.inputs = tuple(inputs)
        self.control_inputs = tuple(control_inputs)
        self.attrs = attrs
        self.op_def = op_def
        self.id = len(graph._ops)
        self.outputs = tuple(Tensor(self, i, d, s) for i, (d, s) in enumerate(output_specs))

    def __repr__(self) -> str:
        return f"<en.Operation '{self.name}' type={self.type}>"


class Graph:
    """A dataflow graph: ops in creation order, unique names, scopes, control deps, collections."""

    def __init__(self):
        self._ops: list[Operation] = []
        self._by_name: dict[str, Operation] = {}
        self._name_counts: dict[str, int] = {}
        self._scope = ""
        self._control_stack: list[list[Operation]] = []
        self._collections: dict[str, list] = {}
        self.seed: int | None = None

    @contextlib.contextmanager
    def as_default(self):
        _stack().append(self)
        try:
            yield self
        finally:
            _stack().pop()

    def unique_name(self, name: str) -> str:
        """``scope/name``, suffixed ``_1``, ``_2`` ... when already taken (TensorFlow's rule); marked as taken."""
        if not _VALID_NAME.fullmatch(name):  # match's $ let a name end in a newline
            raise ValueError(f"invalid op name {name!r}")
        full = f"{self._scope}/{name}" if self._scope else name
        key = full.lower()
        i = self._name_counts.get(key, 0)
        self._name_counts[key] = i + 1
        if i == 0:
            return full
        candidate = key
        while candidate in self._name_counts:
            candidate = f"{key}_{i}"
            i += 1
        self._name_counts[candidate] = 1
        return f"{full}_{i - 1}"

    @contextlib.contextmanager
    def name_scope(self, name: str | None):
        """Prefix op names with ``name/``; re-entering a used scope name gets ``name_1/``."""
        old = self._scope
        if not name:
            self._scope = ""
        elif name.endswith("/"):
            self._scope = name[:-1]
        else:
            self._scope = self.unique_name(name)
        try:
            yield self._scope + "/" if self._scope else ""
        finally:
            self._scope = old

    @contextlib.contextmanager
    def control_dependencies(self, control_inputs):
        """Ops created inside run only after ``control_inputs`` (ops or tensors); None clears."""
        saved = self._control_stack
        ops = [_as_op(c, self) for c in (() if control_inputs is None else control_inputs)]
        self._control_stack = [] if control_inputs is None else saved + [ops]
        try:
            yield
        finally:
            self._control_stack = saved

    def create_op(self, op_type: str, inputs=(), attrs=None, name: str | None = None, control_inputs=(),
                  exact_name: bool = False):
        """Add an op, checked by the registry's rule; ``exact_name``: ``name`` as reserved by ``unique_name``."""
        op_def = get_op_def(op_type)
        attrs = dict(attrs or {})
        inputs = list(inputs)
        for t in inputs:
            if not isinstance(t, Tensor):
                raise TypeError(f"{op_type}: input {t!r} is not a Tensor")
            if t.graph is not self:
                raise ValueError(f"{op_type}: input {t.name!r} is from another graph")
        if exact_name:
            if name in self._by_name:
                raise ValueError(f"an op named {name!r} already exists")
            op_name = name
        else:
            op_name = self.unique_name(name or op_type)
        try:
            specs = op_def.infer(inputs, attrs)
        except (ValueError, TypeError) as e:
            described = ", ".join(f"{t.name} {t.dtype.name} {t.shape}" for t in inputs) or "none"
            raise type(e)(f"{op_type} op '{op_name}': {e} (inputs: {described})") from None
        # the enclosing control_dependencies' ops, then the op's own, each once, in order of appearance
        controls = {id(c): c for group in self._control_stack for c in group}
        for c in control_inputs:
            c = _as_op(c, self, f"{op_type} op '{op_name}': ")
            controls[id(c)] = c
        for _, shape in specs:
            _check_static_shape(shape, f"{op_type} op '{op_name}'")
        op = Operation(self, op_type, op_name, inputs, controls.values(), attrs, op_def, specs)
        self._ops.append(op)
        self._by_name[op_name] = op
        return op

    def get_operations(self) -> list[Operation]:
        return list(self._ops)

    def get_operation_by_name(self, name: str) -> Operation:
        try:
            return self._by_name[name]
        except KeyError:
            raise NotFoundError(f"no operation named {name!r} in the graph") from None

    def get_tensor_by_name(self, name: str) -> Tensor:
        op_name, _, index = name.rpartition(":")
        if not op_name or not index.isdigit():
            raise ValueError(f"tensor names look like 'op:0', got {name!r}")
        op = self.get_operation_by_name(op_name)
        if int(index) >= len(op.outputs):
            raise NotFoundError(f"operation {op_name!r} has no output {index}")
        return op.outputs[int(index)]

    def as_graph_element(self, obj):
        """Resolve a name ("op" or "op:0"), Tensor, Operation or Variable to a graph element."""
        if isinstance(obj, str):
            return self.get_tensor_by_name(obj) if ":" in obj else self.get_operation_by_name(obj)
        return obj

    def add_to_collection(self, key: str, value) -> None:
        self._collections.setdefault(key, []).append(value)

    def get_collection(self, key: str) -> list:
        return list(self._collections.get(key, ()))


def _check_static_shape(shape, owner: str) -> None:
    """ValueError unless ``shape`` is None or dimensions that are None or whole numbers >= 0: a shape is copied into the
    compiled plan's source, and a string "dimension" an imported graph.json gave a Reshape or a Placeholder was Python
    code run when the plan was imported."""
    if shape is None:
        return
    if not isinstance(shape, (tuple, list)) or not all(
            d is None or (isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) and d >= 0)
            for d in shape):
        raise ValueError(f"{owner}: output shape {shape!r} is not a shape (each dimension a whole number >= 0 or "
                         "None)")


def _as_op(x, graph: Graph, owner: str = "") -> Operation:
    """The op of a control input (an op, tensor or variable) of ``graph``'s ops."""
    op = x if isinstance(x, Operation) else getattr(x, "op", None)
    if not isinstance(op, Operation):
        raise TypeError(f"{x!r} is not an operation or tensor")
    if op.graph is not graph:
        raise ValueError(f"{owner}control input {op.name!r} is from another graph")
    return op


_local = threading.local()
_global_default: list[Graph] = [Graph()]


def ops_needed(targets, fed=()) -> set[Operation]:
    """Every op that computing ``targets`` (tensors or ops) runs: data and control edges, stopping at ``fed`` tensors.
    The pruning rule of sessions, the compiler and the exporter alike: an op whose outputs are all fed does not run,
    nor do its ancestors, even reached by a control edge or fetched as an op (as TensorFlow)."""
    fed = set(fed)

    def runs(op: Operation) -> bool:
        return not op.outputs or not all(t in fed for t in op.outputs)

    def inputs(op: Operation) -> list:
        return [t.op for t in op.inputs if t not in fed] + [c for c in op.control_inputs if runs(c)]

    start = [t if isinstance(t, Operation) else t.op for t in targets if isinstance(t, Operation) or t not in fed]
    return reached([op for op in start if runs(op)], inputs)


def reached(start, successors) -> set:
    """Every op reached from the ops ``start`` by ``successors(op)``, the start ops included."""
    seen, stack = set(), list(start)
    while stack:
        op = stack.pop()
        if op not in seen:
            seen.add(op)
            stack.extend(successors(op))
    return seen


def may_alias_storage(t: Tensor, fed) -> bool:
    """Whether ``t``'s value may be session state or constant storage (a view of a variable or a Const):
    sessions and compiled plans hand the caller a copy of such a fetch, so that no caller writes into state."""
    while t not in fed:
        aliases = t.op.op_def.output_aliases
        if aliases == "storage":
            return True
        if aliases != "input" or not t.op.inputs:
            return False
        t = t.op.inputs[0]
    return False


def _stack() -> list[Graph]:
    return _local.__dict__.setdefault("stack", [])


def get_default_graph() -> Graph:
    """The innermost ``graph.as_default()`` graph, else the process-wide default graph."""
    stack = _stack()
    return stack[-1] if stack else _global_default[0]


def reset_default_graph() -> None:
    """Replace the process-wide default graph by an empty one (not inside ``as_default``)."""
    if _stack():
        raise AssertionError("reset_default_graph called inside a graph.as_default() block")
    _global_default[0] = Graph()


def set_random_seed(seed: int) -> None:
    """The graph-level seed of the default graph (``tf.set_random_seed``)."""
    get_default_graph().seed = int(seed)


def name_scope(name: str | None):
    return get_default_graph().name_scope(name)


def control_dependencies(control_inputs):
    return get_default_graph().control_dependencies(control_inputs)


def convert_to_tensor(value, dtype=None, name: str | None = None, graph: Graph | None = None,
                      what: str | None = None) -> Tensor:
    """A Tensor from a Tensor, Variable, IndexedSlices (densified, as TensorFlow) or a Python/NumPy value, which
    becomes a constant of ``graph`` (default: the default graph); another dtype is an error, never silently cast.
    ``what``: who takes the value (``"Add op: operand 1 beside x:0"``), which an error names; else the constant."""
    if dtype is not None:
        dtype = _dt.as_dtype(dtype)
    if isinstance(value, IndexedSlices):
        value = value.dense()
    if isinstance(value, Tensor) or hasattr(value, "_as_tensor"):
        t = value if isinstance(value, Tensor) else value._as_tensor()
        if dtype is not None and t.dtype != dtype:
            got = t.name if t is value else f"variable {t.op.name}"
            raise TypeError(f"{what + ': ' if what else ''}expected a {dtype.name} tensor, got {got} of dtype "
                            f"{t.dtype.name}")
        return t
    return constant_tensor(python_value_to_array(value, dtype, what=what or f"constant {name or 'Const'}"),
                           name or "Const", graph)


def graph_of(*values) -> Graph:
    """The graph of the first tensor-like value (where the others' constants belong), else the default."""
    for v in values:
        if is_tensor_like(v):
            return v.graph
    return get_default_graph()


def constant_tensor(arr: np.ndarray, name: str = "Const", graph=None) -> Tensor:
    """A ``Const`` op holding a read-only copy of ``arr`` (kernels never write inputs: now a hard guarantee)."""
    arr = np.array(arr, copy=True, order="C")
    arr.flags.writeable = False
    return (graph or get_default_graph()).create_op("Const", (), {"value": arr}, name=name).outputs[0]


class UnfitValue(TypeError):
    """A value no array stands for as it is: ragged rows, or masked values (np.asarray would take the data under the
    mask); ``given`` says which, for a feed's error."""

    def __init__(self, message: str, given: str):
        super().__init__(message)
        self.given = given


def is_tensor_like(x) -> bool:
    return isinstance(x, (Tensor, IndexedSlices)) or hasattr(x, "_as_tensor")


def python_value_to_array(value, dtype: _dt.DType | None, what: str = "value") -> np.ndarray:
    """Python/NumPy value as an array of ``dtype``. An array is only widened within its kind (float32 to
    float64, int32 to int64: exact); narrowing or a change of kind (bool or int to a number of another kind)
    is an error naming both dtypes. Python numbers take ``dtype`` when they are exactly representable."""
    if isinstance(value, np.ma.MaskedArray) and np.ma.getmaskarray(value).any():  # asarray drops the mask
        given = (f"a masked array with {int(np.ma.count_masked(value))} masked values (their data would be taken as "
                 "they are: fill them first, value.filled(x))")
        raise UnfitValue(f"{what}: {given}", given)
    if isinstance(value, (np.ndarray, np.generic)):
        arr = np.asarray(value)
        if dtype is None:
            return arr.astype(_dt.as_dtype(arr.dtype).np, copy=False)
        if arr.dtype == dtype.np:
            return arr
        if np.can_cast(arr.dtype, dtype.np, "safe") and arr.dtype.kind.replace("u", "i") == dtype.np.kind:
            return arr.astype(dtype.np)
        raise TypeError(f"{what}: array of dtype {arr.dtype} cannot be used as {dtype.name} without an explicit cast")
    try:
        arr = np.asarray(value)
    except ValueError:  # a ragged nesting (NumPy 2 refuses it)
        raise UnfitValue(f"{what}: {value!r} is ragged (rows of different lengths)",
                         "a ragged value (rows of different lengths)") from None
    if arr.dtype == object:
        raise TypeError(f"{what}: {value!r} is not a rectangular numeric value")
    if arr.dtype.kind not in "fiub":  # a string or complex number is no number of ours, whatever ``dtype``
        raise TypeError(f"{what}: unsupported value {value!r}")
    if dtype is None:
        dtype = {"f": _dt.float32, "b": _dt.bool_}.get(arr.dtype.kind, _dt.int32)
    if dtype.is_bool and arr.dtype.kind != "b":
        raise TypeError(f"{what}: {value!r} is not boolean")
    if dtype.is_integer and arr.dtype.kind == "f" and not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
        raise TypeError(f"{what}: {value!r} is not integral, cannot be {dtype.name}")
    if arr.dtype.kind == "b" and not dtype.is_bool:
        raise TypeError(f"{what}: boolean {value!r} cannot be {dtype.name}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(dtype.np)
    if dtype.is_integer and arr.size:  # never wrapped around (bounds as Python ints: exact for any kind)
        info = np.iinfo(dtype.np)
        overflow = arr.min() < info.min or arr.max() >= info.max + 1
    else:
        overflow = arr.dtype.kind == "f" and bool(np.any(np.isinf(out) & np.isfinite(arr)))
    if overflow:
        raise ValueError(f"{what}: {value!r} is out of the range of {dtype.name}")
    return out


class IndexedSlices:
    """A sparse gradient, ``gather``'s: rows ``indices`` of a tensor of shape ``dense_shape`` hold ``values``, so
    optimizers touch only those rows (``Session.run`` returns it densified)."""

    DENSE_OP = "ScatterAddDense"  # the op that densifies one: dense()'s, and a fetch's by the session's backend

    def __init__(self, values: Tensor, indices: Tensor, dense_shape: Tensor, static_shape=None):
        self.values = values
        self.indices = indices
        self.dense_shape = dense_shape
        self.static_shape = static_shape
        self._dense = None

    def dense(self) -> Tensor:
        """The dense tensor it stands for (one op, made on first use): what any op taking it reads."""
        if self._dense is None:  # shared by every use: none of their control_dependencies blocks' edges
            with self.graph.control_dependencies(None):
                self._dense = self.graph.create_op(self.DENSE_OP, [self.values, self.indices, self.dense_shape],
                                                   {"shape": self.static_shape}).outputs[0]
        return self._dense

    @property
    def dtype(self):
        return self.values.dtype

    @property
    def graph(self):
        return self.values.graph

    def __repr__(self) -> str:
        return f"<en.IndexedSlices values={self.values.name} indices={self.indices.name}>"
