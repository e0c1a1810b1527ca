"""Per-op profile of a Session run: where the time and the bytes go. ``profile`` runs the steps of the session's plan
itself (``Plan.steps``, ``Plan.runners``), timing each kernel call: exactly what a run does, after graph rewrites and
with the kept buffers (profiling a training step trains, as TensorFlow's profiler does). It prints as tables and
exports as a Chrome trace (``chrome://tracing``, https://ui.perfetto.dev): one event per step per run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np

from engine.errors import OpError
from engine.saver import atomic_write_bytes


@dataclass
class OpStats:
    """One plan step over all profiled runs."""

    name: str
    type: str
    label: str
    calls: int = 0
    total_ns: int = 0
    output_bytes: int = 0  # of the last run
    input_bytes: int = 0  # of the last run


@dataclass
class Profile:
    """Timings of every step of ``runs`` runs; ``events`` are (run, step, start_ns, duration_ns)."""

    ops: list
    runs: int
    wall_ns: int
    events: list = field(default_factory=list)

    @property
    def total_ns(self) -> int:
        return sum(op.total_ns for op in self.ops)

    def by_type(self) -> list:
        """(op type, steps, calls, total_ns, output bytes per run), slowest first."""
        agg: dict = {}
        for op in self.ops:
            steps, calls, total, nbytes = agg.get(op.type, (0, 0, 0, 0))
            agg[op.type] = (steps + 1, calls + op.calls, total + op.total_ns, nbytes + op.output_bytes)
        return sorted(((t, *v) for t, v in agg.items()), key=lambda r: -r[3])

    def table(self, top: int | None = 25) -> str:
        """Plain-text tables: the slowest ops, then every op type (times are per run)."""
        total = self.total_ns or 1
        runs = max(self.runs, 1)
        lines = [f"profile: {len(self.ops)} steps, {self.runs} run(s), {self.total_ns / runs / 1e3:.1f} µs of "
                 f"kernels per run ({self.wall_ns / runs / 1e3:.1f} µs wall)", "",
                 f"{'op':<44} {'type':<18} {'µs/run':>10} {'%':>6} {'out bytes':>12} {'in bytes':>12}"]
        ranked = sorted(self.ops, key=lambda o: -o.total_ns)
        for op in ranked[:top] if top else ranked:
            lines.append(f"{_clip(op.name, 44):<44} {_clip(op.type, 18):<18} {op.total_ns / runs / 1e3:>10.1f} "
                         f"{100 * op.total_ns / total:>6.1f} {op.output_bytes:>12,} {op.input_bytes:>12,}")
        if top and len(ranked) > top:
            lines.append(f"... {len(ranked) - top} more ops")
        lines += ["", f"{'op type':<24} {'steps':>6} {'µs/run':>10} {'%':>6} {'out bytes':>12}"]
        for op_type, steps, _calls, ns, nbytes in self.by_type():
            lines.append(f"{_clip(op_type, 24):<24} {steps:>6} {ns / runs / 1e3:>10.1f} {100 * ns / total:>6.1f} "
                         f"{nbytes:>12,}")
        return "\n".join(lines)

    def chrome_trace(self) -> dict:
        """The trace as a dict in the Trace Event Format (times in µs)."""
        events = [{"name": "process_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "engine session"}}]
        for run, step, start_ns, dur_ns in self.events:
            op = self.ops[step]
            events.append({"name": op.name, "cat": op.type, "ph": "X", "pid": 1, "tid": 1,
                           "ts": start_ns / 1e3, "dur": dur_ns / 1e3,
                           "args": {"run": run, "step": step, "label": op.label, "output_bytes": op.output_bytes,
                                    "input_bytes": op.input_bytes}})
        return {"traceEvents": events, "displayTimeUnit": "ms"}

    def write_chrome_trace(self, path: str) -> str:
        """Write :meth:`chrome_trace` as JSON (atomically); returns ``path``."""
        atomic_write_bytes(str(path), json.dumps(self.chrome_trace()).encode())
        return str(path)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _nbytes(value) -> int:
    if isinstance(value, tuple):  # a step with several outputs
        return sum(_nbytes(v) for v in value)
    return int(value.nbytes) if isinstance(value, np.ndarray) else 0


def profile(sess, fetches, feed_dict=None, runs: int = 10, warmup: int = 1) -> Profile:
    """Run the plan of ``fetches``/``feed_dict`` ``warmup + runs`` times, timing every step after the warm-up."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"profile: runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    feed_dict = feed_dict or {}
    plan = sess.plan(fetches, list(feed_dict))
    feed_values = list(feed_dict.values())
    plan.slots(feed_values)  # converts and checks the feeds once, before any timing
    ops = [OpStats(step.op.name, step.type, step.label) for step in plan.steps]
    result = Profile(ops, runs, 0)
    clock = time.perf_counter_ns
    origin = clock()
    with plan.lock:  # the kept buffers: one run at a time, as Plan.execute
        for run in range(-warmup, runs):
            vals = plan.slots(feed_values)
            begin = clock()
            for step, (plan_step, runner) in enumerate(zip(plan.steps, plan.runners)):
                input_bytes = sum(_nbytes(vals[j]) for j in plan_step.inputs)
                start = clock()
                try:
                    runner(vals, plan.buffers)
                except OpError:
                    raise
                except Exception as e:  # a kernel's own check: the error a run raises, naming the op
                    raise plan.step_error(step, vals, e) from e
                end = clock()
                if run >= 0:
                    stats = ops[step]
                    stats.calls += 1
                    stats.total_ns += end - start
                    written = [s for s in (plan_step.output, *plan_step.also) if s >= 0]
                    stats.output_bytes = sum(_nbytes(vals[s]) for s in written)
                    stats.input_bytes = input_bytes
                    result.events.append((run, step, start - origin, end - start))
            if run >= 0:
                result.wall_ns += clock() - begin
    return result
