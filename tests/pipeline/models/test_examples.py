"""The memory path: history read by row groups and days, examples built and streamed in chunks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import train
from pipeline.examples import ExampleStream, forecasts_at_origin, origin_pairs
from pipeline.features import FeatureSpec, Vocabularies, build_features
from pipeline.history import HistoryError, build_history, load_history, rows_at_origin
from pipeline.model_params import FeatureParams
from pipeline.models import baseline_predict

SPEC = FeatureSpec(history_days=28, mean_windows=(7, 28), dow_weeks=(4,), promo_windows=(14,))


def _write(frame, path, row_group_size=700):
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=row_group_size)
    return path


def _same(a, b):
    for name in ("sales", "promo", "observed", "perishable", "holidays", "store_nbr", "item_nbr"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for table in ("items", "stores"):
        for key, values in getattr(a, table).items():
            assert np.array_equal(values, getattr(b, table)[key]), (table, key)


def test_load_history_by_row_groups_equals_the_in_memory_build(tiny_frame, tmp_path):
    frame = tiny_frame[0]
    path = _write(frame, tmp_path / "train.parquet")
    assert pq.ParquetFile(path).num_row_groups > 5
    full = build_history(frame)
    _same(load_history([path]), full)
    window = load_history([path], days=60)
    assert window.first_day == full.last_day - 59 and window.days == 60
    assert np.array_equal(window.sales, full.sales[:, -60:]) and np.array_equal(window.holidays, full.holidays[:, -60:])
    padded = load_history([path], days=full.days + 30)  # longer than the data: zeros before it
    assert padded.days == full.days + 30 and not padded.observed[:, :30].any()
    assert np.array_equal(padded.sales[:, 30:], full.sales)


def test_load_history_names_the_file_and_row_group_of_a_duplicate(tiny_frame, tmp_path):
    frame = tiny_frame[0]
    path = _write(frame.iloc[np.r_[np.arange(len(frame)), [5]]], tmp_path / "train.parquet")
    with pytest.raises(HistoryError, match=r"train\.parquet \(row group \d+\): duplicate row for store"):
        load_history([path])


def _examples(tiny_frame):
    history = build_history(tiny_frame[0])
    vocab = Vocabularies.fit(history.series_categorical())
    series, origins = origin_pairs(history.sales.shape[0], [60, 90, 120])
    return history, vocab, series, origins


def test_chunked_examples_equal_the_one_matrix_build(tiny_frame):
    history, vocab, series, origins = _examples(tiny_frame)
    built = ExampleStream(history, SPEC, vocab, series, origins, 4, chunk_rows=100).materialize()
    parts = [rows_at_origin(history, o, SPEC.history_days, SPEC.horizon) for o in (60, 90, 120)]
    dense = np.concatenate([build_features(SPEC, vocab, p[0]).dense for p in parts])
    assert np.array_equal(built.matrix.dense, dense)
    assert np.array_equal(built.units, np.concatenate([p[1] for p in parts]))
    assert np.allclose(built.baseline, np.concatenate([baseline_predict(p[0], 4) for p in parts]))
    assert len(built) == ExampleStream(history, SPEC, vocab, series, origins, None).count_rows()


def test_streamed_batches_are_every_example_once_shuffled_and_reproducible(tiny_frame):
    history, vocab, series, origins = _examples(tiny_frame)
    stream = ExampleStream(history, SPEC, vocab, series, origins, None, chunk_rows=300)
    every = stream.materialize()
    batches = list(stream.batches(64, seed=5))
    assert all(len(b["weight"]) == 64 for b in batches[:-1]) and 0 < len(batches[-1]["weight"]) <= 64
    dense = np.concatenate([b["dense"] for b in batches])
    assert dense.shape == every.matrix.dense.shape and not np.array_equal(dense, every.matrix.dense)
    def key(rows):
        return rows[np.lexsort(rows.T[::-1])]

    assert np.array_equal(key(dense), key(every.matrix.dense))
    assert np.allclose(np.sort(np.concatenate([b["log1p"] for b in batches])), np.sort(np.log1p(every.units)))
    again = list(stream.batches(64, seed=5))
    assert all(np.array_equal(a["dense"], b["dense"]) for a, b in zip(batches, again))


def test_more_examples_than_in_memory_stream_with_a_sampled_inner_validation(tiny_frame):
    history = build_history(tiny_frame[0])
    fparams = FeatureParams(SPEC, train_origins=5, origin_stride_days=7, in_memory_examples=2000)
    data = train.prepare_training(history, fparams, 4, seed=1)
    assert not data.in_memory and data.train_examples > 2000
    assert len(data.train) <= 2000 and len(data.inner) <= 2000 // 4
    first = next(iter(data.batch_source(128, seed=1)(0)))
    assert first["dense"].shape == (128, data.train.matrix.dense.shape[1])
    held = train.prepare_training(history, FeatureParams(SPEC, 5, 7, in_memory_examples=10**9), 4, seed=1)
    assert held.in_memory and len(held.train) == data.train_examples
    for prepared in (data, held):  # what a checkpoint's place is counted in (models.CheckpointIdentity)
        assert data.train_examples % 128  # a short last batch: counted
        assert len(list(prepared.batch_source(128, seed=1)(0))) == prepared.batches_per_epoch(128)


def test_window_forecasts_chunk_by_chunk_equal_one_build(tiny_frame):
    history, vocab, _, _ = _examples(tiny_frame)
    origin = history.days - 17
    scored = forecasts_at_origin(history, SPEC, vocab, origin, 16, 4, lambda m: m.dense[:, 0], chunk_rows=50)
    rows, units, _, series = rows_at_origin(history, origin, SPEC.history_days, 16)
    assert np.array_equal(scored["series"], series) and np.array_equal(scored["units"], units)
    assert np.allclose(scored["candidate"], build_features(SPEC, vocab, rows).dense[:, 0])
    assert np.array_equal(scored["day"], rows.origin_day + rows.horizon)
