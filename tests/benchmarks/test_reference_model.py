"""The reference model both sides train: deterministic, as BENCHMARKS.md sizes it, the same on each side."""

from __future__ import annotations

import numpy as np
import pytest


def test_model_sizes_and_flop_count_follow_benchmarks_md(bench):
    assert bench.CONCAT_WIDTH == 64
    assert bench.layer_shapes() == [(64, 256), (256, 128), (128, 1)]
    assert bench.forward_matmul_flops_per_row() == 2 * (64 * 256 + 256 * 128 + 128 * 1) == 98_560
    assert bench.training_flops_per_row() == 3 * 98_560


def test_weights_and_data_are_deterministic_in_the_seed(bench):
    first, again, other = bench.initial_weights(0), bench.initial_weights(0), bench.initial_weights(1)
    assert first.keys() == again.keys()
    assert all(np.array_equal(first[k], again[k]) and first[k].dtype == np.float32 for k in first)
    assert not np.array_equal(first["dense1_kernel"], other["dense1_kernel"])
    assert first["item_embedding"].shape == (4_100, 32) and first["dense3_bias"].shape == (1,)
    data = bench.workload_data(0)
    assert np.array_equal(data.training[3].item, bench.workload_data(0).training[3].item)
    assert data.training[0].dense.shape == (1_024, 20) and data.bulk.target.shape == (10_000, 1)
    assert len(data.latency_rows) == bench.LATENCY_ROW_POOL and data.latency_rows[0].dense.shape == (1, 20)
    assert data.training[0].item.max() < 4_100 and data.training[0].store.dtype == np.int64


def test_reference_forward_is_the_stated_network(bench):
    weights = bench.initial_weights(0)
    row = bench.workload_data(0).latency_rows[0]
    x = np.concatenate([weights["store_embedding"][row.store[0]], weights["item_embedding"][row.item[0]],
                        weights["family_embedding"][row.family[0]], row.dense[0]])
    h1 = np.maximum(x @ weights["dense1_kernel"] + weights["dense1_bias"], 0)
    h2 = np.maximum(h1 @ weights["dense2_kernel"] + weights["dense2_bias"], 0)
    expected = h2 @ weights["dense3_kernel"] + weights["dense3_bias"]
    np.testing.assert_allclose(bench.reference_forward(weights, row)[0], expected, rtol=1e-5)


@pytest.mark.parametrize("adam", ["fused", "lazy"])
def test_torch_side_computes_the_reference_model(bench, adam):
    pytest.importorskip("torch")
    weights, data = bench.initial_weights(0), bench.workload_data(0)
    model = bench.build_torch_model(weights, threads=1, adam=adam)
    prediction = model.to_numpy(model.predict(model.prepare(data.bulk)))
    np.testing.assert_allclose(prediction, bench.reference_forward(weights, data.bulk), atol=1e-5)
    batch = data.training[0]
    expected_loss = np.mean((bench.reference_forward(weights, batch) - batch.target) ** 2)
    assert model.train_step(batch) == pytest.approx(expected_loss, rel=1e-5)  # loss before the update
    assert model.train_step(batch) < expected_loss  # and the update lowered it


@pytest.mark.parametrize("build", ["layers", "variables"])
def test_engine_side_computes_the_reference_model(engine_api, bench, build):
    weights, data = bench.initial_weights(0), bench.workload_data(0)
    model = bench.build_engine_model(weights, build)
    assert model.notes["build"] == {"layers": "en.layers", "variables": "en.Variable"}[build]
    prediction = model.to_numpy(model.predict(model.prepare(data.bulk)))
    np.testing.assert_allclose(prediction, bench.reference_forward(weights, data.bulk), atol=1e-5)
    batch = data.training[0]
    expected_loss = np.mean((bench.reference_forward(weights, batch) - batch.target) ** 2)
    assert model.train_step(batch) == pytest.approx(expected_loss, rel=1e-5)
    assert model.train_step(batch) < expected_loss
