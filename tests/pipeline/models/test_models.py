"""The baseline by hand; engine models learn, are seeded and reproducible, and never predict negative sales."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import models
from pipeline.features import CATEGORICAL_FIELDS, FeatureMatrix, FeatureRows, day_number
from pipeline.metrics import nwrmsle


def test_baseline_is_the_weekday_moving_average_by_hand():
    sales = np.zeros((1, 28), np.float32)
    # origin 2017-03-10 (Friday, column 27); target 2017-03-13 (Monday): Mondays are columns 23, 16, 9, 2
    for col, units in ((23, 3.0), (16, 1.0), (9, 7.0), (2, 100.0)):
        sales[0, col] = units
    rows = FeatureRows(sales=sales, promo=np.zeros_like(sales), origin_day=day_number(["2017-03-10"]),
                       horizon=np.array([3]), target_promo=np.zeros(1), holidays=np.zeros((1, 5)), categorical={})
    expected_2w = np.expm1((np.log1p(3.0) + np.log1p(1.0)) / 2)
    expected_3w = np.expm1((np.log1p(3.0) + np.log1p(1.0) + np.log1p(7.0)) / 3)
    assert models.baseline_predict(rows, 2)[0] == pytest.approx(expected_2w, rel=1e-6)
    assert models.baseline_predict(rows, 3)[0] == pytest.approx(expected_3w, rel=1e-6)
    with pytest.raises(ValueError, match="baseline_weeks"):
        models.baseline_predict(rows, 5)


def _problem(n, seed):
    """log1p(units) = 1 + x0 - 0.5 x1 + item effect; the models must find it."""
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n, 3)).astype(np.float32)
    cats = np.ones((n, len(CATEGORICAL_FIELDS)), np.int32)
    cats[:, 1] = rng.integers(1, 6, n)
    effect = np.array([0, 0.0, 0.5, -0.5, 1.0, 0.2])[cats[:, 1]]
    log1p = np.maximum(1 + dense[:, 0] - 0.5 * dense[:, 1] + effect, 0)
    return FeatureMatrix(dense, cats), np.expm1(log1p).astype(np.float32), np.where(cats[:, 1] == 2, 1.25, 1.0)


def _config(kind, matrix):
    mean, std = models.normalization(matrix.dense)
    return models.ModelConfig(kind=kind, dense_size=3, vocab_sizes={f: 6 for f in CATEGORICAL_FIELDS},
                              embedding_dims={f: 2 for f in CATEGORICAL_FIELDS}, hidden_units=(16,),
                              dense_mean=mean, dense_std=std, output_bias=1.0)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_models_learn_a_known_function(kind):
    x, y, w = _problem(4000, 0)
    vx, vy, vw = _problem(1000, 1)
    result = models.train(_config(kind, x), x, y, w, vx, vy, vw, seed=1, epochs=40, patience=40, batch_size=128,
                          learning_rate=0.02)
    best = min(c["validation_nwrmsle"] for c in result.curves)
    constant = nwrmsle(vy, np.full_like(vy, np.expm1(1.0)), vw)
    assert best < 0.2 < 1.0 < constant, (best, constant)  # the target clips at 0, which a linear output cannot
    assert result.curves[result.best_epoch]["validation_nwrmsle"] == best


def test_training_is_seeded_and_reproducible():
    x, y, w = _problem(1000, 0)
    vx, vy, vw = _problem(300, 1)
    runs = [models.train(_config("mlp", x), x, y, w, vx, vy, vw, seed=5, epochs=3, patience=3, batch_size=64,
                         learning_rate=0.01) for _ in range(2)]
    assert runs[0].curves == runs[1].curves
    for name in runs[0].weights:
        np.testing.assert_array_equal(runs[0].weights[name], runs[1].weights[name])
    other = models.train(_config("mlp", x), x, y, w, vx, vy, vw, seed=6, epochs=1, patience=1, batch_size=64,
                         learning_rate=0.01)
    assert other.curves[0] != runs[0].curves[0]


def test_predictions_are_clipped_at_zero(tmp_path):
    from engine import saver

    x, _, _ = _problem(50, 0)
    config = _config("linear", x)
    config.output_bias = -20.0  # the raw output is far below zero
    weights = models.init_weights(config, seed=0)
    models.export_model(config, weights, tmp_path)
    model = saver.import_inference_graph(str(tmp_path))
    feed = {"dense": x.dense, **{f"categorical_{f}": np.ascontiguousarray(x.categorical[:, j])
                                 for j, f in enumerate(CATEGORICAL_FIELDS)}}
    out = model.run(feed)
    assert (out["log1p_sales"] < 0).all() and (out["prediction"] == 0).all()


def test_unknown_model_kind_is_refused():
    with pytest.raises(ValueError, match="train.model"):
        models.ModelConfig(kind="forest", dense_size=1, vocab_sizes={}, embedding_dims={}, hidden_units=())
