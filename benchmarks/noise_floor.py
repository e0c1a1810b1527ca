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

import numpy as np

from pipeline.params import SyntheticParams
from pipeline.synthetic import sales_process, sample_sales


def _positions(known: np.ndarray, wanted, what: str) -> np.ndarray:
    """Index of each ``wanted`` value in the sorted ``known`` ones; ValueError naming the first unknown one."""
    wanted = np.asarray(wanted, dtype=np.int64)
    found = np.minimum(np.searchsorted(known, wanted), known.size - 1)
    missing = known[found] != wanted
    if missing.any():
        raise ValueError(f"noise floor: {what} {int(wanted[missing.argmax()])} is not one the synthetic "
                         "parameters generate (was params.yaml changed after `dvc repro`?)")
    return found


def expected_demand(params: SyntheticParams, store_nbr, item_nbr, day) -> tuple[np.ndarray, np.ndarray]:
    """The generator's mean demand and each row's kilograms per unit (0: sold by unit).

    ``day`` holds days since 1970-01-01 (numpy ``datetime64[D]`` as integers).
    """
    process = sales_process(params)
    col = np.asarray(day, dtype=np.int64) - process.start.astype(np.int64)
    if col.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    if col.min() < 0 or col.max() >= len(process.days):
        raise ValueError(f"noise floor: rows outside the synthetic date range {process.days[0]} .. {process.days[-1]}")
    s = _positions(process.stores["store_nbr"].to_numpy(), store_nbr, "store")
    i = _positions(process.catalog.items["item_nbr"].to_numpy(), item_nbr, "item")
    lo = int(col.min())
    mu, _ = process.expected(lo, int(col.max()) + 1)
    return mu[col - lo, s, i].astype(np.float32), process.catalog.item_weight_kg[i]


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
