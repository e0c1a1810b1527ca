"""The noise floor of the synthetic data: the best NWRMSLE any forecaster could reach.

The synthetic generator knows each store×item×day's expected demand ``mu`` and
draws sales around it (Gamma-Poisson, kilograms for items sold by weight). The
forecast that minimises squared log1p error is ``expm1(E[log1p(sales) | mu])``;
this module estimates it by drawing the generator's own noise many times. No
learner sees ``mu``, so its NWRMSLE bounds every learner from below, and
``1 - floor / baseline`` is the largest improvement over the baseline the
default data allows. Only meaningful when ``data.source`` is ``synthetic``.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from pipeline.params import SyntheticParams
from pipeline.synthetic import SalesProcess, make_catalog, make_holidays, sample_sales


def expected_demand(params: SyntheticParams, store_nbr, item_nbr, day) -> tuple[np.ndarray, np.ndarray]:
    """The generator's mean demand and each row's kilograms per unit (0: sold by unit).

    ``day`` holds days since 1970-01-01 (numpy ``datetime64[D]`` as integers).
    """
    catalog = make_catalog(params)
    last = params.end_date + dt.timedelta(params.test_days)
    process = SalesProcess(params, catalog, make_holidays(min(params.start_date.year, 2012), last.year))
    day = np.asarray(day, dtype=np.int64)
    col = day - process.start.astype(np.int64)
    if col.size and (col.min() < 0 or col.max() >= len(process.days)):
        raise ValueError("noise floor: rows outside the synthetic date range "
                         f"{params.start_date} .. {last}")
    lo, hi = int(col.min()), int(col.max()) + 1
    stores = process.stores["store_nbr"].to_numpy()
    items = catalog.items["item_nbr"].to_numpy()
    s = np.searchsorted(stores, store_nbr)
    i = np.searchsorted(items, item_nbr)
    if (s >= len(stores)).any() or (stores[np.minimum(s, len(stores) - 1)] != store_nbr).any() \
            or (i >= len(items)).any() or (items[np.minimum(i, len(items) - 1)] != item_nbr).any():
        raise ValueError("noise floor: rows name stores or items the synthetic parameters do not generate")
    mu, _ = process.expected(lo, hi)
    return mu[col - lo, s, i].astype(np.float32), catalog.item_weight_kg[i]


def optimal_forecast(mu: np.ndarray, weight_kg: np.ndarray, samples: int = 400, seed: int = 0) -> np.ndarray:
    """expm1 of the Monte Carlo mean of log1p(sales) drawn around ``mu`` (returns count as zero sales)."""
    rng = np.random.default_rng(seed)
    total = np.zeros(mu.shape, np.float64)
    for _ in range(samples):
        total += np.log1p(np.clip(sample_sales(mu, weight_kg, rng), 0, None))
    return np.expm1(total / samples)


def floor_forecast(params: SyntheticParams, store_nbr, item_nbr, day, samples: int = 400) -> np.ndarray:
    """The best possible forecast of the given rows, from the generator's true demand."""
    mu, weight_kg = expected_demand(params, store_nbr, item_nbr, day)
    return optimal_forecast(mu, weight_kg, samples)
