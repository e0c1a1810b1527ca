"""Elementwise fusion: a tree of elementwise ops becomes ONE generated Numba kernel.

A producer joins its consumer's group when only that consumer reads it, it is not fetched, has the group output's
static shape and dtype, and no state-writing node runs in between (variable reads are by reference). The group's
operands ("leaves") must be the output's shape, a fully known suffix of it (a bias row) or a scalar; the fused kernel
checks that at run time, else runs the member ops one by one: results never depend on the pass. A consumer summing
the group's value back to a row (``OpDef.sums_broadcast``: the bias gradient after ``ReluGrad``) joins as a second
output, its rows added in the reduction kernel's order (bit for bit).
"""

from __future__ import annotations

import itertools
import warnings
from functools import partial

import numpy as np

from engine import config
from engine.errors import OpError, op_failed
from engine.kernels import elementwise as EW
from engine.passes.ir import Node, PlanIR


def _static(node):
    t = node.op.outputs[0]
    return t.shape, t.dtype


def _eligible(node) -> bool:
    """A float elementwise op (OpDef.fusible) whose operands all have its output's dtype."""
    if (not node.op_def.fusible or node.output < 0 or node.members or node.out_kernel
            or node.const_value is not None):  # folded: a constant now
        return False
    shape, dtype = _static(node)
    return shape is not None and dtype.is_floating and all(t.dtype == dtype for t in node.op.inputs)


def fuse_elementwise(ir: PlanIR) -> PlanIR:
    users = ir.consumers()
    control_targets = ir.control_targets()
    position = {n.id: i for i, n in enumerate(ir.nodes)}
    # writes_before[i]: state-writing nodes among nodes[:i]
    writes_before = list(itertools.accumulate((n.writes_state for n in ir.nodes), initial=0))
    producer = {n.output: n for n in ir.nodes if n.output >= 0}
    group_of: dict[int, list] = {}  # node id -> member nodes (in order) of the group it roots
    absorbed: set = set()
    for node in ir.nodes:
        if not _eligible(node):
            continue
        members = [node]
        shape, dtype = _static(node)
        for s in dict.fromkeys(node.inputs):
            p = producer.get(s)
            if (p is None or p.id not in group_of or s in ir.fetch_slots or p.id in control_targets
                    or len(users.get(s, ())) != 1 or _static(p) != (shape, dtype)):
                continue
            first = group_of[p.id][0]
            if writes_before[position[node.id]] != writes_before[position[first.id]]:
                continue
            members = group_of.pop(p.id) + members
            absorbed.add(p.id)
        members.sort(key=lambda n: position[n.id])
        group_of[node.id] = members
    fused_at = {}
    produced_at = {n.output: position[n.id] for n in ir.nodes if n.output >= 0}
    for root_id, members in group_of.items():
        root = members[-1]
        summed = next((r for r in users.get(root.output, ()) if _row_sum_joins(r, root, ir, position, writes_before,
                                                                              control_targets, produced_at)), None)
        fused = _fused_node(members, ir, summed)
        if fused is None and summed is not None:
            summed, fused = None, _fused_node(members, ir, None)
        if fused is not None:
            fused_at[root_id] = fused
            if summed is not None:
                absorbed.add(summed.id)
        else:  # not expressible as one kernel: its members stay as they are
            absorbed.difference_update(m.id for m in members)
    ir.nodes = [fused_at.get(node.id, node) for node in ir.nodes if node.id not in absorbed]
    return ir


def _row_sum_joins(r, root, ir, position, writes_before, control_targets, produced_at) -> bool:
    """Whether node ``r`` sums the group's value (``root``'s) to a row and can be computed inside its kernel:
    a plain node, no control edges, its other inputs ready before the group runs, no state write in between."""
    if (not r.op_def.sums_broadcast or r.members or r.output < 0 or r.inputs[0] != root.output or r.controls
            or r.id in control_targets or r.const_value is not None
            or writes_before[position[r.id]] != writes_before[position[root.id]]
            or any(produced_at.get(s, -1) >= position[root.id] for s in r.inputs[1:])):
        return False
    out = ir.slot_tensors[r.output]
    kind, _ = EW.operand_kind(out.shape, _static(root)[0])
    return kind == "row" and out.dtype == _static(root)[1]


