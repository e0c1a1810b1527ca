"""The hand-written p-values and PSI against textbook values (scipy is not a dependency)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitoring.statistics import (
    bin_counts,
    categorical_shift,
    chi_square_p_value,
    kolmogorov_p_value,
    numeric_shift,
    population_stability_index,
)


@pytest.mark.parametrize("statistic, dof, expected", [
    (3.841458820694124, 1, 0.05), (6.6348966010212145, 1, 0.01), (18.307038053275146, 10, 0.05),
    (0.5, 3, 0.9188914117), (124.3421134, 100, 0.05), (1.0, 2, math.exp(-0.5)),
])
def test_chi_square_p_value_matches_tables(statistic, dof, expected):
    assert chi_square_p_value(statistic, dof) == pytest.approx(expected, rel=1e-6)


def test_kolmogorov_p_value_matches_the_asymptotic_critical_values():
    n = m = 10**8  # effectively the asymptotic distribution: D * sqrt(n m / (n + m)) = lambda
    scale = math.sqrt(n * m / (n + m))
    assert kolmogorov_p_value(1.3580986393225505 / scale, n, m) == pytest.approx(0.05, rel=1e-3)
    assert kolmogorov_p_value(1.6276236115189502 / scale, n, m) == pytest.approx(0.01, rel=1e-3)
    assert kolmogorov_p_value(0.0, 100, 100) == 1.0


def test_psi_is_zero_for_equal_shares_and_grows_with_the_shift():
    base = np.asarray([0.25, 0.25, 0.25, 0.25])
    assert population_stability_index(base, base) == 0.0
    small = population_stability_index(np.asarray([0.3, 0.25, 0.25, 0.2]), base)
    large = population_stability_index(np.asarray([0.7, 0.1, 0.1, 0.1]), base)
    assert 0 < small < 0.1 < large


def test_values_outside_the_training_range_fall_in_the_outer_bins():
    assert bin_counts([-5.0, 0.0, 0.5, 0.99, 1.0, 7.0], [0.0, 0.5, 1.0]).tolist() == [2, 4]


def test_numeric_shift_detects_a_moved_distribution():
    rng = np.random.default_rng(0)
    train = rng.normal(size=20_000)
    counts, edges = np.histogram(train, bins=20)
    reference = {"histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}
    same = numeric_shift(rng.normal(size=2_000), reference)
    moved = numeric_shift(rng.normal(loc=1.0, size=2_000), reference)
    assert same.psi < 0.05 and same.p_value > 0.01
    assert moved.psi > 0.25 and moved.p_value < 1e-10


# The promotion flag's served reference of the single_store foreign shape (tests/pipeline/foreign_data.py): 52,313
# rows, 6.5 % promoted, on drift_stats' 20 even bins over [0, 1]: every row in the first or the last bin.
FLAG_REFERENCE = {"histogram": {"edges": np.linspace(0.0, 1.0, 21).tolist(), "counts": [48_887] + [0] * 18 + [3_426]}}


def test_a_flag_is_tested_by_its_shares_not_by_kolmogorovs_continuous_p_value():
    """A client that flags no promotion: 1,500 requests, 297 distinct observations (a series' flag repeated over its
    days counts once), none promoted, where the reference has 6.5 %. Kolmogorov's p-value, a continuous variable's,
    said 0.15 (the report: "cannot tell it from chance"), while 0 of 297 at 6.5 % has a chance of 0.935^297 = 2e-9."""
    test = numeric_shift(np.zeros(1_500), FLAG_REFERENCE, effective=297)
    assert test.psi > 0.25 and test.p_value < 1e-5, test.p_value
    assert test.test == "proportions"
    from monitoring.statistics import two_proportion_test

    z, p_value = two_proportion_test(0.0, 297, 3_426 / 52_313, 52_313)  # the 2x2 chi-square's square root
    assert (test.statistic, test.p_value) == (z, p_value)
    assert two_proportion_test(0.3, 100, 0.3, 1_000) == (0.0, 1.0)
    assert two_proportion_test(0.0, 100, 0.0, 1_000) == (0.0, 1.0)  # both all one value: nothing moved
    assert two_proportion_test(0.5, 10**8, 0.5 + 1.959963984540054 * math.sqrt(0.25 * 2e-8), 10**8)[1] == \
        pytest.approx(0.05, rel=1e-3)


def test_a_flags_p_value_is_a_p_value_when_nothing_moved():
    """Drawn at the reference's own share, 300 flags at a time, its p-value falls below 0.01 about 1 % of the time (not
    a test that alarms on chance), and a continuous feature keeps its KS test."""
    rng = np.random.default_rng(0)
    share = 3_426 / 52_313
    p_values = np.asarray([numeric_shift((rng.random(300) < share).astype(float), FLAG_REFERENCE).p_value
                           for _ in range(4_000)])
    assert 0.002 < np.mean(p_values < 0.01) < 0.02, np.mean(p_values < 0.01)
    continuous = {"histogram": {"edges": np.linspace(0.0, 1.0, 21).tolist(), "counts": [100] * 20}}
    assert numeric_shift(rng.random(300), continuous).test == "ks"


@pytest.mark.parametrize("name", ["<other>", "<other> (not listed above)"])
def test_a_value_named_like_the_rest_cell_keeps_its_own_cell(name):
    """A family called "<other>" shared its cell's name with the values the reference does not list: its live rows
    went to that cell (expected share 0) and its own cell stayed empty, a drift alarm on unchanged traffic."""
    reference = {"top": {"a": 0.5, name: 0.3, "c": 0.2}, "other": 0.0}
    same = categorical_shift(["a"] * 50 + [name] * 30 + ["c"] * 20, reference)
    assert same.psi == pytest.approx(0.0, abs=1e-9) and same.p_value == pytest.approx(1.0)
    assert len(same.labels) == len(set(same.labels)) == 5 and same.labels[1] == name
    rest = categorical_shift(["a"] * 50 + ["z"] * 50, reference)
    assert rest.live_shares[-1] == 0.5 and rest.labels[-1] != name


def test_categorical_shift_counts_unseen_and_rare_values():
    reference = {"top": {"a": 0.5, "b": 0.3, "c": 0.2}, "other": 0.0}
    same = categorical_shift(["a"] * 50 + ["b"] * 30 + ["c"] * 20, reference)
    assert same.statistic == pytest.approx(0.0, abs=1e-9) and same.p_value == pytest.approx(1.0)
    unseen = categorical_shift(["a"] * 50 + ["<unknown>"] * 50, reference)
    assert unseen.p_value < 1e-10 and unseen.psi > 1.0
    assert unseen.labels[unseen.live_shares.index(0.5, 1)] == "<unknown>"


def forecast_like_units(rng: np.random.Generator, n: int) -> np.ndarray:
    """Skewed like the default model's validation forecasts: median ~0.6 units, 99th percentile ~45, max ~700."""
    units = np.expm1(rng.gamma(0.9, 0.9, n))
    units[:3] = [350.0, 520.0, 700.0]  # the few best sellers that set an even histogram's range
    return units


def test_doubled_forecasts_move_the_prediction_psi_past_its_alert_and_unchanged_ones_do_not():
    """Even bins over [0, max] held ~98 % of the forecasts in the first bin: doubled forecasts gave PSI 0.02."""
    from monitoring.drift_params import DriftParams
    from pipeline.drift_stats import training_statistics

    rng = np.random.default_rng(7)
    validation_forecasts = forecast_like_units(rng, 130_000)
    stats = training_statistics(np.zeros((10, 0)), [], np.zeros((10, 0), np.int64), [], {}, validation_forecasts,
                                validation_forecasts)
    alert = DriftParams().prediction_psi_alert
    served = forecast_like_units(rng, 3000)
    assert numeric_shift(served, stats["prediction_units"]).psi < alert / 5
    doubled = numeric_shift(2.0 * served, stats["prediction_units"])
    assert doubled.psi > alert and doubled.p_value < 1e-6
