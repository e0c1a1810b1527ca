"""Shared helpers for Shelfcast's benchmark scripts (benchmarks/*.py).

Why one module: every benchmark must time things the same way, give both
sides the same threads, measure peak memory the same way and print the same
table / JSON lines (BENCHMARKS.md), so that figures from different scripts
can be read together. Nothing here knows about the engine, PyTorch or sales.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import importlib.util
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TextIO

# ---------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------

# Every thread-pool size a numeric Python process may read at start-up:
# Numba's pool, OpenBLAS (numpy), OpenMP (PyTorch, MKL builds) and MKL.
THREAD_ENV_VARS = (
    "NUMBA_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)


def available_cores(proc_self: str = "/proc/self") -> int:
    """The cores this process can use: engine/cores.py's ``usable_cores`` (its affinity, capped by its cgroup's CPU
    limit), the count the engine's pools and gunicorn's workers default to. Before, the affinity alone: in a
    container limited to 2 CPUs on a 16-core host the benchmarks ran 16 threads a side, throttled to 2 cores."""
    return _engine_cores().usable_cores(None, proc_self)


@functools.cache
def _engine_cores():
    """engine/cores.py (standard library only) by its path: importing the engine package would load numba and
    numpy and read the thread variables (engine/config.py) before a benchmark has set them for its sides."""
    spec = importlib.util.spec_from_file_location("shelfcast_engine_cores",
                                                  Path(__file__).resolve().parents[1] / "engine" / "cores.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def thread_env(threads: int, base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """Environment for a child process whose every thread pool has `threads` threads.

    These variables are read once, when numba / numpy's BLAS / torch load, so
    they only work for a process that has not imported them yet: run each
    measured side in a fresh subprocess with this environment.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    env = dict(os.environ if base is None else base)
    for var in THREAD_ENV_VARS:
        env[var] = str(threads)
    env.update(extra)
    return env


def thread_report() -> dict[str, Any]:
    """What the thread pools of this process actually are (to show the pinning worked)."""
    report: dict[str, Any] = {var: os.environ.get(var) for var in THREAD_ENV_VARS}
    try:  # optional: threadpoolctl sees the BLAS/OpenMP pools really loaded
        from threadpoolctl import threadpool_info

        report["pools"] = sorted(
            {f"{p.get('internal_api')}={p.get('num_threads')}" for p in threadpool_info()}
        )
    except ImportError:
        pass
    if "numba" in sys.modules:
        report["numba_threads"] = sys.modules["numba"].config.NUMBA_NUM_THREADS
    if "torch" in sys.modules:
        report["torch_threads"] = sys.modules["torch"].get_num_threads()
    return report


def busy_machine_note(threads: int, runs: str = "thread(s) per side") -> str | None:
    """A warning when other work already keeps cores busy: timings taken now are unreliable.

    Both sides' thread pools assume `threads` free cores; with fewer, OpenMP
    barriers and BLAS threads wait on descheduled peers and figures can be
    off by an order of magnitude (seen on this 2-core machine). ``runs``: what those threads are.
    """
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    free = available_cores() - load
    if free >= threads - 0.25:
        return None
    return (f"WARNING: load average {load:.2f} on {available_cores()} cores before the run; "
            f"{threads} {runs} will compete with other work, so these figures are unreliable")


