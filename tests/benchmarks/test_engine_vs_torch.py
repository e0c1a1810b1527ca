"""Smoke runs of benchmarks/engine_vs_torch.py with --quick (figures here mean nothing; the plumbing does)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.benchmarks.conftest import REPO_ROOT, SCRIPT


def test_engine_side_trains_the_reference_model(engine_api, bench, run_script):
    status, stdout, stderr = run_script("--side", "engine", "--quick", "--workloads", "W1,W2,W3")
    assert status == 0, stderr
    figures = json.loads(stdout.splitlines()[-1])
    assert figures["initial_max_abs_error"] < 1e-4, "engine forward differs from the numpy reference"
    weights, batch = bench.initial_weights(0), bench.workload_data(0).training[0]
    expected_loss = np.mean((bench.reference_forward(weights, batch) - batch.target) ** 2)
    losses = figures["W1"]["losses"]
    assert losses[0] == pytest.approx(expected_loss, rel=1e-4)
    assert len(losses) == 7 and all(np.isfinite(losses))
    assert figures["W1"]["samples_per_s"] > 0 and figures["W2"]["median_s"] > 0 and figures["W3"]["rows_per_s"] > 0
    assert figures["threads"]["NUMBA_NUM_THREADS"] is None or int(figures["threads"]["NUMBA_NUM_THREADS"]) >= 1


def test_engine_only_run_prints_a_json_line_per_workload(engine_api, run_script, json_lines):
    status, stdout, stderr = run_script("--sides", "engine", "--quick", "--json", "--threads", "1",
                                        "--only", "W1,W2,W3,E1")
    assert status == 0, stderr
    records = json_lines(stdout)
    assert [r["id"] for r in records] == ["W1", "W2", "W3", "E1"]
    assert all(r["engine"] > 0 and r["peer"] is None and r["ratio"] is None for r in records[:3])
    e1 = records[3]
    assert e1["peer"] > 0 and 0 < e1["ratio"] == pytest.approx(e1["engine"] / e1["peer"], rel=1e-3)
    assert "NUMBA_NUM_THREADS': '1'" in stderr  # the child's pools were pinned to --threads


def test_profile_shows_where_a_training_step_spends_its_time(engine_api, run_script):
    """The README's W1 breakdown comes from this command: every op of the step, matmuls by name."""
    status, stdout, stderr = run_script("--profile", "--quick", "--threads", "1")
    assert status == 0, stderr
    assert "W1 training step (batch 1,024), threads 1" in stdout
    by_type = stdout[stdout.index("op type"):]
    assert "MatMul" in by_type and "SparseApplyAdam" in by_type and "ApplyAdam" in by_type
    assert "gradients/dense1_MatMul_grad/MatMul" in stdout


@pytest.mark.slow  # a PyTorch run, 17 s: make test stays under 10 min
def test_torch_side_quick_table(run_script):
    pytest.importorskip("torch")
    status, stdout, stderr = run_script("--sides", "torch", "--quick", "--threads", "1", "--only", "W1,W2")
    assert status == 0, stderr
    rows = [line for line in stdout.splitlines() if line.startswith("| W")]
    assert [row.split("|")[1].strip() for row in rows] == ["W1", "W2"]
    assert "'torch_threads': 1" in stdout and "'OMP_NUM_THREADS': '1'" in stdout


def test_unknown_workload_is_a_clear_error(run_script):
    status, _, stderr = run_script("--only", "W1,W7", "--quick")
    assert status == 1 and "unknown id(s) W7" in stderr


@pytest.mark.slow
def test_w4_times_fresh_engine_processes_warm_and_cold(engine_api, run_script, json_lines):
    status, stdout, stderr = run_script("--sides", "engine", "--only", "W4", "--json", timeout=900)
    assert status == 0, stderr
    warm, cold = json_lines(stdout)
    assert (warm["id"], cold["id"]) == ("W4.warm", "W4.cold")
    assert warm["engine"] > 0 and cold["engine"] > 0
    # what the two figures stand for, not their order (one sample each: a loaded machine gave warm 6.5 s, cold 5.8 s):
    # the warm process loaded every kernel from the cache, the cold one compiled each into its empty cache
    assert warm["cache_files_written"] == 0 and cold["cache_files_written"] > 0, (warm, cold)


def test_without_pytorch_the_hint_names_the_engine_alone(engine_api, tmp_path):
    """Without torch the line said '(--sides torch runs the peer alone)': the one side that cannot run. It names
    --sides engine, which can."""
    blocker = tmp_path / "torch"
    blocker.mkdir()
    (blocker / "__init__.py").write_text('raise ModuleNotFoundError("No module named \'torch\'", name="torch")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO_ROOT),
                                                       os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--only", "W1"], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT, env=env)
    assert done.returncode == 3, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert "PyTorch is not installed" in line and "--sides engine runs the engine alone" in line, line
    assert "--sides torch" not in line


@pytest.mark.parametrize("flags, message", [
    (["--timeout", "0"], "--timeout must be more than 0 seconds, got 0"),
    (["--timeout", "-5"], "--timeout must be more than 0 seconds, got -5"),
    (["--seed", "-1"], "--seed must be 0 or more, got -1"),
])
def test_a_timeout_of_no_time_or_a_negative_seed_is_refused_naming_the_flag(bench, flags, message, capsys) -> None:
    """--timeout 0 or -5 started each side and killed it at once: "the engine side failed (W1): exit status -9";
    --seed -1 failed in each side with numpy's "expected non-negative integer", naming no flag."""
    with pytest.raises(SystemExit) as stopped:
        bench.parse_args(flags)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_ctrl_c_stops_the_running_side_and_ends_in_one_line(engine_api) -> None:
    """Ctrl-C (SIGINT to the terminal's process group) printed a traceback, and a side killed by a timeout ran on
    orphaned: now the side's session is killed, one line says so, exit status 130."""
    import signal
    import time

    seed = str(900_000 + os.getpid() % 10_000)  # names this test's side process among others'
    run = subprocess.Popen([sys.executable, str(SCRIPT), "--sides", "engine", "--only", "W1", "--seed", seed],
                           cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))

    def sides() -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    words = cmdline.read().split(b"\0")
            except OSError:
                continue
            if b"--side" in words and seed.encode() in words and words[-2:] != [b"--first-step", b""]:
                found.append(int(entry))
        return found

    deadline = time.monotonic() + 60
    while not sides() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    os.killpg(run.pid, signal.SIGINT)
    _, err = run.communicate(timeout=60)
    time.sleep(0.5)
    left = sides()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert run.returncode == 130, err
    assert err.strip().splitlines() == [
        "engine_vs_torch: interrupted (Ctrl-C); the side that was running was stopped, no figures"]
    assert not left, "the measured side outlived the Ctrl-C"
