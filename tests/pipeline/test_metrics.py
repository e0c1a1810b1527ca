"""The competition metric against values worked out by hand."""

import math

import numpy as np
import pytest

from pipeline.metrics import MetricInputError, improvement_interval, nwrmsle, nwrmsle_by, perishable_weights, rmse


def test_nwrmsle_matches_hand_computation():
    actual = [0.0, 3.0, 10.0]
    predicted = [1.0, 3.0, 4.0]
    weights = perishable_weights([True, False, False])  # 1.25, 1, 1
    by_hand = math.sqrt((1.25 * math.log(2) ** 2 + 0 + (math.log(5) - math.log(11)) ** 2) / 3.25)
    assert nwrmsle(actual, predicted, weights) == pytest.approx(by_hand, rel=1e-12)


def test_nwrmsle_perfect_forecast_is_zero_and_unweighted_default():
    assert nwrmsle([0, 1, 2], [0, 1, 2]) == 0.0
    assert nwrmsle([0.0], [math.e - 1]) == pytest.approx(1.0)


def test_perishable_weight_changes_the_score():
    actual, predicted = [0.0, 0.0], [1.0, 0.0]
    unweighted = nwrmsle(actual, predicted)
    weighted = nwrmsle(actual, predicted, perishable_weights([1, 0]))
    assert weighted > unweighted
    assert weighted == pytest.approx(math.sqrt(1.25 * math.log(2) ** 2 / 2.25))


def test_rmse_in_units():
    assert rmse([1, 2, 3], [1, 2, 6]) == pytest.approx(math.sqrt(3.0))


@pytest.mark.parametrize(
    "actual, predicted, message",
    [
        ([1.0, 2.0], [1.0, -0.5], "predicted: 1 negative value(s), first at row 1"),
        ([-1.0, 2.0], [1.0, 0.5], "actual: 1 negative value(s), first at row 0"),
        ([1.0, 2.0], [1.0, float("nan")], "predicted: 1 non-finite"),
        ([1.0, 2.0], [1.0], "actual has 2 rows but predicted has 1"),
        ([], [], "no rows"),
    ],
)
def test_bad_inputs_are_rejected_with_the_reason(actual, predicted, message):
    with pytest.raises(MetricInputError) as error:
        nwrmsle(actual, predicted)
    assert message in str(error.value)


def test_slices_agree_with_the_metric_on_each_slice():
    rng = np.random.default_rng(0)
    actual = rng.poisson(3, 300).astype(float)
    predicted = rng.gamma(2.0, 1.5, 300)
    weights = perishable_weights(rng.integers(0, 2, 300))
    family = rng.choice(["DAIRY", "BREAD/BAKERY", "GROCERY I"], 300)
    slices = nwrmsle_by(family, actual, predicted, weights)
    assert set(slices) == {"DAIRY", "BREAD/BAKERY", "GROCERY I"}
    for name, score in slices.items():
        rows = family == name
        assert score == pytest.approx(nwrmsle(actual[rows], predicted[rows], weights[rows]))


def _series_data(n_series=40, rows_per_series=16, seed=0, gain=0.3):
    """Rows grouped in series; per series, the candidate's log error is the baseline's shrunk by a gain that
    varies around ``gain`` (plus row noise): the candidate helps some series a lot, others not at all."""
    rng = np.random.default_rng(seed)
    series = np.repeat(np.arange(n_series), rows_per_series)
    actual = rng.poisson(5, series.size).astype(float)
    series_bias = rng.normal(0, 0.8, n_series)[series]  # errors shared by all rows of a series
    series_gain = np.clip(rng.normal(gain, 0.5, n_series), -0.5, 1.0)[series]
    baseline = np.expm1(np.log1p(actual) + series_bias + rng.normal(0, 0.2, series.size))
    candidate = np.expm1(np.log1p(actual) + (1 - series_gain) * series_bias + rng.normal(0, 0.2, series.size))
    return series, actual, np.maximum(candidate, 0), np.maximum(baseline, 0)


def test_improvement_interval_estimate_is_the_metric_ratio_and_is_reproducible():
    series, actual, candidate, baseline = _series_data()
    weights = perishable_weights(series % 3 == 0)
    interval = improvement_interval(series, actual, candidate, baseline, weights, confidence=0.9, resamples=500, seed=4)
    relative = nwrmsle(actual, candidate, weights) / nwrmsle(actual, baseline, weights)
    assert interval.estimate == pytest.approx(1 - relative)
    assert interval.low < interval.estimate < interval.high
    assert interval.series == 40 and interval.resamples == 500 and interval.confidence == 0.9
    again = improvement_interval(series, actual, candidate, baseline, weights, confidence=0.9, resamples=500, seed=4)
    assert again == interval


def test_a_candidate_equal_to_the_baseline_has_a_zero_width_interval_at_zero():
    series, actual, _, baseline = _series_data()
    interval = improvement_interval(series, actual, baseline, baseline, resamples=200)
    assert interval.estimate == interval.low == interval.high == 0.0  # paired: every resample cancels exactly


def test_the_bootstrap_resamples_series_not_rows():
    """Errors shared within a series make the evidence as large as the number of series, not of rows:
    the same rows read as one-row series give a much narrower (overconfident) interval."""
    series, actual, candidate, baseline = _series_data(n_series=12, rows_per_series=40, gain=0.2)
    by_series = improvement_interval(series, actual, candidate, baseline, resamples=1000)
    by_row = improvement_interval(np.arange(series.size), actual, candidate, baseline, resamples=1000)
    assert by_row.estimate == pytest.approx(by_series.estimate)
    assert (by_series.high - by_series.low) > 2 * (by_row.high - by_row.low)


def test_more_series_narrow_the_interval_and_a_real_gain_clears_zero():
    small = improvement_interval(*_series_data(n_series=10, seed=1), resamples=1000)
    large = improvement_interval(*_series_data(n_series=400, seed=1), resamples=1000)
    assert (large.high - large.low) < (small.high - small.low) / 3
    assert large.low > 0.05


@pytest.mark.parametrize("kwargs, message", [
    ({"confidence": 1.0}, "confidence: must lie strictly between 0 and 1"),
    ({"resamples": 0}, "resamples: must be at least 1"),
])
def test_improvement_interval_rejects_bad_settings(kwargs, message):
    with pytest.raises(MetricInputError, match=message):
        improvement_interval([1, 2], [1.0, 2.0], [1.0, 2.0], [2.0, 3.0], **kwargs)


def test_improvement_interval_rejects_misaligned_series_and_a_perfect_baseline():
    with pytest.raises(MetricInputError, match="series has 1 rows but actual has 2"):
        improvement_interval([1], [1.0, 2.0], [1.0, 2.0], [2.0, 3.0])
    with pytest.raises(MetricInputError, match="perfect forecast"):
        improvement_interval([1, 2], [1.0, 2.0], [1.5, 2.0], [1.0, 2.0])