def python_speed(repeats: int = 5) -> float:
    """Millions of iterations per second of a fixed pure-Python loop (dict lookups, string and float work):
    how fast this machine runs interpreted Python right now.

    The shared machines run the same code 20-30 % faster in some hours than in others; a latency
    figure (S1) is only comparable with another taken at a similar reading of this probe."""
    table = {f"k{i}": float(i) for i in range(64)}
    keys = list(table)

    def loop() -> float:
        total = 0.0
        for i in range(100_000):
            total += table[keys[i & 63]] * 0.5 + len(keys[i & 7])
        return total

    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        loop()
        best = min(best, time.perf_counter() - start)
    return 0.1 / best


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def gc_paused():
    """Collect once, then keep the garbage collector out of a timed region (as timeit does)."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def time_loop(step: Callable[[int], Any], iterations: int, warmup: int = 0) -> float:
    """Seconds for `iterations` calls of step(k) after `warmup` untimed calls.

    step receives the call's index (warm-up calls first), so a caller can
    cycle through inputs or record results.
    """
    for k in range(warmup):
        step(k)
    with gc_paused():
        start = time.perf_counter()
        for k in range(warmup, warmup + iterations):
            step(k)
        return time.perf_counter() - start


def time_calls(call: Callable[[int], Any], calls: int, warmup: int = 0) -> list[float]:
    """Seconds of each of `calls` calls of call(k) after `warmup` untimed calls (for latency)."""
    for k in range(warmup):
        call(k)
    durations = [0.0] * calls
    clock = time.perf_counter
    with gc_paused():
        for n in range(calls):
            start = clock()
            call(warmup + n)
            durations[n] = clock() - start
    return durations


def percentile(values: Sequence[float], q: float) -> float:
    """q-th percentile (0..100), linear interpolation; clear error on empty input."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def refuse_counts_below_one(parser: Any, counts: Iterable[tuple[str, int]]) -> None:
    """A usage error (exit 2) naming the first flag of ``counts`` (flag, value) below 1: a count of 0 or less measured
    nothing (a median of no rounds, a percentile of no latencies, a division by zero, a negative E1)."""
    for flag, value in counts:
        if value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")


# ---------------------------------------------------------------------------
# Memory and child processes
# ---------------------------------------------------------------------------


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kib) * (1 if sys.platform == "darwin" else 1024)


@dataclasses.dataclass
class ChildRun:
    """What a measured child process did: exit status, wall time, its own peak RSS, output."""

    returncode: int
    wall_s: float
    peak_rss_bytes: int
    stdout: str
    stderr: str
    started_at: float  # time.time() just before the child was started
    timeout_s: float | None = None  # set when the child ran past run_child's timeout and was killed

    def last_json_line(self, what: str) -> dict[str, Any]:
        """The child's result: the last stdout line that is a JSON object."""
        for line in reversed(self.stdout.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"{what}: no JSON result on stdout.\n{self.failure_tail()}")

    def failure_tail(self, lines: int = 25) -> str:
        tail = "\n".join(self.stderr.splitlines()[-lines:])
        killed = f"ran past its {self.timeout_s:g} s timeout and was killed; " if self.timeout_s is not None else ""
        return f"{killed}exit status {self.returncode}; last stderr lines:\n{tail}"


# A fork copies the parent's resident pages into the child's high-water mark, and Linux keeps
# that mark across exec: measured directly, a child of a big parent (pytest, a benchmark driver)
# would inherit the parent's size. So a small launcher process forks the real child and reports
# that grandchild's own peak through os.wait4.
_LAUNCHER = (
    "import json, os, subprocess, sys\n"
    "proc = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(proc.pid, 0)\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    json.dump({'status': os.waitstatus_to_exitcode(status), 'maxrss': usage.ru_maxrss}, f)\n"
)


