"""benchmarks/accuracy.py's per-window report: ids, intervals and the table row, from known forecasts."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.model_params import EvaluateParams, SliceBound


@pytest.fixture(scope="module")
def accuracy():
    from tests.benchmarks.conftest import _benchmark_module

    return _benchmark_module("accuracy")


def _window(accuracy, index=2, with_peer=True):
    rng = np.random.default_rng(index)
    series = np.repeat(np.arange(60), 16)
    actual = rng.poisson(4, series.size).astype(float)
    level = np.log1p(actual)
    def noisy(scale: float) -> np.ndarray:
        return np.expm1(np.clip(level + rng.normal(0, scale, series.size), 0, None))

    forecasts = {"baseline": noisy(0.9), "mlp": noisy(0.5), "floor": noisy(0.3)}
    if with_peer:
        forecasts["lightgbm"] = noisy(0.5)
    return accuracy.WindowForecasts(index, 17300, 17315, series, actual, np.ones(series.size), forecasts)


PARAMS = EvaluateParams(backtest_windows=3, min_improvement=0.0, min_series=30, confidence=0.9, bootstrap_resamples=300,
                        max_nwrmsle=None, slice_bound=SliceBound(1.0, 10), plot_rows=10, seed=0)


def test_each_window_reports_the_three_comparisons_with_intervals(accuracy):
    results, row = accuracy.window_results(_window(accuracy), PARAMS)
    assert [r.id for r in results] == ["A1.w2", "A3.w2", "A4.w2"]
    mlp_vs_base = results[0].as_json()
    assert mlp_vs_base["window"] == 2 and mlp_vs_base["first_day"] == "2017-05-14" and mlp_vs_base["rows"] == 960
    assert mlp_vs_base["improvement_low"] < mlp_vs_base["improvement"] < mlp_vs_base["improvement_high"]
    assert mlp_vs_base["improvement_low"] > 0 and mlp_vs_base["ratio"] < 1  # a clearly better forecast
    assert mlp_vs_base["improvement"] == pytest.approx(1 - mlp_vs_base["ratio"], abs=1e-6)
    assert len(row) == len(accuracy.WINDOW_HEADERS) and row[0] == "2" and row[-1].endswith("%")


def test_a_window_without_the_peer_leaves_its_comparison_out(accuracy):
    results, row = accuracy.window_results(_window(accuracy, with_peer=False), PARAMS)
    assert [r.id for r in results] == ["A1.w2", "A4.w2"] and row[5] == "-" and row[8] == "-"
