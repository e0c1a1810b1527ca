"""The noise-floor oracle of benchmarks/accuracy.py: it finds the generator's demand and beats any other forecast."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from pipeline.metrics import nwrmsle
from pipeline.params import SyntheticParams
from pipeline.synthetic import SalesProcess, make_catalog, make_holidays, sample_sales

PARAMS = SyntheticParams(seed=11, stores=2, items=120, start_date=dt.date(2016, 1, 1), end_date=dt.date(2016, 6, 30),
                         test_days=0, compression="none")


def test_expected_demand_is_the_generators(noise_floor):
    catalog = make_catalog(PARAMS)
    process = SalesProcess(PARAMS, catalog, make_holidays(2012, 2016))
    mu, _ = process.expected(100, 110)
    stores = process.stores["store_nbr"].to_numpy()
    items = catalog.items["item_nbr"].to_numpy()
    t, s, i = np.array([0, 3, 9]), np.array([0, 1, 1]), np.array([5, 0, 119])
    day = process.start.astype(np.int64) + 100 + t
    got, weight = noise_floor.expected_demand(PARAMS, stores[s], items[i], day)
    np.testing.assert_allclose(got, mu[t, s, i], rtol=1e-6)
    np.testing.assert_array_equal(weight, catalog.item_weight_kg[i])


def test_rows_outside_the_generated_data_are_refused(noise_floor):
    catalog = make_catalog(PARAMS)
    items = catalog.items["item_nbr"].to_numpy()
    late = np.datetime64("2016-07-01").astype(np.int64)
    with pytest.raises(ValueError, match="date range"):
        noise_floor.expected_demand(PARAMS, np.array([1]), items[:1], np.array([late]))
    with pytest.raises(ValueError, match="is not one the synthetic parameters generate"):
        noise_floor.expected_demand(PARAMS, np.array([1]), np.array([items.max() + 1]), np.array([late - 5]))
    with pytest.raises(ValueError, match="is not one the synthetic parameters generate"):
        noise_floor.expected_demand(PARAMS, np.array([54]), items[:1], np.array([late - 5]))


def test_the_optimal_forecast_beats_every_other_forecast_of_the_same_demand(noise_floor):
    rng = np.random.default_rng(3)
    mu = np.exp(rng.normal(0.0, 1.5, 20_000)).astype(np.float32)  # slow to fast items
    weight = np.where(rng.random(mu.size) < 0.1, 0.8, 0.0).astype(np.float32)
    actual = np.clip(sample_sales(mu, weight, np.random.default_rng(4)), 0, None)
    best = noise_floor.optimal_forecast(mu, weight, samples=200)
    floor = nwrmsle(actual, best)
    assert floor < nwrmsle(actual, mu)  # the mean is not what squared log error rewards
    for scale in (0.8, 0.9, 1.1, 1.25):
        assert floor < nwrmsle(actual, best * scale)
    by_unit = weight == 0
    assert np.median(best[by_unit] / mu[by_unit]) < 1  # Jensen: E log1p(Y) <= log1p(E Y)
    assert noise_floor.expected_demand(PARAMS, [], [], [])[0].size == 0
    assert noise_floor.optimal_forecast(np.zeros(4, np.float32), np.zeros(4, np.float32), samples=5).max() == 0.0
