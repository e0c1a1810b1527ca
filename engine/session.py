"""Session: runs the part of a graph that fetches need (partial execution, whitepaper section 4.2), feeds replacing
any tensor. A run is a flat loop of step closures: the *plan* cached per (fetches, fed tensors) holds each op's kernel,
resolved once, and integer slots for every value; at plan time ``engine/passes`` rewrite the pruned ops and steps
whose kernels can write into ``out`` get buffers kept across runs (liveness). Variables live in ``session.state``
(name -> array); each random op has a NumPy Generator seeded from its (graph seed, op seed).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np

from engine import shapes
from engine.errors import InvalidArgumentError, OpError, op_failed
from engine.graph import (Graph, IndexedSlices, Operation, Tensor, UnfitValue, get_default_graph, is_tensor_like,
                          may_alias_storage, ops_needed, python_value_to_array)
from engine.passes import PASS_NAMES, PlanIR, node_from_op, optimize
from engine.passes.liveness import assign_buffer_groups
from engine.registry import get_op_def

BACKENDS = ("kernels", "reference")


@dataclass(frozen=True)
class SessionConfig:
    """How a Session builds plans: ``optimize=False`` or ``passes`` turn passes off; ``backend="reference"`` runs each
    op's plain-NumPy reference (no fusion, no narrowing, no buffers), independent of Numba: the kernels' yardstick."""

    optimize: bool = True
    passes: frozenset = frozenset(PASS_NAMES)
    reuse_buffers: bool = True
    backend: str = "kernels"

    def __post_init__(self):
        unknown = set(self.passes) - set(PASS_NAMES)
        if unknown:
            raise ValueError(f"SessionConfig.passes: unknown pass(es) {sorted(unknown)}; known: {list(PASS_NAMES)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"SessionConfig.backend: {self.backend!r} is not one of {list(BACKENDS)}")
        object.__setattr__(self, "passes", frozenset(self.passes))

    @property
    def enabled_passes(self) -> frozenset:
        if not self.optimize:
            return frozenset()
        return self.passes - {"fusion", "narrowing"} if self.backend == "reference" else self.passes

    @property
    def buffers(self) -> bool:
        return self.reuse_buffers and self.backend == "kernels"


@dataclass(frozen=True)
class Step:
    """One step of a plan as tools see it: ``kernel(*input values) -> value`` (no kept buffers)."""

    op: Operation  # the op it came from (a fused step: the last op of its chain)
    type: str
    label: str
    kernel: object
    inputs: tuple  # slots read
    output: int  # slot written, -1 for none
    also: tuple = ()  # further slots written (outputs after the first, a fused row sum): the kernel returns a tuple


class Plan:
    """Everything a run of some fetches with some feeds needs, computed once; the public plan API the compiler and
    the profiler read: ``feed_tensors`` (the order of :meth:`run`'s values), ``fetches``, ``steps`` (after rewrites;
    ``runners``: the closures a run executes)."""

    def __init__(self, session, feed_tensors, feed_slots, fetches, build, steps, getters, n_slots, runners, labels,
                 n_buffers, nodes, groups):
        self.session = session
        self.feed_tensors = feed_tensors
        self.feed_slots = feed_slots
        self.fetches = fetches
        self.structure = build
        self.steps = steps
        self.getters = getters
        self.n_slots = n_slots
        self.runners = runners
        self.labels = labels
        self.n_buffers = n_buffers
        self.buffers = [None] * n_buffers
        self.lock = threading.Lock()
        self.nodes = nodes  # the plan's IR after graph rewrites
        self.groups = groups  # node id -> the kept buffer (group) it writes

    def slots(self, feed_values) -> list:
        """A fresh slot list holding the (checked, converted) feed values, in ``feed_tensors`` order."""
        if self.session.closed:
            raise RuntimeError("Attempted to use a closed Session")
        feed_values = list(feed_values)
        if len(feed_values) != len(self.feed_tensors):  # zip would drop extras, or leave a placeholder unfed
            raise TypeError(f"expected {len(self.feed_tensors)} feed values, got {len(feed_values)}")
        vals = [None] * self.n_slots
        for slot, t, v in zip(self.feed_slots, self.feed_tensors, feed_values):
            vals[slot] = feed_value(t, v)
        return vals

    def run(self, feed_values) -> list:
        """The flat fetch values for these feed values (rebuild the fetch structure with :meth:`structure`)."""
        return self.execute(self.slots(feed_values))

    def execute(self, vals) -> list:
        if self.session.closed:
            raise RuntimeError("Attempted to use a closed Session")
        if self.lock.acquire(False):  # one run at a time uses the plan's kept buffers ...
            try:
                self._run_steps(vals, self.buffers)
            finally:
                self.lock.release()
        else:  # ... a concurrent run (threads serving requests) allocates its own
            self._run_steps(vals, [None] * self.n_buffers)
        return [g(vals) for g in self.getters]

    def _run_steps(self, vals, bufs):
        i = 0
        try:
            for run in self.runners:
                run(vals, bufs)
                i += 1
        except OpError:
            raise
        except Exception as e:  # a kernel's own check (shape mismatch, bad index ...)
            raise self.step_error(i, vals, e) from e

    def step_error(self, i: int, vals, e: Exception) -> InvalidArgumentError:
        """The error a run raises when step ``i``'s kernel fails with ``e``: it names the op and its inputs."""
        node = self.nodes[i]
        return op_failed(node.label, node.op.name, e, [(self.labels[j], vals[j]) for j in node.inputs])


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
    if out_kernel:  # no kept buffer: the kernel allocates its output
        fn = partial(fn, None)
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


