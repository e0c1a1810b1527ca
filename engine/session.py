"""Session: runs the part of a graph that fetches need, with feeds replacing any tensor.

Partial execution (whitepaper section 4.2): a run prunes the graph to the ops its fetches
depend on (data and control edges), stopping at fed tensors, whose producers do not run.
The result is an execution *plan* cached per (fetches, fed tensors): the op order, each
op's kernel (resolved once by its factory) and integer slots for every value, so a run is a
flat loop of step closures. At plan time the pruned ops become a small IR that the passes in
``engine/passes`` rewrite (CSE, constant folding, dead-node pruning, elementwise fusion; see
``SessionConfig``), and steps whose kernels can write into ``out`` get buffers kept across
runs, shared by steps whose values are dead (liveness). ``make_callable`` is the hot path.

Variables live in ``session.state`` (name -> array); random ops keep one NumPy Generator
per op in the session, seeded from the op's (graph seed, op seed).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from engine import shapes
from engine.errors import InvalidArgumentError, OpError
from engine.graph import IndexedSlices, Operation, Tensor, get_default_graph, ops_needed, python_value_to_array
from engine.kernels import array as KA
from engine.passes import PASS_NAMES, PlanIR, node_from_op, optimize
from engine.passes.lowering import OUT_KERNELS
from engine.passes.liveness import assign_buffer_groups

# Ops whose output can be the session's own storage (a variable or a constant) or a view of
# their input: a fetched value reached through them is copied so the caller cannot alias state.
_PASS_THROUGH = {"Identity", "Reshape", "ReshapeLike", "StopGradient", "ExpandDims", "Squeeze",
                 "PlaceholderWithDefault", "CheckNumerics"}
_OWNS_STORAGE = {"VariableV2", "Assign", "AssignAdd", "AssignSub", "Const"}


@dataclass(frozen=True)
class SessionConfig:
    """How a Session builds plans: which graph rewrites run and whether buffers are reused.

    ``optimize=False`` turns every pass off (the plan runs the graph's ops as written);
    ``passes`` picks some of ``PASS_NAMES`` ("cse", "constant_folding", "pruning", "fusion").
    """

    optimize: bool = True
    passes: frozenset = frozenset(PASS_NAMES)
    reuse_buffers: bool = True

    def __post_init__(self):
        unknown = set(self.passes) - set(PASS_NAMES)
        if unknown:
            raise ValueError(f"SessionConfig.passes: unknown pass(es) {sorted(unknown)}; known: {list(PASS_NAMES)}")
        object.__setattr__(self, "passes", frozenset(self.passes))

    @property
    def enabled_passes(self) -> frozenset:
        return self.passes if self.optimize else frozenset()


class _Plan:
    """Everything a run needs, computed once per (fetches, feeds).

    ``steps`` / ``step_ops`` are the plain view (``kernel(*inputs) -> value``, input slots,
    output slot) that tools such as the profiler time; ``runners`` are the same steps as
    closures over slots and reused buffers, which is what ``Session`` executes.
    """

    __slots__ = ("feed_tensors", "feed_slots", "steps", "step_ops", "getters", "n_slots", "runners", "labels",
                 "n_buffers", "buffers", "lock", "nodes", "groups")

    def __init__(self, feed_tensors, feed_slots, steps, step_ops, getters, n_slots, runners=None, labels=None,
                 n_buffers=0, nodes=None, groups=None):
        self.feed_tensors = feed_tensors
        self.feed_slots = feed_slots
        self.steps = steps
        self.step_ops = step_ops
        self.getters = getters
        self.n_slots = n_slots
        self.runners = runners
        self.labels = labels
        self.n_buffers = n_buffers
        self.buffers = [None] * n_buffers
        self.lock = threading.Lock()
        self.nodes = nodes
        self.groups = groups or {}  # node id -> index of the kept buffer it writes


def _runner(fn, ins, out, group, out_kernel):
    """A closure running one step on the slot list ``vals`` (and the plan's buffers ``bufs``)."""
    n = len(ins)
    if out_kernel and group is not None:
        if n == 1:
            (a,) = ins

            def run(vals, bufs):
                vals[out] = bufs[group] = fn(bufs[group], vals[a])
        elif n == 2:
            a, b = ins

            def run(vals, bufs):
                vals[out] = bufs[group] = fn(bufs[group], vals[a], vals[b])
        else:
            def run(vals, bufs):
                vals[out] = bufs[group] = fn(bufs[group], *[vals[j] for j in ins])
        return run
    if out_kernel:
        def run(vals, bufs):
            vals[out] = fn(None, *[vals[j] for j in ins])
        return run
    if out < 0:
        def run(vals, bufs):
            fn(*[vals[j] for j in ins])
    elif n == 0:
        def run(vals, bufs):
            vals[out] = fn()
    elif n == 1:
        (a,) = ins

        def run(vals, bufs):
            vals[out] = fn(vals[a])
    elif n == 2:
        a, b = ins

        def run(vals, bufs):
            vals[out] = fn(vals[a], vals[b])
    else:
        def run(vals, bufs):
            vals[out] = fn(*[vals[j] for j in ins])
    return run


def _flatten(fetches, leaves):
    """Collect leaves of a nested fetch structure; return a function rebuilding it from results."""
    if isinstance(fetches, Mapping):
        keys = list(fetches.keys())
        builders = [_flatten(fetches[k], leaves) for k in keys]
        kind = type(fetches)

        def build_map(results):
            items = [(k, b(results)) for k, b in zip(keys, builders)]
            try:
                return kind(items)
            except TypeError:
                return dict(items)

        return build_map
    if isinstance(fetches, tuple) and hasattr(fetches, "_fields"):  # namedtuple
        builders = [_flatten(f, leaves) for f in fetches]
        kind = type(fetches)
        return lambda results: kind(*[b(results) for b in builders])
    if isinstance(fetches, (list, tuple)):
        builders = [_flatten(f, leaves) for f in fetches]
        kind = type(fetches)
        return lambda results: kind(b(results) for b in builders)
    index = len(leaves)
    leaves.append(fetches)
    return lambda results: results[index]


class Session:
    """Runs fetches of one graph; holds its variables' values and random streams."""

    def __init__(self, graph=None, config=None):
        self.graph = graph or get_default_graph()
        if config is None:
            config = SessionConfig()
        elif not isinstance(config, SessionConfig):
            raise TypeError(f"Session(config=...) takes an en.SessionConfig, got {type(config).__name__}")
        self.config = config
        self.state: dict[str, np.ndarray] = {}
        self._rngs: dict[str, np.random.Generator] = {}
        self._plans: dict = {}
        self._closed = False
        self._lock = threading.Lock()

    # --- context management -----------------------------------------------------------------
    def __enter__(self):
        _session_stack().append(self)
        self._graph_ctx = self.graph.as_default()
        self._graph_ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._graph_ctx.__exit__(*exc)
        _session_stack().pop()
        self.close()

    def as_default(self):
        session = self

        class _Ctx:
            def __enter__(self):
                _session_stack().append(session)
                return session

            def __exit__(self, *exc):
                _session_stack().pop()

        return _Ctx()

    def close(self) -> None:
        self._closed = True
        self._plans.clear()

    # --- services kernels use -------------------------------------------------------------------
    def rng(self, op: Operation) -> np.random.Generator:
        """The random stream of a random op, created on first use from its seeds."""
        gen = self._rngs.get(op.name)
        if gen is None:
            gen = np.random.default_rng(list(op.attrs["seed"]))
            self._rngs[op.name] = gen
        return gen

    def _load_variable(self, variable, value) -> None:
        arr = python_value_to_array(value, variable.dtype, what=f"value for variable {variable.op.name}")
        if arr.shape != variable.shape:
            raise InvalidArgumentError(f"value of shape {arr.shape} cannot be loaded into variable "
                                       f"{variable.op.name} of shape {variable.shape}", variable.op.name)
        self.state[variable.op.name] = np.array(arr, copy=True, order="C")

    # --- running ------------------------------------------------------------------------------
    def run(self, fetches, feed_dict=None, options=None, run_metadata=None):
        """Values of ``fetches`` (a tensor, op, name, or nested list/tuple/dict/namedtuple of them).

        Ops fetched return None. ``feed_dict`` maps tensors (or their names) to values that
        replace them for this run.
        """
        leaves = []
        build = _flatten(fetches, leaves)
        feed_dict = feed_dict or {}
        feed_tensors = [self._feed_key(k) for k in feed_dict]
        plan = self._plan(tuple(leaves), feed_tensors)
        values = [self._feed_value(t, v) for t, v in zip(feed_tensors, feed_dict.values())]
        ordered = [values[feed_tensors.index(t)] for t in plan.feed_tensors] if feed_tensors != plan.feed_tensors \
            else values
        results = self._execute(plan, ordered)
        return build(results)

    def make_callable(self, fetches, feed_list=None):
        """A function of the ``feed_list`` values returning the fetches: the hot path.

        The plan is built once; a call only checks each feed's type, dtype, contiguity and known
        dimensions (anything else goes through the full conversion and its clear errors).
        """
        leaves = []
        build = _flatten(fetches, leaves)
        feed_tensors = [self._feed_key(k) for k in (feed_list or [])]
        plan = self._plan(tuple(leaves), feed_tensors)
        slot_of = dict(zip(plan.feed_tensors, plan.feed_slots))
        feeds = [(slot_of[t], t, t.dtype.np, -1 if t.shape is None else len(t.shape),
                  tuple((i, d) for i, d in enumerate(t.shape or ()) if d is not None)) for t in feed_tensors]
        n_feeds, n_slots, ndarray = len(feeds), plan.n_slots, np.ndarray
        feed_value, execute = self._feed_value, self._run_plan

        def call(*feed_values):
            if len(feed_values) != n_feeds:
                raise TypeError(f"expected {n_feeds} feed values, got {len(feed_values)}")
            vals = [None] * n_slots
            for (slot, t, dtype, rank, known), v in zip(feeds, feed_values):
                if not (v.__class__ is ndarray and v.dtype == dtype and v.ndim == rank and v.flags.c_contiguous
                        and all(v.shape[i] == d for i, d in known)):
                    v = feed_value(t, v)
                vals[slot] = v
            return build(execute(plan, vals))

        return call

    def _execute(self, plan: _Plan, feed_values):
        vals = [None] * plan.n_slots
        for slot, v in zip(plan.feed_slots, feed_values):
            vals[slot] = v
        return self._run_plan(plan, vals)

    def _run_plan(self, plan: _Plan, vals):
        if self._closed:
            raise RuntimeError("Attempted to use a closed Session")
        if plan.lock.acquire(False):  # one run at a time uses the plan's kept buffers ...
            try:
                self._run_steps(plan, vals, plan.buffers)
            finally:
                plan.lock.release()
        else:  # ... a concurrent run (threads serving requests) allocates its own
            self._run_steps(plan, vals, [None] * plan.n_buffers)
        return [g(vals) for g in plan.getters]

    @staticmethod
    def _run_steps(plan: _Plan, vals, bufs):
        i = 0
        try:
            for run in plan.runners:
                run(vals, bufs)
                i += 1
        except OpError:
            raise
        except Exception as e:  # a kernel's own check (shape mismatch, bad index ...)
            node = plan.nodes[i]
            names = plan.labels
            described = ", ".join(f"{names[j]} {vals[j].dtype}{tuple(vals[j].shape)}"
                                  for j in node.inputs if vals[j] is not None) or "none"
            raise InvalidArgumentError(f"{node.label} failed: {e} (inputs: {described})", node.op.name) from e

    # --- feeds ---------------------------------------------------------------------------------
    def _feed_key(self, key) -> Tensor:
        if isinstance(key, str):
            key = self.graph.get_tensor_by_name(key if ":" in key else key + ":0")
        elif hasattr(key, "_as_tensor"):
            key = key._as_tensor()
        if not isinstance(key, Tensor):
            raise TypeError(f"cannot feed {key!r}: feed_dict keys must be tensors or tensor names")
        if key.graph is not self.graph:
            raise ValueError(f"cannot feed {key.name}: it is not in this session's graph")
        return key

    @staticmethod
    def _feed_value(t: Tensor, value) -> np.ndarray:
        if isinstance(value, np.ndarray) and value.dtype == t.dtype.np:
            arr = value
        else:
            try:
                arr = python_value_to_array(value, t.dtype, what=f"feed for {t.name}")
            except TypeError:
                got = np.asarray(value).dtype if not isinstance(value, np.ndarray) else value.dtype
                raise InvalidArgumentError(
                    f"Cannot feed value of dtype {got} for tensor '{t.name}', which has dtype {t.dtype.name}",
                    t.op.name) from None
        if not shapes.compatible(t.shape, arr.shape):
            raise InvalidArgumentError(
                f"Cannot feed value of shape {arr.shape} for tensor '{t.name}', which has shape {t.shape}",
                t.op.name)
        return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)

    # --- planning ---------------------------------------------------------------------------------
    def _plan(self, leaves: tuple, feed_tensors: list) -> _Plan:
        key = (leaves, frozenset(feed_tensors))
        plan = self._plans.get(key)
        if plan is None:
            if len(set(feed_tensors)) != len(feed_tensors):
                raise ValueError("a tensor is fed twice")
            plan = self._build_plan(leaves, feed_tensors)
            self._plans[key] = plan
        return plan

    def _resolve_leaf(self, leaf):
        if isinstance(leaf, str):
            leaf = self.graph.as_graph_element(leaf)
        if hasattr(leaf, "_as_tensor"):
            leaf = leaf._as_tensor()
        if isinstance(leaf, (Tensor, Operation, IndexedSlices)):
            if leaf.graph is not self.graph:
                raise ValueError(f"fetch {leaf!r} is not in this session's graph")
            return leaf
        raise TypeError(f"cannot fetch {leaf!r}: fetches must be tensors, ops, variables or their names")

    def _build_plan(self, leaves, feed_tensors) -> _Plan:
        resolved = [self._resolve_leaf(x) for x in leaves]
        fed = set(feed_tensors)
        targets = []
        for r in resolved:
            if isinstance(r, IndexedSlices):
                targets.extend([r.values, r.indices, r.dense_shape])
            else:
                targets.append(r)

        needed = ops_needed(targets, fed)

        slots: dict[Tensor, int] = {}
        feed_slots = []
        for t in feed_tensors:
            slots[t] = len(slots)
            feed_slots.append(slots[t])
        order = sorted(needed, key=lambda o: o.id)  # creation order is a topological order
        nodes, node_of = [], {}
        for op in order:
            if op.type == "Placeholder" and not all(t in fed for t in op.outputs):
                raise InvalidArgumentError(
                    f"You must feed a value for placeholder tensor '{op.name}' with dtype "
                    f"{op.attrs['dtype'].name} and shape {op.attrs['shape']}", op.name)
            ins = tuple(slots[t] for t in op.inputs)
            out = -1
            if op.outputs and op.outputs[0] not in fed:
                out = len(slots)
                slots[op.outputs[0]] = out
            elif op.outputs:
                continue  # its only output is fed: the op does not run
            controls = [node_of[c].id for c in op.control_inputs if c in node_of]
            node = node_from_op(op, ins, out, controls, OUT_KERNELS if self.config.reuse_buffers else {})
            node_of[op] = node
            nodes.append(node)

        fetch_slots = set()
        for t in targets:
            if isinstance(t, Tensor):
                fetch_slots.add(slots[t])
        fetch_ops = {node_of[t].id for t in targets if isinstance(t, Operation) and t in node_of}
        ir = PlanIR(nodes, feed_slots, fetch_slots, fetch_ops, len(slots), {j: t for t, j in slots.items()})
        ir = optimize(ir, self.config.enabled_passes, self)
        groups, n_buffers = assign_buffer_groups(ir) if self.config.reuse_buffers else ({}, 0)

        steps, step_ops, runners = [], [], []
        for node in ir.nodes:
            fn = node.make_kernel(self)
            plain = (lambda *xs, fn=fn: fn(None, *xs)) if node.out_kernel else fn
            steps.append((plain, tuple(node.inputs), node.output))
            step_ops.append(node.op)
            runners.append(_runner(fn, tuple(node.inputs), node.output, groups.get(node.id), node.out_kernel))

        getters = []
        for r in resolved:
            if isinstance(r, Operation):
                getters.append(lambda vals: None)
            elif isinstance(r, IndexedSlices):
                v, i, s = slots[r.values], slots[r.indices], slots[r.dense_shape]
                getters.append(lambda vals, v=v, i=i, s=s: KA.scatter_add_dense(vals[v], vals[i], vals[s]))
            else:
                j = slots[r]
                if self._may_alias_state(r, fed):
                    getters.append(lambda vals, j=j: np.array(vals[j], copy=True))
                else:  # a folded constant is read-only storage of the plan: hand out a copy
                    getters.append(lambda vals, j=j: vals[j] if vals[j].flags.writeable else np.array(vals[j]))
        labels = {j: t.name for t, j in slots.items()}
        return _Plan(list(feed_tensors), feed_slots, steps, step_ops, getters, len(slots), runners, labels,
                     n_buffers, ir.nodes, groups)

    @staticmethod
    def _may_alias_state(t: Tensor, fed) -> bool:
        while t not in fed:
            if t.op.type in _OWNS_STORAGE:
                return True
            if t.op.type not in _PASS_THROUGH or not t.op.inputs:
                return False
            t = t.op.inputs[0]
        return False


_local = threading.local()


def _session_stack():
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def get_default_session() -> Session:
    stack = _session_stack()
    if not stack:
        raise ValueError("no default session: use `with en.Session() as sess:` or pass session=")
    return stack[-1]


