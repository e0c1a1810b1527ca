"""benchmarks/common.py: the helpers every benchmark's figures rest on."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time

import pytest


def test_ratio_is_ours_over_peers_and_targets_check_the_right_figure(common):
    faster = common.Result("W1", "training", "samples/s", 300.0, 200.0, common.Target(">=", 1.0))
    assert faster.ratio == pytest.approx(1.5) and faster.met is True
    slower_latency = common.Result("W2", "latency", "s", 2e-5, 4e-5, common.Target("<=", 0.25))
    assert slower_latency.ratio == pytest.approx(0.5) and slower_latency.met is False
    absolute = common.Result("W4.warm", "start", "s", 2.5, 1.0, common.Target("<=", 2.0, applies_to="engine"))
    assert absolute.met is False  # 2.5 s > 2 s, whatever the peer did
    no_peer = common.Result("W1", "training", "samples/s", 300.0, None, common.Target(">=", 1.0))
    assert no_peer.ratio is None and no_peer.met is None


def test_json_lines_have_the_benchmarks_md_fields(common):
    stream = io.StringIO()
    common.write_json_lines([common.Result("W3", "bulk", "rows/s", 1.2e6, 1.0e6, common.Target(">=", 1.0))], stream)
    (record,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert {"id": "W3", "unit": "rows/s", "engine": 1.2e6, "peer": 1.0e6, "met": True}.items() <= record.items()
    assert record["ratio"] == pytest.approx(1.2)


def test_table_lists_every_result_with_its_verdict(common):
    table = common.results_table([
        common.Result("W1", "training", "samples/s", 1.0e5, 2.0e5, common.Target(">=", 1.0)),
        common.Result("W2", "latency", "s", 1e-5, 1e-4, common.Target("<=", 0.25)),
    ])
    lines = table.splitlines()
    assert len(lines) == 4 and "met?" in lines[0]
    assert "NO" in lines[2] and "0.5" in lines[2]
    assert "yes" in lines[3] and "10 µs" in lines[3]


def test_bad_targets_and_ids_are_named(common):
    with pytest.raises(ValueError, match="'>='"):
        common.Target("=>", 1.0)
    with pytest.raises(ValueError, match="W9"):
        common.parse_id_list("W1,W9", ["W1", "W2"])
    assert common.parse_id_list("w2, W1", ["W1", "W2"]) == ["W1", "W2"]


def test_percentile_and_timing_helpers(common):
    assert common.percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert common.percentile([1.0, 2.0, 3.0], 100) == 3.0
    seen = []
    durations = common.time_calls(seen.append, calls=5, warmup=2)
    assert seen == list(range(7)) and len(durations) == 5 and min(durations) >= 0
    assert common.time_loop(lambda k: None, iterations=3) >= 0


def test_thread_env_pins_every_pool(common):
    env = common.thread_env(3, base={"PATH": "/bin"}, NUMBA_CACHE_DIR="/tmp/x")
    assert {var: env[var] for var in common.THREAD_ENV_VARS} == dict.fromkeys(common.THREAD_ENV_VARS, "3")
    assert env["PATH"] == "/bin" and env["NUMBA_CACHE_DIR"] == "/tmp/x"
    with pytest.raises(ValueError, match="threads"):
        common.thread_env(0)


def test_run_child_measures_that_childs_own_peak_memory_and_output(common):
    allocate = ("import json; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
                "print(json.dumps({'ok': 1}))")
    run = common.run_child([sys.executable, "-c", allocate])
    assert run.returncode == 0 and run.last_json_line("child") == {"ok": 1}
    assert run.peak_rss_bytes >= 200 * 2**20
    small = common.run_child([sys.executable, "-c", "import sys; sys.exit(4)"])
    assert small.returncode == 4 and small.peak_rss_bytes < 200 * 2**20
    with pytest.raises(RuntimeError, match="no JSON result"):
        small.last_json_line("child")


def test_a_child_past_its_timeout_is_killed_with_its_launcher_and_the_error_says_so(common):
    """Before, only the launcher was killed: the measured child (here a sleep of 60 s) ran on, orphaned, taking the
    cores from the next side's measurement, and the error read "exit status -9" with nothing about the timeout."""
    sleeper = "import os, time; print(os.getpid(), flush=True); time.sleep(60)"
    run = common.run_child([sys.executable, "-c", sleeper], timeout_s=2)
    child = int(run.stdout.split()[0])
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the measured child outlived its timeout"
    assert run.timeout_s == 2 and run.failure_tail().startswith("ran past its 2 s timeout and was killed")
    assert common.run_child([sys.executable, "-c", "pass"], timeout_s=30).timeout_s is None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_python_speed_is_a_rate_that_falls_when_python_runs_slower(common, monkeypatch):
    fast = common.python_speed(repeats=2)
    assert 0.1 < fast < 10_000  # millions of loop iterations per second
    ticks = iter(range(0, 10**9, 3))  # a clock on which every loop takes 3 s: 0.1 M iterations / 3 s
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(ticks))
    assert common.python_speed(repeats=2) == pytest.approx(0.1 / 3)


def test_available_cores_counts_the_cgroups_cpu_limit(common, tmp_path):
    """The benchmarks' default thread count is the cores this process can use as engine/cores.py counts them (the
    engine's pools and gunicorn's workers take that count): before, the affinity alone, so in a container limited to
    1 CPU the benchmarks ran a thread a core on cores the container could not use. The cgroup is laid out under
    tmp_path in the kernel's formats (as tests/engine/test_cores.py does)."""
    import os

    proc = tmp_path / "proc-self"
    proc.mkdir()
    (proc / "cgroup").write_text("0::/job.service\n", encoding="utf-8")
    (proc / "mountinfo").write_text(f"41 31 0:38 / {tmp_path}/cgroup rw,relatime - cgroup2 cgroup2 rw\n",
                                    encoding="utf-8")
    (tmp_path / "cgroup" / "job.service").mkdir(parents=True)
    (tmp_path / "cgroup" / "job.service" / "cpu.max").write_text("100000 100000\n", encoding="ascii")  # 1 CPU
    assert common.available_cores(str(proc)) == 1
    (tmp_path / "cgroup" / "job.service" / "cpu.max").write_text("max 100000\n", encoding="ascii")  # no limit
    assert common.available_cores(str(proc)) == len(os.sched_getaffinity(0))


def test_counting_cores_loads_neither_the_engine_nor_numpy():
    """A benchmark counts cores for its thread variables before numba and numpy read them (thread_env)."""
    import subprocess
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[2] / "benchmarks"
    done = subprocess.run([sys.executable, "-c", "import sys, common; n = common.available_cores(); print(n, sorted("
                           "m for m in sys.modules if m.split('.')[0] in ('engine', 'numpy', 'numba')))"],
                          cwd=benchmarks, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    count, loaded = done.stdout.split(" ", 1)
    assert int(count) >= 1 and loaded.strip() == "[]"
