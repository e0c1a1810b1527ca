"""The competition metric against values worked out by hand."""

import math

import numpy as np
import pytest

from pipeline.metrics import MetricInputError, nwrmsle, nwrmsle_by, perishable_weights, rmse


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
