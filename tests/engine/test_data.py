"""engine.data: batching, shuffle buffer and background prefetch."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine import data


def test_batches_cover_every_row_in_order_with_a_short_last_batch():
    x = np.arange(10).reshape(10, 1)
    y = np.arange(10) * 2
    out = list(data.batches((x, y), 4))
    assert [len(b[0]) for b in out] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in out]), x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in out]), y)
    assert all(b[0].flags.c_contiguous for b in out)


def test_batches_drop_remainder_and_dicts_keep_structure():
    out = list(data.batches({"a": np.arange(10), "b": np.arange(10.0)}, 4, drop_remainder=True))
    assert len(out) == 2 and set(out[0]) == {"a", "b"}
    np.testing.assert_array_equal(out[1]["a"], [4, 5, 6, 7])


def test_shuffled_batches_are_a_seeded_permutation_per_epoch():
    x = np.arange(100)
    first = [b[0] for b in data.batches((x, x * 3), 32, shuffle=True, seed=7, epochs=2)]
    again = [b[0] for b in data.batches((x, x * 3), 32, shuffle=True, seed=7, epochs=2)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    epoch1, epoch2 = np.concatenate(first[:4]), np.concatenate(first[4:])
    assert sorted(epoch1) == list(x) and sorted(epoch2) == list(x)
    assert not np.array_equal(epoch1, x) and not np.array_equal(epoch1, epoch2)
    pairs = list(data.batches((x, x * 3), 32, shuffle=True, seed=7))
    assert all(np.array_equal(b[1], b[0] * 3) for b in pairs)  # rows stay aligned


def test_batches_reject_bad_input_with_clear_errors():
    with pytest.raises(ValueError, match="different numbers of rows"):
        list(data.batches({"a": np.zeros(3), "b": np.zeros(4)}, 2))
    with pytest.raises(ValueError, match="batch_size"):
        list(data.batches((np.zeros(3),), 0))
    with pytest.raises(ValueError, match="needs a seed"):
        list(data.batches((np.zeros(3),), 2, shuffle=True))


def test_shuffle_buffer_is_a_seeded_permutation():
    out = list(data.shuffle_buffer(range(50), buffer_size=8, seed=3))
    assert sorted(out) == list(range(50)) and out != list(range(50))
    assert out == list(data.shuffle_buffer(range(50), buffer_size=8, seed=3))


def test_prefetch_yields_everything_in_order_from_another_thread():
    seen_threads = []

    def produce():
        for i in range(20):
            seen_threads.append(threading.current_thread().name)
            yield i

    assert list(data.prefetch(produce(), depth=3)) == list(range(20))
    assert set(seen_threads) == {"engine-prefetch"}


def test_prefetch_reraises_the_producers_error_and_close_stops_it():
    def broken():
        yield 1
        raise RuntimeError("bad row 2")

    it = data.prefetch(broken())
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="bad row 2"):
        next(it)
    endless = data.prefetch(iter(int, 1), depth=2)  # never ends on its own
    assert next(endless) == 0
    endless.close()
    assert not endless._thread.is_alive()


def test_abandoned_or_raised_out_of_prefetch_loops_leave_no_thread():
    """The thread never holds the prefetch object, so dropping it (break, or an error in the loop body)
    lets garbage collection stop the thread, as the docstring promises."""
    import gc
    import itertools
    import time

    def alive():
        return sum(t.name == "engine-prefetch" for t in threading.enumerate())

    before = alive()
    for _ in range(3):
        for _batch in data.prefetch(itertools.count()):
            break
    with pytest.raises(KeyError):
        for _batch in data.prefetch(itertools.count()):
            raise KeyError("in the loop body")
    gc.collect()
    deadline = time.monotonic() + 5
    while alive() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert alive() == before


def test_batches_take_generators_and_whole_sizes_and_shuffle_buffer_needs_a_seed():
    x = np.arange(5)
    got = list(data.batches((a for a in (x, x * 2)), 2))
    assert [b[1].tolist() for b in got] == [[0, 2], [4, 6], [8]]
    for bad in (2.7, 0, True, "2"):
        with pytest.raises(ValueError, match="batch_size must be a whole number"):
            list(data.batches((x,), bad))
        with pytest.raises(ValueError, match="epochs must be a whole number"):  # 2.7 epochs were 2, "2" too
            list(data.batches((x,), 2, epochs=bad))
    assert len(list(data.batches((x,), np.int64(2)))) == 3
    with pytest.raises(ValueError, match="needs a seed"):
        list(data.shuffle_buffer(range(5), 2, seed=None))


def test_one_array_is_batched_by_its_rows_and_the_package_exposes_data():
    import engine as en

    x = np.arange(12.0).reshape(6, 2)  # its 2 columns were taken for 6 "arrays" of 2 rows: one batch of 6 rows
    out = list(en.data.batches(x, 4))
    assert [b.shape for b in out] == [(4, 2), (2, 2)]
    np.testing.assert_array_equal(np.concatenate(out), x)
    shuffled = np.concatenate(list(en.data.batches(x, 4, shuffle=True, seed=1)))
    assert sorted(shuffled[:, 0]) == list(x[:, 0])


def test_collecting_a_prefetch_runs_no_python_code_so_a_ctrl_c_then_is_not_lost():
    """Python runs a signal's handler at the next Python function it enters; in a finalizer, the KeyboardInterrupt it
    raises is printed as 'Exception ignored in: <function prefetch.__del__ …>' and lost. The train stage drops an
    epoch's prefetch as the next epoch starts: a Ctrl-C at that epoch boundary was lost there, and the stage trained
    on to the end (seen in 1 of 2 tries). Dropped, a prefetch must enter no Python function; its thread still stops."""
    import gc
    import sys

    it = data.prefetch(iter(range(10**9)), depth=2)
    assert next(it) == 0
    thread = it._thread
    entered = []

    def profile(frame, event, arg):
        if event == "call":
            entered.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")

    sys.setprofile(profile)
    try:
        del it
    finally:
        sys.setprofile(None)
    assert entered == []
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()