def _fused_node(members, ir, summed=None):
    inside = {m.output: j for j, m in enumerate(members)}
    leaves: list[int] = []
    steps = []
    for m in members:
        refs = []
        for s in m.inputs:
            if s in inside and inside[s] < len(steps):
                refs.append(("step", inside[s]))
            else:
                if s not in leaves:
                    leaves.append(s)
                refs.append(("leaf", leaves.index(s)))
        steps.append((m.op_def.scalar, refs))
    last = members[-1]
    out_shape, dtype = _static(last)
    kinds, inner = [], 1
    sum_shape = tuple(ir.slot_tensors[summed.output].shape) if summed is not None else None
    for kind, size in [EW.operand_kind(ir.slot_tensors[s].shape, out_shape) for s in leaves] + (
            [EW.operand_kind(sum_shape, out_shape)] if summed is not None else []):
        if kind is None or (kind == "row" and inner > 1 and size != inner):
            return None
        if kind == "row":
            inner = size
        kinds.append(kind)
    kinds = kinds[:len(leaves)]
    if "full" not in kinds:
        return None
    source = EW.chain_source(steps, kinds, dtype.name, inner, row_sum=summed is not None)
    ops = tuple(m.op for m in members) + ((summed.op,) if summed is not None else ())
    fallback = [(m, refs) for m, (_, refs) in zip(members, steps)]
    ir_shapes = {s: ir.slot_tensors[s].shape for s in leaves}
    extra = list(summed.inputs[1:]) if summed is not None else []  # read only by the unfused path

    def make_kernel(ctx):
        member_kernels = [(m.make_kernel(ctx), refs, m.op) for m, refs in fallback]
        if summed is not None:
            sum_kernel = summed.make_kernel(ctx)
            member_kernels.append((sum_kernel if not summed.out_kernel else partial(sum_kernel, None),
                                   [("step", len(steps) - 1)] + [("leaf", len(leaves) + k) for k in range(len(extra))],
                                   summed.op))
        try:
            module = EW.chain_kernels(source)
        except OSError as error:  # cache dir not writable: run the members, and say why once
            warnings.warn(f"elementwise fusion disabled for {last.op.name}: cannot write the generated kernel "
                          f"under {config.CACHE_DIR} ({error})", RuntimeWarning, stacklevel=2)
            return lambda out, *xs: _run_members(member_kernels, xs, summed is not None)
        return _runner(module, kinds, inner, dtype.np, member_kernels,
                       [tuple(ir_shapes[s]) if ir_shapes[s] is not None else None for s in leaves], sum_shape)

    return Node(last.op, "FusedElementwise", list(leaves) + extra, last.output, make_kernel,
                frozenset().union(*(m.controls for m in members)), out_kernel=True, members=ops,
                also=(summed.output,) if summed is not None else ())


def _run_members(member_kernels, xs, summed=False):
    """The group's ops one by one (what the fused kernel matches); with a row sum: (the chain's value, its sum). A
    member that fails is the op the error names, as with passes off (it named the group's last op, "fused op 'h'
    (Add -> Relu)", for the Add whose inputs did not broadcast)."""
    vals = []
    for kernel, refs, op in member_kernels:
        args = [vals[k] if kind == "step" else xs[k] for kind, k in refs]
        try:
            vals.append(kernel(*args))
        except OpError:
            raise
        except Exception as e:  # noqa: BLE001  (a kernel's own check: its op and inputs named, as session.py does)
            raise op_failed(f"{op.type} op '{op.name}'", op.name, e, zip((t.name for t in op.inputs), args)) from e
    return (vals[-2], vals[-1]) if summed else vals[-1]


def _runner(module, kinds, inner, npdtype, member_kernels, leaf_shapes, sum_shape):
    """The fused step: cheap shape checks, then one kernel call (or the members, if checks fail)."""
    def functions(io=None):  # (serial, parallel, summing), with the output over full leaf ``io`` when given
        suffix = "" if io is None else f"_io{io}"
        return (getattr(module, "serial" + suffix), getattr(module, "parallel" + suffix),
                getattr(module, "serial_sum" + suffix, None))

    serial, parallel, summing = functions()
    over_leaf = {k: functions(k) for k, kind in enumerate(kinds) if kind == "full"}
    full = kinds.index("full")
    other_full = [k for k, kind in enumerate(kinds) if kind == "full" and k != full]
    rows = [(k, leaf_shapes[k], EW.core(leaf_shapes[k])) for k, kind in enumerate(kinds) if kind == "row"]
    if sum_shape is not None:
        rows.append((None, sum_shape, EW.core(sum_shape)))
    scalars = [k for k, kind in enumerate(kinds) if kind == "scalar"]
    threshold = config.PARALLEL_MIN_ELEMENTS
    n_leaves = len(kinds)

    def unfused(xs):
        return _run_members(member_kernels, xs, sum_shape is not None)

    def run(out, *xs):
        x0 = xs[full]
        shape = x0.shape
        if x0.dtype != npdtype:
            return unfused(xs)
        for k in other_full:
            if xs[k].shape != shape:
                return unfused(xs)
        for k, static, core in rows:  # a row leaf's static shape is fully known: it must match exactly
            if ((k is not None and xs[k].shape != static) or len(core) > len(shape)
                    or shape[len(shape) - len(core):] != core):
                return unfused(xs)
        for k in scalars:
            if xs[k].size != 1:
                return unfused(xs)
        n = x0.size
        if n % inner or (summing is not None and shape == sum_shape):
            return unfused(xs)  # (no rows to sum: the ops' own path, where the sum is the value itself)
        if out is None or out.shape != shape:
            out = np.empty(shape, npdtype)
        flat = [x.reshape(-1) for x in xs[:n_leaves]]
        run_serial, run_parallel, run_summing = serial, parallel, summing
        for k, variant in over_leaf.items():
            if xs[k] is out:  # the plan reuses this operand's buffer for the output (passes/liveness.py)
                run_serial, run_parallel, run_summing = variant
                del flat[k]
                break
        if run_summing is not None and n < threshold:
            sums = np.zeros(sum_shape, npdtype)
            if n:
                run_summing(out.reshape(-1), sums.reshape(-1), *flat)
            return out, sums
        if n:
            (run_parallel if n >= threshold else run_serial)(out.reshape(-1), *flat)
        if summing is not None:  # a big one: the chain's parallel kernel, then the sum's own (parallel) kernel
            return out, member_kernels[-1][0](out, *xs[n_leaves:])
        return out

    return run