def _several_outputs_runner(fn, step, group, out_kernel):
    """A closure running a step that writes several slots (a fused row sum's out-kernel, an op of several outputs:
    its kernel returns a tuple)."""
    ins, written = step.inputs, (step.output, *step.also)
    call = fn if out_kernel else (lambda out, *xs: fn(*xs))

    def run(vals, bufs):
        values = call(bufs[group] if group is not None else None, *[vals[j] for j in ins])
        if group is not None:
            bufs[group] = values[0]
        for slot, v in zip(written, values):
            vals[slot] = v

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
    if isinstance(fetches, (list, tuple)):
        builders = [_flatten(f, leaves) for f in fetches]
        kind = type(fetches)
        if isinstance(fetches, tuple) and hasattr(fetches, "_fields"):  # a namedtuple takes its fields one by one
            return lambda results: kind(*[b(results) for b in builders])
        return lambda results: kind(b(results) for b in builders)
    if isinstance(fetches, (set, frozenset)):  # a set was 'unhashable type: set' (the plan key), a frozenset a leaf
        raise TypeError(f"cannot fetch the set {fetches!r}: its order is undefined; use a list or tuple")
    index = len(leaves)
    leaves.append(fetches)
    return lambda results: results[index]


class Session:
    """Runs fetches of one graph; holds its variables' values and random streams."""

    def __init__(self, graph=None, config=None):
        if graph is not None and not isinstance(graph, Graph):  # else every fetch was 'not in this session's graph'
            raise TypeError(f"Session(graph=...) takes an en.Graph, got {type(graph).__name__}"
                            + (" (a SessionConfig goes as config=...)" if isinstance(graph, SessionConfig) else ""))
        self.graph = graph or get_default_graph()
        if config is not None and not isinstance(config, SessionConfig):
            raise TypeError(f"Session(config=...) takes an en.SessionConfig, got {type(config).__name__}")
        self.config = config or SessionConfig()
        self.state: dict[str, np.ndarray] = {}
        self._rngs: dict[str, np.random.Generator] = {}
        self._plans: dict = {}
        self.closed = False

    def __enter__(self):
        self._graph_ctx = self.graph.as_default()
        self._graph_ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._graph_ctx.__exit__(*exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        self._plans.clear()

    def rng(self, op: Operation) -> np.random.Generator:
        """The random stream of a random op, created on first use from its seeds."""
        if op.name not in self._rngs:
            self._rngs[op.name] = np.random.default_rng(list(op.attrs["seed"]))
        return self._rngs[op.name]

    def random_state(self) -> dict:
        """{op name: its stream's bit-generator state} of each random op that has drawn: what a checkpoint keeps so
        that a restored session draws on where the saved one stopped (engine/saver.py)."""
        return {name: rng.bit_generator.state for name, rng in self._rngs.items()}

    def set_random_state(self, states: Mapping) -> None:
        """Move every random op's stream to ``states``' position for it (op name -> a state ``random_state`` gave),
        or to its seed's start where it has none: the generators that plans hold are moved, not replaced."""
        for op in self.graph.get_operations():
            if op.op_def.random:
                fresh = states.get(op.name) or np.random.default_rng(list(op.attrs["seed"])).bit_generator.state
                self.rng(op).bit_generator.state = fresh

    def run(self, fetches, feed_dict=None, options=None, run_metadata=None):
        """Values of ``fetches`` (a tensor, op, name, or nested list/tuple/dict/namedtuple of them; an op's is None),
        ``feed_dict``'s values (keys: tensors or their names) replacing those tensors for this run. TensorFlow's
        ``options``/``run_metadata`` are refused, not ignored: per-op timings are ``engine.profiler.profile``'s."""
        for arg, value in (("options", options), ("run_metadata", run_metadata)):
            if value is not None:
                raise TypeError(f"Session.run: {arg} is not supported (the engine records no RunMetadata); "
                                f"for per-op timings use engine.profiler.profile(sess, fetches, feed_dict)")
        feed_dict = feed_dict or {}
        plan = self.plan(fetches, list(feed_dict))
        return plan.structure(plan.run(list(feed_dict.values())))

    def make_callable(self, fetches, feed_list=None):
        """A function of the ``feed_list`` values returning the fetches: the hot path. A call only checks each feed's
        type, dtype, contiguity and known dimensions (anything else goes through the full conversion and its errors)."""
        plan = self.plan(fetches, feed_list or [])
        feeds = [(slot, t, *spec)
                 for slot, t, spec in zip(plan.feed_slots, plan.feed_tensors, exact_feeds(plan.feed_tensors))]
        n_feeds, n_slots, ndarray, build, execute = len(feeds), plan.n_slots, np.ndarray, plan.structure, plan.execute

        def call(*feed_values):
            if len(feed_values) != n_feeds:
                raise TypeError(f"expected {n_feeds} feed values, got {len(feed_values)}")
            vals = [None] * n_slots
            for (slot, t, dtype, rank, known), v in zip(feeds, feed_values):
                if not (v.__class__ is ndarray and v.dtype == dtype and v.ndim == rank and v.flags.c_contiguous
                        and all(v.shape[i] == d for i, d in known)):
                    v = feed_value(t, v)
                vals[slot] = v
            return build(execute(vals))

        return call

    def plan(self, fetches, feed_list=()) -> Plan:
        """The :class:`Plan` of ``fetches`` (what ``run`` takes) fed ``feed_list`` (tensors or names), built once."""
        feed_tensors = [self._feed_key(k) for k in feed_list]
        leaves: list = []
        build = _flatten(fetches, leaves)
        key = (tuple(leaves), tuple(feed_tensors))
        plan = self._plans.get(key)
        if plan is None:
            twice = sorted({t.name for t in feed_tensors if feed_tensors.count(t) > 1})
            if twice:
                raise ValueError(f"a tensor is fed twice: {', '.join(twice)} (by itself and by its name, or twice "
                                 "in a feed list)")
            plan = self._build_plan(leaves, feed_tensors)
            self._plans[key] = plan
        if plan.structure is not build:  # the same leaves in another structure share the plan's steps
            plan = copy.copy(plan)
            plan.structure = build
        return plan

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

    def _build_plan(self, leaves, feed_tensors) -> Plan:
        resolved = [self._resolve_leaf(x) for x in leaves]
        reference = self.config.backend == "reference"
        fed = set(feed_tensors)
        targets = [t for r in resolved
                   for t in ((r.values, r.indices, r.dense_shape) if isinstance(r, IndexedSlices) else (r,))]

        slots: dict[Tensor, int] = {t: k for k, t in enumerate(feed_tensors)}  # each fed once (Session.plan)
        feed_slots = list(slots.values())
        slot_tensors = {j: t for t, j in slots.items()}
        nodes, node_of = [], {}
        for op in sorted(ops_needed(targets, fed), key=lambda o: o.id):  # creation order is a topological order
            ins = tuple(slots[t] for t in op.inputs)
            written = []  # a slot per output; a fed output of an op run for its others: a slot no one reads
            for t in op.outputs:
                written.append(len(slot_tensors))
                slot_tensors[written[-1]] = t
                slots.setdefault(t, written[-1])
            controls = [node_of[c].id for c in op.control_inputs if c in node_of]
            node = node_from_op(op, ins, written[0] if written else -1, controls, self.config.buffers,
                                reference, tuple(written[1:]))
            node_of[op] = node
            nodes.append(node)

        fetch_slots = {slots[t] for t in targets if isinstance(t, Tensor)}
        fetch_ops = {node_of[t].id for t in targets if isinstance(t, Operation) and t in node_of}
        ir = PlanIR(nodes, feed_slots, fetch_slots, fetch_ops, len(slot_tensors), slot_tensors)
        ir = optimize(ir, self.config.enabled_passes, self)
        groups, n_buffers = assign_buffer_groups(ir) if self.config.buffers else ({}, 0)

        steps, runners = [], []
        for node in ir.nodes:
            fn = node.make_kernel(self)
            plain = (lambda *xs, fn=fn: fn(None, *xs)) if node.out_kernel else fn
            step = Step(node.op, node.type, node.label, plain, tuple(node.inputs), node.output, node.also)
            steps.append(step)
            runners.append(_runner(fn, tuple(node.inputs), node.output, groups.get(node.id), node.out_kernel)
                           if not node.also else _several_outputs_runner(fn, step, groups.get(node.id),
                                                                         node.out_kernel))

        getters = []
        for r in resolved:
            if isinstance(r, Operation):
                getters.append(lambda vals: None)
            elif isinstance(r, IndexedSlices):
                v, i, s = slots[r.values], slots[r.indices], slots[r.dense_shape]
                # densified by the op that densifies one in a graph: its NumPy reference under the reference backend
                # (a Numba kernel densified it there, whatever the backend); its factory reads no attributes
                dense = get_op_def(IndexedSlices.DENSE_OP)
                densify = (dense.reference_kernel if reference else dense.kernel)(None, self)
                getters.append(lambda vals, v=v, i=i, s=s, densify=densify: densify(vals[v], vals[i], vals[s]))
            else:
                j = slots[r]
                if may_alias_storage(r, fed):
                    getters.append(lambda vals, j=j: np.array(vals[j], copy=True))
                else:  # a folded constant is read-only storage of the plan: hand out a copy
                    getters.append(lambda vals, j=j: vals[j] if vals[j].flags.writeable else np.array(vals[j]))
        labels = {j: t.name for j, t in slot_tensors.items()}
        return Plan(self, list(feed_tensors), feed_slots, resolved, None, steps, getters, len(slot_tensors), runners,
                    labels, n_buffers, ir.nodes, groups)


def exact_feeds(tensors) -> list:
    """(dtype, rank or -1, known (axis, size) pairs) of each tensor: what a feed array taken as it is matches."""
    return [(t.dtype.np, -1 if t.shape is None else len(t.shape),
             tuple((i, d) for i, d in enumerate(t.shape or ()) if d is not None)) for t in tensors]


def feed_value(t: Tensor, value) -> np.ndarray:
    """``value`` as a C-contiguous array fit to feed ``t``; InvalidArgumentError naming ``t`` otherwise."""
    if type(value) is np.ndarray and value.dtype == t.dtype.np:  # a subclass (np.matrix) is made an ndarray: its
        arr = value                                                 # operators and Numba's typing are not ndarray's
    else:
        try:
            arr = python_value_to_array(value, t.dtype, what=f"feed for {t.name}")
        except TypeError as exc:
            given = (exc.given if isinstance(exc, UnfitValue)
                     else f"{value!r} (a feed is a value: run the tensor first)" if is_tensor_like(value)
                     else f"value of dtype {np.asarray(value).dtype}")
            raise InvalidArgumentError(
                f"Cannot feed {given} for tensor '{t.name}', which has dtype {t.dtype.name}", t.op.name) from None
    if not shapes.compatible(t.shape, arr.shape):
        raise InvalidArgumentError(
            f"Cannot feed value of shape {arr.shape} for tensor '{t.name}', which has shape {t.shape}", t.op.name)
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)


__all__ = ["BACKENDS", "Plan", "Session", "SessionConfig", "Step", "exact_feeds", "feed_value"]
