"""E1's hand-written step: the same computation as the engine's W1 step (losses agree), or the script stops."""

from __future__ import annotations

import numpy as np
import pytest


def test_the_hand_step_trains_exactly_as_the_engine(bench, hand_step, engine_api) -> None:
    weights, batches = bench.initial_weights(0), bench.workload_data(0).training
    lines = hand_step.check_losses(hand_step.HandStep(weights), bench.build_engine_model(weights), batches)
    assert "largest relative difference" in lines[-1]


def test_the_hand_step_with_every_input_column_trains_the_same(bench, hand_step, engine_api) -> None:
    """--all-input-columns also computes the dense features' gradient columns, which nothing reads."""
    weights, batches = bench.initial_weights(0), bench.workload_data(0).training
    hand = hand_step.HandStep(weights, all_input_columns=True)
    assert hand.gx.shape[1] == bench.CONCAT_WIDTH
    lines = hand_step.check_losses(hand, bench.build_engine_model(weights), batches)
    assert "largest relative difference" in lines[-1]


def test_a_hand_step_that_computes_something_else_is_refused(bench, hand_step, engine_api, monkeypatch) -> None:
    """Leaving the hidden bias's gradient out of the last layer's loop changes the training: caught."""
    weights, batches = bench.initial_weights(0), bench.workload_data(0).training
    hand = hand_step.HandStep(weights)
    head = hand.head

    def head_without_hidden_bias_gradient(h, w, b, y, g, dw, db_hidden, n=0):
        loss, db = head(h, w, b, y, g, dw, db_hidden, n)
        db_hidden[:] = 0
        return loss, db

    monkeypatch.setattr(hand, "head", head_without_hidden_bias_gradient)
    with pytest.raises(SystemExit) as stopped:
        hand_step.check_losses(hand, bench.build_engine_model(weights), batches)
    assert stopped.value.code == hand_step.EXIT_LOSS_MISMATCH


def test_a_quick_run_reports_both_steps_and_their_e1(hand_step, engine_api, capsys) -> None:
    assert hand_step.main(["--quick"]) == 0
    out = capsys.readouterr().out
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("E1 reachable here: hand step") and "engine" in summary
    values = [float(part.split()[0].rstrip(";")) for part in summary.split("-> E1 ")[1:]]
    # a ratio of two timings: only its form is asserted (a busy machine slowed the 1024^3 matmul it divides by,
    # and a quick run under pytest-xdist reported 2.75: timings are BENCHMARKS.md's business, not a unit test's)
    assert len(values) == 2 and all(np.isfinite(v) and v > 0 for v in values)


def test_threads_pin_both_pools_for_both_steps(hand_step, engine_api, capsys) -> None:
    assert hand_step.main(["--quick", "--threads", "1"]) == 0
    threads_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("threads:"))
    assert threads_line == "threads: numpy's BLAS [1], Numba 1"


def test_the_hand_step_on_two_row_blocks_trains_as_the_engine(bench, hand_step, engine_api) -> None:
    """--split 2: each block's gradients summed, the loss's share of each block scaled by the whole batch."""
    weights, batches = bench.initial_weights(0), bench.workload_data(0).training
    split = hand_step.HandStep(weights, split=2)
    assert split.blocks == [(0, bench.TRAIN_BATCH // 2), (bench.TRAIN_BATCH // 2, bench.TRAIN_BATCH)]
    lines = hand_step.check_losses(split, bench.build_engine_model(weights), batches)
    assert "largest relative difference" in lines[-1]


def test_a_failing_row_block_is_raised_in_the_callers_thread(bench, hand_step, engine_api, monkeypatch) -> None:
    weights, batches = bench.initial_weights(0), bench.workload_data(0).training
    split = hand_step.HandStep(weights, split=2)
    rows = split._rows

    def second_block_fails(batch, k):
        if k == 1:
            raise MemoryError("block 1")
        return rows(batch, k)

    monkeypatch.setattr(split, "_rows", second_block_fails)
    with pytest.raises(MemoryError, match="block 1"):
        split(batches[0])


def test_a_quick_split_run_reports_the_third_side(hand_step, engine_api, capsys) -> None:
    assert hand_step.main(["--quick", "--split", "2"]) == 0
    out = capsys.readouterr().out
    assert "  split into 2 row blocks: " in out
    line = next(line for line in out.splitlines() if line.startswith("hand step on 2 row blocks"))
    assert float(line.split("-> E1 ")[1].split()[0]) > 0
    assert out.strip().splitlines()[-1].startswith("E1 reachable here: hand step")  # the summary stays last


@pytest.mark.parametrize("flag, value", [("--rounds", "0"), ("--rounds", "-1"), ("--steps", "0"), ("--steps", "-3"),
                                         ("--threads", "0")])
def test_a_count_below_one_is_refused_naming_the_flag(hand_step, flag, value, capsys) -> None:
    """--rounds 0 ended in a traceback (a median of no rounds), --steps 0 in a ZeroDivisionError, and --steps -3
    printed negative step times and E1 -5926 with exit status 0; refused before any model is built."""
    with pytest.raises(SystemExit) as stopped:
        hand_step.main([flag, value])
    assert stopped.value.code == 2
    assert f"{flag} must be at least 1, got {value}" in capsys.readouterr().err


def test_ctrl_c_ends_in_one_line(engine_api) -> None:
    """A Ctrl-C during the rounds printed a traceback from inside the timed loop."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.benchmarks.conftest import BENCHMARKS_DIR, REPO_ROOT

    run = subprocess.Popen([sys.executable, str(BENCHMARKS_DIR / "e1_hand_step.py"), "--rounds", "50"],
                           cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    deadline = time.monotonic() + 120
    first = run.stdout.readline()  # the first round's line: past the imports, the build and the loss check
    assert first.startswith("round 1/50") and time.monotonic() < deadline, first
    os.killpg(run.pid, signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert err.strip().splitlines() == ["e1_hand_step: interrupted (Ctrl-C); no figures"]