def run_child(
    cmd: Sequence[str],
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout_s: float | None = None,
) -> ChildRun:
    """Run cmd to completion; measure its wall time and the peak RSS of that child alone.

    Output goes through temporary files, so a chatty child cannot block on a full pipe. The launcher and the
    child run in a session of their own: past ``timeout_s`` (or on Ctrl-C in the caller) the whole session is
    killed. Before, only the launcher was: the measured child ran on, orphaned, taking the cores from the next
    side's measurement, and the error said "exit status -9" without naming the timeout.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("r", suffix=".json") as report:
        started_at = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, report.name, *cmd],
                                stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True)
        timed_out = None
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = timeout_s
        finally:
            if proc.poll() is None or timed_out is not None:  # a timeout, or Ctrl-C / an error in this process
                _kill_session(proc)
        wall = time.perf_counter() - start
        measured = json.loads(report.read() or '{"status": -9, "maxrss": 0}')
        out.seek(0)
        err.seek(0)
        return ChildRun(
            returncode=measured["status"],
            wall_s=wall,
            peak_rss_bytes=int(measured["maxrss"]) * (1 if sys.platform == "darwin" else 1024),
            stdout=out.read(),
            stderr=err.read(),
            started_at=started_at,
            timeout_s=timed_out,
        )


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher's session (the launcher and the measured child with it), then reap the launcher."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# ---------------------------------------------------------------------------
# Results: targets, the human table, JSON lines
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    """A BENCHMARKS.md target: `op` is ">=" or "<=", checked on the ratio or on our own figure."""

    op: str
    value: float
    applies_to: str = "ratio"  # "ratio" | "engine"

    def __post_init__(self):
        if self.op not in (">=", "<="):
            raise ValueError(f"target op must be '>=' or '<=', got {self.op!r}")
        if self.applies_to not in ("ratio", "engine"):
            raise ValueError(f"target applies_to must be 'ratio' or 'engine', got {self.applies_to!r}")

    def met(self, figure: float | None) -> bool | None:
        if figure is None or not math.isfinite(figure):
            return None
        return figure >= self.value if self.op == ">=" else figure <= self.value

    def describe(self, unit: str = "") -> str:
        subject = "ratio" if self.applies_to == "ratio" else "ours"
        suffix = f" {unit}" if self.applies_to == "engine" and unit else ""
        return f"{subject} {self.op} {self.value:g}{suffix}"


@dataclasses.dataclass
class Result:
    """One workload's figures: ours ('engine'), the peer's, their ratio (ours ÷ peer's)."""

    id: str
    workload: str
    unit: str
    engine: float | None
    peer: float | None
    target: Target | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.engine is None or self.peer is None or self.peer == 0:
            return None
        return self.engine / self.peer

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        figure = self.ratio if self.target.applies_to == "ratio" else self.engine
        return self.target.met(figure)

    def as_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": self.id,
            "ratio": _rounded(self.ratio),
            "engine": _rounded(self.engine),
            "peer": _rounded(self.peer),
            "unit": self.unit,
            "workload": self.workload,
        }
        if self.target is not None:
            record["target"] = self.target.describe(self.unit)
            record["met"] = self.met
        record.update(self.extra)
        return record


def _rounded(value: float | None, digits: int = 6) -> float | None:
    if value is None:
        return None
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")


def format_quantity(value: float | None, unit: str = "") -> str:
    """Short human form: 3 significant digits, SI prefixes for big numbers, µs/ms for small seconds."""
    if value is None:
        return "—"
    if unit == "s" and abs(value) < 1:
        if abs(value) < 1e-3:
            return f"{value * 1e6:.3g} µs"
        return f"{value * 1e3:.3g} ms"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table that reads in a terminal and pastes into Markdown."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def results_table(results: Sequence[Result], peer_name: str = "peer") -> str:
    """The benchmark table of BENCHMARKS.md: workload, ours, peer's, ratio, target, met?"""
    headers = ["id", "workload", "engine", peer_name, "ratio", "target", "met?"]
    rows = []
    for r in results:
        met = {True: "yes", False: "NO", None: "—"}[r.met]
        ratio = "—" if r.ratio is None else f"{r.ratio:.3g}"
        target = r.target.describe(r.unit) if r.target else "—"
        rows.append([r.id, r.workload, format_quantity(r.engine, r.unit),
                     format_quantity(r.peer, r.unit), ratio, target, met])
    return format_table(headers, rows)


def write_json_lines(results: Iterable[Result], stream: TextIO = sys.stdout) -> None:
    """One JSON object per workload per line (BENCHMARKS.md's machine-readable form)."""
    for r in results:
        stream.write(json.dumps(r.as_json(), ensure_ascii=False) + "\n")
    stream.flush()


def parse_id_list(text: str | None, known: Sequence[str], what: str = "--only") -> list[str]:
    """'W1,w3' -> ['W1', 'W3'] in `known` order; a clear error names any unknown id."""
    if not text:
        return list(known)
    wanted = [part.strip().upper() for part in text.split(",") if part.strip()]
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise ValueError(f"{what}: unknown id(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [k for k in known if k in wanted]
