"""Shared fixtures for the model-stage tests: a tiny prepared dataset in the exact prepared schema."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.features import HOLIDAY_FLAGS

TINY_FAMILIES = ("GROCERY I", "BEVERAGES", "PRODUCE", "DAIRY")


def tiny_prepared(seed: int = 7, stores: int = 2, items: int = 24, days: int = 220,
                  start: str = "2017-01-01") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sales rows on the from-first-sale grid, holidays side table incl. 16 future days).

    Demand has an item level, a weekly cycle, payday and promotion uplift, so a
    model with the features can beat a weekday average, and tests can check it.
    """
    rng = np.random.default_rng(seed)
    first = np.datetime64(start, "D")
    dates = first + np.arange(days)
    dow = (dates.astype(np.int64) + 3) % 7
    dom = (dates - dates.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64) + 1
    level = np.exp(rng.normal(0.5, 1.2, size=(stores, items)))
    weekly = np.array([1.0, 0.9, 0.9, 1.0, 1.2, 1.5, 1.3])[dow]
    payday = np.where((dom == 15) | (dom == 1), 1.4, 1.0)
    promo = rng.random((stores, items, days)) < 0.1
    national = rng.random(days + 16) < 0.03
    mean = level[:, :, None] * weekly * payday * np.where(promo, 2.0, 1.0) * np.where(national[:days], 0.5, 1.0)
    units = rng.poisson(mean).astype(np.float32)
    start_day = rng.integers(0, days // 3, size=(stores, items))
    start_day[0, 0] = days - 5  # a series that starts in the last days (few rows)
    store_ids = np.arange(1, stores + 1)
    item_ids = 1000 + np.arange(items) * 7
    s_idx, i_idx, d_idx = np.meshgrid(np.arange(stores), np.arange(items), np.arange(days), indexing="ij")
    keep = d_idx >= start_day[:, :, None]
    s_idx, i_idx, d_idx = s_idx[keep], i_idx[keep], d_idx[keep]
    family = np.array(TINY_FAMILIES)[np.arange(items) % len(TINY_FAMILIES)]
    frame = pd.DataFrame({
        "date": pd.to_datetime(dates[d_idx]).astype("datetime64[ns]"),
        "store_nbr": store_ids[s_idx].astype(np.int16),
        "item_nbr": item_ids[i_idx].astype(np.int32),
        "unit_sales": units[s_idx, i_idx, d_idx],
        "onpromotion": promo[s_idx, i_idx, d_idx],
        "onpromotion_known": np.ones(s_idx.size, bool),
        "family": pd.Categorical(family[i_idx]),
        "class": (1000 + i_idx % 5).astype(np.int32),
        "perishable": (i_idx % 3 == 0),
        "city": pd.Categorical(np.array(["Quito", "Guayaquil", "Cuenca"])[s_idx % 3]),
        "state": pd.Categorical(np.array(["Pichincha", "Guayas", "Azuay"])[s_idx % 3]),
        "store_type": pd.Categorical(np.array(["A", "D", "B"])[s_idx % 3]),
        "cluster": (s_idx + 3).astype(np.int16),
        "is_national_holiday": national[d_idx],
        "is_regional_holiday": np.zeros(s_idx.size, bool),
        "is_local_holiday": (s_idx == 1) & (d_idx % 50 == 3),
        "is_work_day": np.zeros(s_idx.size, bool),
        "is_event": np.zeros(s_idx.size, bool),
        "dcoilwtico": np.full(s_idx.size, 50.0, np.float32),
        "transactions": np.full(s_idx.size, 1000, np.int32),
        "transactions_known": np.ones(s_idx.size, bool),
    }).sort_values(["store_nbr", "item_nbr", "date"], ignore_index=True)
    all_dates = first + np.arange(days + 16)
    hs, hd = np.meshgrid(np.arange(stores), np.arange(days + 16), indexing="ij")
    holidays = pd.DataFrame({"date": pd.to_datetime(all_dates[hd.ravel()]).astype("datetime64[ns]"),
                             "store_nbr": store_ids[hs.ravel()].astype(np.int16)})
    for name in HOLIDAY_FLAGS:
        holidays[name] = False
    holidays["is_national_holiday"] = national[hd.ravel()]
    holidays["is_local_holiday"] = (hs.ravel() == 1) & (hd.ravel() % 50 == 3)
    return frame, holidays


def write_tiny_project(root: Path, validation_days: int = 16, **kwargs) -> Path:
    """data/split/{train,validation}.parquet and data/prepared/holidays.parquet under ``root``."""
    frame, holidays = tiny_prepared(**kwargs)
    last = frame["date"].max()
    cut = last - pd.Timedelta(days=validation_days)
    (root / "data" / "split").mkdir(parents=True, exist_ok=True)
    (root / "data" / "prepared").mkdir(parents=True, exist_ok=True)
    frame[frame["date"] <= cut].to_parquet(root / "data" / "split" / "train.parquet", index=False)
    frame[frame["date"] > cut].to_parquet(root / "data" / "split" / "validation.parquet", index=False)
    holidays.to_parquet(root / "data" / "prepared" / "holidays.parquet", index=False)
    return root


TINY_PARAMS = {
    "split": {"validation_days": 16},
    "features": {"history_days": 56, "mean_windows": [3, 7, 14, 28, 56], "dow_weeks": [4, 8], "promo_windows": [14],
                 "horizon": 16, "yearly": False, "train_origins": 4, "origin_stride_days": 7,
                 "in_memory_examples": 6_000_000},
    "train": {"model": "mlp", "seed": 3, "max_steps": 400, "eval_every_steps": 20, "patience": 5, "batch_size": 256,
              "learning_rate": 0.01,
              "hidden_units": [32, 16],
              "embedding_dims": {"store_nbr": 2, "item_nbr": 4, "family": 2, "class": 2, "perishable": 1,
                                 "city": 1, "store_type": 1, "cluster": 1},
              "baseline_weeks": 4},
    "evaluate": {"backtest_windows": 1, "min_improvement": 0.0, "min_series": 30, "confidence": 0.9,
                 "bootstrap_resamples": 200, "max_nwrmsle": 0.9, "slice": {"max_nwrmsle": 2.0, "min_rows": 20},
                 "plot_rows": 200, "seed": 0},
    "promote": {"model_name": "shelfcast-forecaster", "alias": "production", "max_regression": 0.0},
}


@pytest.fixture
def tiny_frame():
    return tiny_prepared()


@pytest.fixture
def tiny_project(tmp_path):
    import yaml

    root = write_tiny_project(tmp_path / "project")
    (root / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS, sort_keys=False), encoding="utf-8")
    return root


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(autouse=True)
def local_mlflow_store(monkeypatch):
    """Tests always use the local store of their own tmp project, never a server from the environment."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def tiny_params():
    import copy

    return copy.deepcopy(TINY_PARAMS)


def write_params(root: Path, params: dict) -> None:
    import yaml

    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


@pytest.fixture
def set_params():
    return write_params


@pytest.fixture(scope="session")
def trained_project_template(tmp_path_factory):
    """A tiny project trained once per session (train is the slow part); tests copy it before changing it."""
    from pipeline import train

    root = write_tiny_project(tmp_path_factory.mktemp("trained") / "project")
    write_params(root, TINY_PARAMS)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        summary = train.run(root, quiet=True)
    return root, summary


@pytest.fixture
def trained_project(trained_project_template, tmp_path):
    """A private copy of the trained tiny project (its MLflow store and bundle included)."""
    template, summary = trained_project_template
    # (the copied mlflow.db still records the template's artifact location, which outlives the session's tests)
    return copy_tree(template, tmp_path / "project"), summary
